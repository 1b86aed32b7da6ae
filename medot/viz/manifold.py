r"""Prompt-manifold maps: t-SNE / UMAP projections of prompts, anchors, descriptions and features.

K-MaT (Zeng & Albarqouni, 2026) learns per class :math:`i` a high-end and a low-end class
embedding :math:`w_{i,H}, w_{i,L}`, pulls each towards its description anchor :math:`\bar p_{i,m}`
(:math:`\mathcal{L}_{anc}`) and aligns the two prompt manifolds by fused Gromov–Wasserstein
(:math:`\mathcal{L}_{fgw}`). The map shows those vectors, and any others a caller adds (single
description embeddings, cached image features), in one 2-D picture.

**Input.** An :class:`EmbeddingSet`: ``vectors [N, D]`` with, per row, a class, a modality and a
kind (e.g. ``"prompt"``, ``"anchor"``, ``"description"``, ``"image"``), and optionally a text (the
description sentence). It is independent of any checkpoint format.

**Geometry.** Rows are L2-normalised, :math:`\tilde x = x / \|x\|_2`, and compared by cosine
distance :math:`d(x, y) = 1 - \tilde x^\top \tilde y`, the geometry the cosine classifier scores
with. Rows that are equal after normalisation are projected once and share one 2-D point, so a
vector present in two sets (e.g. the fixed anchors of two checkpoints) lands on the same spot.
At least :data:`MIN_DISTINCT_POINTS` distinct rows are needed (UMAP's spectral initialisation
needs more points than 2 + 1 eigenvectors; three points or fewer have no structure a 2-D map could
reveal).

**t-SNE** (van der Maaten & Hinton 2008; scikit-learn's ``TSNE``, PCA initialisation). The
perplexity is clamped to :math:`\min(\text{perplexity}, (n - 1)/3)` for :math:`n` distinct points,
openTSNE's rule: the affinities use :math:`3 \times \text{perplexity}` nearest neighbours, which
must exist (scikit-learn itself only requires perplexity :math:`< n`). The exact
:math:`O(n^2)` gradient is used up to :data:`EXACT_TSNE_MAX_POINTS` points (faster and exact at
that size), Barnes–Hut above.

**UMAP** (McInnes et al. 2018; umap-learn) on the exact cosine :math:`k`-NN graph (scikit-learn,
brute force, which these few-thousand-point maps afford): ``n_neighbors`` is clamped to
:math:`n - 1`.

Both are deterministic for a given ``seed`` (UMAP then runs single-threaded).

**Comparison.** :func:`manifold_figure` given several sets (e.g. the same task trained with and
without :math:`\mathcal{L}_{fgw}`) embeds all their rows in ONE projection and draws one panel per
set with shared axis ranges, so positions are comparable across panels.

**Figure encoding.** Colour = class; marker shape = kind; marker fill = modality (filled, open,
dotted, open-dotted, in order of first appearance; a fifth modality reuses the fills). One trace per
(class, kind, modality) per panel (``meta="points"``); the hover text gives class, modality, kind
and, for points with one, the text. The legend explains each encoding once, in three groups
(class by colour, kind by marker, modality by fill: ``meta="legend"`` entries holding no point);
clicking a kind hides or shows every point of that kind. Kinds in ``faded`` (descriptions by
default) are drawn small and translucent so prompts and anchors stand out; ``links`` pairs of kinds
(e.g. prompt -> anchor) are joined by a thin line per (class, modality) (``meta="links"``). Axes
are titled "<method> 1 / 2" (a projection's axes have no units). A map of at most
:data:`FEW_POINTS` distinct points carries a warning: so few points have little structure to show.
"""

from __future__ import annotations

import html
import textwrap
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import plotly.graph_objects as go
from plotly.colors import qualitative
from plotly.subplots import make_subplots

from medot.viz._inputs import VisualizationError, as_finite, as_labels

Method = Literal["tsne", "umap"]
METHODS: tuple[str, ...] = ("tsne", "umap")
MIN_DISTINCT_POINTS = 4
EXACT_TSNE_MAX_POINTS = 500
FEW_POINTS = 15
"""At or below this many distinct points a 2-D projection is flagged as showing little."""
METHOD_NAMES = {"tsne": "t-SNE", "umap": "UMAP"}

CLASS_COLOURS: tuple[str, ...] = tuple(qualitative.Dark24)
KIND_SYMBOLS: tuple[str, ...] = ("circle", "diamond", "square", "triangle-up", "star", "cross", "x")
MODALITY_FILLS: tuple[str, ...] = ("", "-open", "-dot", "-open-dot")
_HOVER_WRAP = 60
_Key = tuple[str, str, str]
"""A trace: (class, kind, modality)."""


@dataclass(frozen=True, eq=False)
class EmbeddingSet:
    """Vectors to map, with a class, a modality and a kind per row, and optional texts.

    ``vectors`` is ``[N, D]`` (numpy or torch, any device); ``classes``, ``modality`` and ``kind``
    hold one string per row, or a single string that applies to every row. ``text`` holds one
    string per row (``""`` where a row has none, e.g. a prompt) or is ``None``. After construction
    ``vectors`` is a float64 numpy array and the labels are tuples.
    """

    vectors: Any
    classes: Sequence[str]
    modality: Sequence[str] | str
    kind: Sequence[str] | str
    text: Sequence[str] | None = None

    def __post_init__(self) -> None:
        vectors = as_finite(self.vectors, "EmbeddingSet.vectors", 2)
        n = vectors.shape[0]
        object.__setattr__(self, "vectors", vectors)
        for field_name in ("classes", "modality", "kind"):
            labels = getattr(self, field_name)
            if isinstance(labels, str) and field_name != "classes":
                labels = [labels] * n
            object.__setattr__(self, field_name, as_labels(labels, f"EmbeddingSet.{field_name}", n))
        if self.text is None:
            texts: tuple[str, ...] = ("",) * n
        elif isinstance(self.text, str) or len(self.text) != n:
            raise VisualizationError(
                f"EmbeddingSet.text needs one string per row ({n}), or None; "
                f"got {'a single string' if isinstance(self.text, str) else len(self.text)}."
            )
        elif not all(isinstance(t, str) for t in self.text):
            raise VisualizationError(
                "EmbeddingSet.text must hold strings ('' where a row has none)."
            )
        else:
            texts = tuple(self.text)
        object.__setattr__(self, "text", texts)

    def __len__(self) -> int:
        return self.vectors.shape[0]

    @classmethod
    def concat(cls, sets: Sequence[EmbeddingSet]) -> EmbeddingSet:
        """Stack sets of the same dimension into one (e.g. prompts + anchors + descriptions)."""
        if not sets:
            raise VisualizationError("EmbeddingSet.concat needs at least one set.")
        _check_same_dimension(sets)
        return cls(
            vectors=np.concatenate([s.vectors for s in sets]),
            classes=[c for s in sets for c in s.classes],
            modality=[m for s in sets for m in s.modality],
            kind=[k for s in sets for k in s.kind],
            text=[t for s in sets for t in s.text],
        )


@dataclass(frozen=True, eq=False)
class Projection:
    """2-D points ``[N, 2]`` and the effective (clamped) parameters that produced them."""

    points: np.ndarray
    method: str
    seed: int
    perplexity: float | None = None
    n_neighbors: int | None = None

    def describe(self) -> str:
        """A one-line account for figure titles, e.g. ``t-SNE (cosine, perplexity 1, seed 0)``."""
        if self.method == "tsne":
            return f"t-SNE (cosine, perplexity {self.perplexity:.3g}, seed {self.seed})"
        return f"UMAP (cosine, {self.n_neighbors} neighbours, seed {self.seed})"


def project(
    vectors: Any,
    *,
    method: Method = "tsne",
    seed: int = 0,
    perplexity: float = 30.0,
    n_neighbors: int = 15,
) -> Projection:
    """Project ``[N, D]`` vectors to 2-D by t-SNE or UMAP on cosine distance (module docstring).

    ``perplexity`` (t-SNE) and ``n_neighbors`` (UMAP) are upper bounds, clamped to the number of
    distinct rows; the values used are on the returned :class:`Projection`.
    """
    if method not in METHODS:
        raise VisualizationError(f"Unknown projection method {method!r}; choose one of {METHODS}.")
    if not perplexity > 0:
        raise VisualizationError(f"perplexity must be positive, got {perplexity}.")
    if n_neighbors < 2:
        raise VisualizationError(f"n_neighbors must be at least 2, got {n_neighbors}.")
    x = as_finite(vectors, "vectors", 2)
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    if (norms == 0).any():
        raise VisualizationError(
            f"vectors row {int(np.flatnonzero(norms[:, 0] == 0)[0])} is all zeros; a zero vector "
            "has no direction to compare by cosine. Drop it."
        )
    distinct, first_index, inverse = np.unique(
        x / norms, axis=0, return_index=True, return_inverse=True
    )
    if distinct.shape[0] < MIN_DISTINCT_POINTS:
        raise VisualizationError(
            f"A 2-D map needs at least {MIN_DISTINCT_POINTS} distinct vectors, got "
            f"{distinct.shape[0]}; add more classes or kinds of points."
        )
    # np.unique sorts rows; restore first-appearance order, so rows without duplicates are
    # projected in the caller's order.
    order = np.argsort(first_index)
    rank = np.empty_like(order)
    rank[order] = np.arange(order.size)
    distinct = distinct[order]
    rows = rank[inverse.ravel()]
    n = distinct.shape[0]
    if method == "tsne":
        effective = min(float(perplexity), (n - 1) / 3)
        points = _tsne(distinct, effective, seed)
        return Projection(points[rows], "tsne", seed, perplexity=effective)
    neighbours = min(int(n_neighbors), n - 1)
    points = _umap(distinct, neighbours, seed)
    return Projection(points[rows], "umap", seed, n_neighbors=neighbours)


def _tsne(x: np.ndarray, perplexity: float, seed: int) -> np.ndarray:
    from sklearn.manifold import TSNE

    tsne = TSNE(
        n_components=2,
        perplexity=perplexity,
        metric="cosine",
        init="pca",
        learning_rate="auto",
        method="exact" if x.shape[0] <= EXACT_TSNE_MAX_POINTS else "barnes_hut",
        random_state=seed,
    )
    return np.asarray(tsne.fit_transform(x), dtype=np.float64)


def _umap(x: np.ndarray, n_neighbors: int, seed: int) -> np.ndarray:
    import umap
    from sklearn.neighbors import NearestNeighbors

    # The exact cosine k-NN graph (each point first, at distance 0): exact where UMAP's own
    # NN-descent is approximate, and it spares pynndescent's JIT compilation (about half of a first
    # call's time). Without a search index UMAP cannot ``transform`` new points, which is not used.
    distances, indices = (
        NearestNeighbors(n_neighbors=n_neighbors, metric="cosine", algorithm="brute")
        .fit(x)
        .kneighbors(x)
    )
    reducer = umap.UMAP(
        n_components=2,
        n_neighbors=n_neighbors,
        metric="cosine",
        random_state=seed,
        n_jobs=1,
        precomputed_knn=(indices, distances),
    )
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r"precomputed_knn\[2\]", category=UserWarning)
        return np.asarray(reducer.fit_transform(x), dtype=np.float64)


def manifold_figure(
    sets: EmbeddingSet | Sequence[EmbeddingSet],
    *,
    titles: Sequence[str] | None = None,
    method: Method = "tsne",
    seed: int = 0,
    perplexity: float = 30.0,
    n_neighbors: int = 15,
    title: str = "Prompt manifold",
    links: Sequence[tuple[str, str]] = (),
    faded: Sequence[str] = ("description",),
) -> go.Figure:
    """Map one set, or several side by side in one joint projection, as a plotly figure.

    ``titles`` names the panels (default ``"set 1"``, ``"set 2"``, ... when there are several).
    The figure title adds the projection's :meth:`Projection.describe`. ``links``: pairs of kinds
    joined per (class, modality), e.g. ``[("prompt", "anchor")]``; ``faded``: kinds drawn small
    and translucent (module docstring).
    """
    sets = [sets] if isinstance(sets, EmbeddingSet) else list(sets)
    if not sets or not all(isinstance(s, EmbeddingSet) for s in sets):
        raise VisualizationError("manifold_figure needs one EmbeddingSet or a list of them.")
    _check_same_dimension(sets)
    if titles is None:
        titles = [f"set {k + 1}" for k in range(len(sets))] if len(sets) > 1 else [""]
    elif isinstance(titles, str) or len(titles) != len(sets):
        raise VisualizationError(f"titles needs one title per set ({len(sets)}), got {titles!r}.")

    projection = project(
        np.concatenate([s.vectors for s in sets]),
        method=method,
        seed=seed,
        perplexity=perplexity,
        n_neighbors=n_neighbors,
    )
    panels = np.split(projection.points, np.cumsum([len(s) for s in sets])[:-1])
    style = _Style.for_sets(sets)
    fig = make_subplots(
        rows=1,
        cols=len(sets),
        subplot_titles=list(titles),
        shared_xaxes="all",
        shared_yaxes="all",
        horizontal_spacing=0.04,
    )
    for col, (embedding_set, points) in enumerate(zip(sets, panels), start=1):
        for kind_from, kind_to in links:
            fig.add_trace(_link_trace(embedding_set, points, kind_from, kind_to, first=col == 1), row=1, col=col)
        for key, rows in _groups(embedding_set, style):
            faint = key[1] in faded
            fig.add_trace(
                go.Scatter(
                    x=points[rows, 0],
                    y=points[rows, 1],
                    mode="markers",
                    name=f"{key[0]} · {key[1]} ({key[2]})",
                    legendgroup=f"kind:{key[1]}",
                    showlegend=False,
                    opacity=0.35 if faint else 1.0,
                    marker={
                        "color": style.colour(key[0]),
                        "symbol": style.symbol(key[1], key[2]),
                        "size": 7 if faint else 11,
                        "line": {"width": 1, "color": style.colour(key[0])},
                    },
                    hovertext=[_hover(embedding_set, r) for r in rows],
                    hoverinfo="text",
                    meta="points",
                ),
                row=1,
                col=col,
            )
    for trace in _legend_traces(style):
        fig.add_trace(trace, row=1, col=1)
    x, y = projection.points.T
    name = METHOD_NAMES.get(projection.method, projection.method)
    fig.update_xaxes(range=_padded_range(x), showticklabels=False, zeroline=False, title_text=f"{name} 1")
    fig.update_yaxes(range=_padded_range(y), showticklabels=False, zeroline=False)
    fig.update_yaxes(title_text=f"{name} 2", row=1, col=1)
    distinct = len(np.unique(projection.points.round(9), axis=0))
    fig.update_layout(
        title=f"{title} — {projection.describe()}",
        legend={"groupclick": "togglegroup", "tracegroupgap": 12, "itemsizing": "constant"},
        height=560,
        margin={"t": 90},
    )
    if distinct <= FEW_POINTS:
        fig.add_annotation(
            text=f"Only {distinct} distinct points: a 2-D projection of so few shows little structure; "
            "do not read distances into it.",
            xref="paper", yref="paper", x=0.0, y=1.0, yanchor="bottom", yshift=28, showarrow=False,
            font={"color": "#b45309"}, align="left", name="few-points",
        )
    return fig


def _legend_traces(style: _Style) -> list[go.Scatter]:
    """Legend-only entries (no points): class = colour, kind = marker, modality = fill."""
    traces = []

    def entry(name: str, group: str, title: str, first: bool, marker: dict[str, Any]) -> go.Scatter:
        return go.Scatter(
            x=[None], y=[None], mode="markers", name=name, legendgroup=group, showlegend=True,
            legendgrouptitle_text=title if first else None, marker={"size": 11, **marker}, meta="legend",
            hoverinfo="skip",
        )

    for k, class_name in enumerate(style.classes):
        traces.append(entry(class_name, "class", "class (colour)", k == 0,
                            {"color": style.colour(class_name), "symbol": "square"}))
    for k, kind in enumerate(style.kinds):
        traces.append(entry(kind, f"kind:{kind}", "kind (marker; click to hide)", k == 0,
                            {"color": "#555", "symbol": style.symbol(kind, style.modalities[0])}))
    for k, modality in enumerate(style.modalities):
        traces.append(entry(modality, "modality", "modality (fill)", k == 0,
                            {"color": "#555", "symbol": style.symbol(style.kinds[0], modality),
                             "line": {"width": 1, "color": "#555"}}))
    return traces


def _link_trace(embedding_set: EmbeddingSet, points: np.ndarray, kind_from: str, kind_to: str, first: bool) -> go.Scatter:
    """One line from each ``kind_from`` row to the first ``kind_to`` row of the same class and
    modality (None-separated segments in one trace)."""
    targets: dict[tuple[str, str], int] = {}
    for r, (class_name, kind, modality) in enumerate(zip(embedding_set.classes, embedding_set.kind, embedding_set.modality)):
        if kind == kind_to:
            targets.setdefault((class_name, modality), r)
    xs: list[float | None] = []
    ys: list[float | None] = []
    for r, (class_name, kind, modality) in enumerate(zip(embedding_set.classes, embedding_set.kind, embedding_set.modality)):
        target = targets.get((class_name, modality))
        if kind == kind_from and target is not None:
            xs += [float(points[r, 0]), float(points[target, 0]), None]
            ys += [float(points[r, 1]), float(points[target, 1]), None]
    return go.Scatter(
        x=xs, y=ys, mode="lines", line={"color": "rgba(90, 90, 90, 0.55)", "width": 1.2},
        name=f"{kind_from} → {kind_to}", legendgroup=f"link:{kind_from}:{kind_to}", showlegend=first,
        legendgrouptitle_text="link" if first else None, hoverinfo="skip", meta="links",
    )


@dataclass(frozen=True)
class _Style:
    """Colour per class, base symbol per kind, fill per modality, in first-appearance order."""

    classes: tuple[str, ...]
    kinds: tuple[str, ...]
    modalities: tuple[str, ...]

    @classmethod
    def for_sets(cls, sets: Sequence[EmbeddingSet]) -> _Style:
        def first_seen(field_name: str) -> tuple[str, ...]:
            return tuple(dict.fromkeys(v for s in sets for v in getattr(s, field_name)))

        return cls(first_seen("classes"), first_seen("kind"), first_seen("modality"))

    def colour(self, class_name: str) -> str:
        return CLASS_COLOURS[self.classes.index(class_name) % len(CLASS_COLOURS)]

    def symbol(self, kind: str, modality: str) -> str:
        base = KIND_SYMBOLS[self.kinds.index(kind) % len(KIND_SYMBOLS)]
        return base + MODALITY_FILLS[self.modalities.index(modality) % len(MODALITY_FILLS)]

    def sort_key(self, key: _Key) -> tuple[int, int, int]:
        return (self.classes.index(key[0]), self.kinds.index(key[1]), self.modalities.index(key[2]))


def _groups(embedding_set: EmbeddingSet, style: _Style) -> list[tuple[_Key, np.ndarray]]:
    """Row indices per (class, kind, modality), ordered by class, then kind, then modality."""
    rows: dict[_Key, list[int]] = {}
    for r, key in enumerate(zip(embedding_set.classes, embedding_set.kind, embedding_set.modality)):
        rows.setdefault(key, []).append(r)
    return [(key, np.asarray(rows[key])) for key in sorted(rows, key=style.sort_key)]


def _hover(embedding_set: EmbeddingSet, row: int) -> str:
    lines = [
        f"class: {html.escape(embedding_set.classes[row])}",
        f"modality: {html.escape(embedding_set.modality[row])}",
        f"kind: {html.escape(embedding_set.kind[row])}",
    ]
    text = embedding_set.text[row]
    if text:
        lines.append("<br>".join(html.escape(line) for line in textwrap.wrap(text, _HOVER_WRAP)))
    return "<br>".join(lines)


def _padded_range(values: np.ndarray, pad: float = 0.05) -> list[float]:
    low, high = float(values.min()), float(values.max())
    margin = pad * (high - low) if high > low else 1.0
    return [low - margin, high + margin]


def _check_same_dimension(sets: Sequence[EmbeddingSet]) -> None:
    dims = sorted({s.vectors.shape[1] for s in sets})
    if len(dims) > 1:
        raise VisualizationError(
            f"The sets have vectors of different dimensions {dims}; they must come from one "
            "embedding space (the same backbone) to share a map."
        )


def warm_up_umap(seed: int = 0) -> None:
    """Run one tiny UMAP so numba compiles its kernels now, not on a user's first map (minutes on a
    CPU). With ``NUMBA_CACHE_DIR`` set before numba is first imported, the compiled code is also
    written there and later processes load it instead of compiling again."""
    vectors = np.random.default_rng(seed).normal(size=(24, 8))
    project(vectors, method="umap", seed=seed)
