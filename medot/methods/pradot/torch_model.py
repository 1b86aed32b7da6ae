r"""PRADOT as plain ``nn.Module`` s: one prototype bank per ``(layer, alpha)`` and their ensemble.

A :class:`PrototypeBank` holds :math:`P = n \cdot H \cdot W` prototypes for one layer whose patch
grid is :math:`H \times W`: ``n`` per grid cell, prototype :math:`j = k\,HW + r\,W + c` being copy
``k`` at cell ``(r, c)``. Its state is two buffers, ``features`` ``[P, C]`` (initialised uniformly
in :math:`[0, 1)`, as the authors do, or from the data by :meth:`PrototypeBank.init_from_data`:
prototype :math:`(k, r)` starts at the embedding :math:`x_{b_{k,r}, r}` of a training image
:math:`b_{k,r}` at its own cell, the images of one cell drawn without replacement) and
``positions`` ``[P, 2]`` (cell centres on :math:`[0, 1]^2`, the same geometry as the tokens,
:func:`medot.ot.grid_positions`).

**Training step** (:meth:`PrototypeBank.fit_batch`; paper Sec. 3.2). For a batch of ``B`` images
the :math:`N = B\,H\,W` embeddings (mass :math:`1/N` each) are matched to the prototypes (mass
:math:`1/P` each) by balanced entropic OT on the batch-normalised cost :math:`M`
(:mod:`medot.methods.pradot.cost`): :math:`\Gamma = \mathrm{Sinkhorn}_\varepsilon(M)`, log domain,
at most ``sinkhorn_iterations`` updates, stopping once :math:`\|\Gamma^\top\mathbf{1} -
\mathbf{b}\|_1 <` ``sinkhorn_tol`` (``0``: always the full count). With ``warm_start`` the solve
starts from the previous step's prototype potential :math:`\mathbf{g}` (prototypes move little
under the EMA) and the embedding potential is its c-transform on the new cost,
:math:`f_i = -\varepsilon \log \sum_j b_j \exp((g_j - M_{ij})/\varepsilon)`, the exact row
update for that :math:`\mathbf{g}` (:meth:`PrototypeBank.transport_plan`). Each prototype then
moves toward the barycentre of the embeddings it received,

.. math::
    \bar p_j = \frac{\sum_i \Gamma_{ij}\, x_i}{\sum_i \Gamma_{ij}}, \qquad
    p_j \leftarrow \beta\, p_j + (1 - \beta)\, \bar p_j \quad (\beta = 0.95),

(:func:`medot.ot.barycentric_projection` of :math:`\Gamma^\top`); with ``update_positions`` the
positions follow the same EMA toward the barycentres of the embedding positions, averaged over the
``n`` prototypes of a cell so that they move together (the authors' code). No gradient is taken.

**Scoring** (Sec. 3.3). For one image, with :math:`M` normalised within that image, each patch
scores :math:`s_i = \min_j M_{ij}`; the ``H x W`` score grid is upsampled bilinearly to the input
size. :class:`PradotModel` averages the maps of its members and scores an image by the maximum of
the averaged map. :meth:`PrototypeBank.transport_cost` gives the alternative image score: the
entropic OT cost :math:`\langle\Gamma, M\rangle` between the image's embeddings and the prototypes.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from medot.errors import OTConvergenceWarning
from medot.methods.pradot.cost import Scope, pradot_cost
from medot.ot import SinkhornResult, barycentric_projection, grid_positions, sinkhorn

CHUNK_ELEMENTS = 1 << 25
"""Largest cost tensor (entries) built at once when scoring: 128 MB of float32."""


@dataclass(frozen=True)
class PrototypeMatch:
    """The nearest prototype of every patch under the cost :math:`M` (normalised per image).

    ``index`` ``[B, HW]`` is the prototype index ``j``, ``copy`` and ``cell`` split it into the copy
    ``k = j // HW`` and the grid cell ``j % HW`` it was created at, ``position`` ``[B, HW, 2]`` is its
    current (row, column) position in :math:`[0, 1]^2` and ``cost`` ``[B, HW]`` the matched cost
    :math:`\\min_j M_{ij}` (the patch score).
    """

    index: Tensor
    copy: Tensor
    cell: Tensor
    position: Tensor
    cost: Tensor


class PrototypeBank(nn.Module):
    """The ``n * H * W`` prototypes of one layer and one ``alpha`` (one ensemble member)."""

    features: Tensor
    positions: Tensor
    token_positions: Tensor

    def __init__(
        self,
        layer: str,
        channels: int,
        grid: tuple[int, int],
        *,
        n_prototypes: int = 16,
        alpha: float = 0.3,
        epsilon: float = 0.01,
        ema: float = 0.95,
        sinkhorn_iterations: int = 100,
        update_positions: bool = False,
        generator: torch.Generator | None = None,
        sinkhorn_tol: float = 0.0,
        warm_start: bool = False,
    ) -> None:
        super().__init__()
        height, width = (int(v) for v in grid)
        self.layer = layer
        self.grid = (height, width)
        self.n_prototypes = int(n_prototypes)
        self.alpha = float(alpha)
        self.epsilon = float(epsilon)
        self.ema = float(ema)
        self.sinkhorn_iterations = int(sinkhorn_iterations)
        self.update_positions = bool(update_positions)
        self.sinkhorn_tol = float(sinkhorn_tol)
        self.warm_start = bool(warm_start)
        self.dual_g: Tensor | None = None
        """The prototype potential of the last training solve (``[P]``), the next warm start."""
        self.last_iterations = 0
        """Sinkhorn updates the last training step took."""
        cells = grid_positions(height, width)
        count = self.n_prototypes * height * width
        self.register_buffer("features", torch.rand(count, int(channels), generator=generator))
        self.register_buffer("positions", cells.repeat(self.n_prototypes, 1))
        self.register_buffer("token_positions", cells, persistent=False)

    @property
    def name(self) -> str:
        """``"<layer>/alpha=<alpha>"``, unique within an ensemble."""
        return f"{self.layer}/alpha={self.alpha:g}"

    @property
    def channels(self) -> int:
        return self.features.shape[1]

    @property
    def num_prototypes(self) -> int:
        return self.features.shape[0]

    def extra_repr(self) -> str:
        return (
            f"layer={self.layer!r}, grid={self.grid}, n_prototypes={self.n_prototypes}, alpha={self.alpha:g}, "
            f"channels={self.channels}, epsilon={self.epsilon:g}, ema={self.ema:g}"
        )

    # ------------------------------------------------------------------ cost
    def cost(self, tokens: Tensor, scope: Scope = "image") -> Tensor:
        """The mixed cost ``[B, HW, P]`` of ``tokens`` ``[B, HW, C]`` against the prototypes."""
        self._check_tokens(tokens)
        return pradot_cost(tokens, self.token_positions, self.features, self.positions, self.alpha, scope)

    # ------------------------------------------------------------------ training
    @torch.no_grad()
    def init_from_data(self, tokens: Tensor, generator: torch.Generator | None = None) -> None:
        """Start prototype :math:`(k, r)` at a training embedding of cell ``r``: ``tokens`` ``[N, HW, C]``.

        Each cell draws its ``n`` images without replacement (a fresh random order per cell); with
        fewer images than prototypes per cell (``N < n``) the order repeats, so copies ``k >= N``
        start equal to copy ``k mod N`` (and, moving by the same barycentres, stay equal).
        """
        self._check_tokens(tokens)
        count, cells, _ = tokens.shape
        order = torch.argsort(torch.rand(cells, count, generator=generator), dim=1)  # [HW, N]
        copies = torch.arange(self.n_prototypes) % count
        images = order[:, copies].transpose(0, 1).reshape(-1)  # prototype j = k * HW + r
        where = torch.arange(cells).repeat(self.n_prototypes)
        self.features.copy_(tokens[images.to(tokens.device), where.to(tokens.device)].to(self.features))
        self.dual_g = None

    @torch.no_grad()
    def init_kmeans_plus_plus(self, tokens: Tensor, seed: int = 0) -> None:
        r"""Start the ``n`` prototypes of each cell at ``n`` training embeddings of that cell chosen by
        k-means++ seeding (:func:`sklearn.cluster.kmeans_plusplus`; Arthur & Vassilvitskii 2007):
        the first uniformly, each next one with probability :math:`\propto D(x)^2`, its squared
        distance to the nearest one chosen so far. Distances are taken between L2-normalised
        embeddings, :math:`\|\hat x - \hat y\|^2 = 2(1 - \cos(x, y))`, i.e. in PRADOT's feature cost;
        the prototypes are the raw embeddings chosen. ``tokens`` ``[N, HW, C]``; with ``N < n`` the
        cell's order repeats as in :meth:`init_from_data`. Cell ``r`` seeds ``SeedSequence([seed, r])``.
        """
        from sklearn.cluster import kmeans_plusplus

        self._check_tokens(tokens)
        count, cells, _ = tokens.shape
        data = tokens.detach().to("cpu", torch.float32)
        unit = torch.nn.functional.normalize(data, dim=-1).numpy()
        chosen = torch.empty(self.n_prototypes, cells, dtype=torch.long)
        for cell in range(cells):
            state = int(np.random.SeedSequence([seed, cell]).generate_state(1)[0])
            picks = min(self.n_prototypes, count)
            _, indices = kmeans_plusplus(np.ascontiguousarray(unit[:, cell]), picks, random_state=state)
            chosen[:, cell] = torch.as_tensor(indices)[torch.arange(self.n_prototypes) % picks]
        where = torch.arange(cells).repeat(self.n_prototypes)
        self.features.copy_(data[chosen.reshape(-1), where].to(self.features))
        self.dual_g = None

    @torch.no_grad()
    def transport_plan(self, tokens: Tensor, *, warm: bool | None = None) -> SinkhornResult:
        """The training step's OT solve on ``tokens`` ``[B, HW, C]`` (plan ``[B HW, P]``), warm-started
        from :attr:`dual_g` when ``warm`` (default: ``warm_start``) and a previous solve exists.
        Changes no state."""
        batch, cells, _ = tokens.shape
        cost = self.cost(tokens, scope="batch").reshape(batch * cells, self.num_prototypes)
        use_warm = self.warm_start if warm is None else warm
        init = None
        if use_warm and self.dual_g is not None:
            g = self.dual_g.to(cost.device, cost.dtype)
            init = (self._c_transform(cost, g), g)
        with warnings.catch_warnings():
            # reaching the iteration cap is PRADOT's normal case (the authors always stop there); the
            # count is reported per step instead (PradotTrainResult.sinkhorn_iterations)
            warnings.simplefilter("ignore", OTConvergenceWarning)
            return sinkhorn(cost, epsilon=self.epsilon, max_iter=self.sinkhorn_iterations, tol=self.sinkhorn_tol,
                            init=init)

    def _c_transform(self, cost: Tensor, g: Tensor) -> Tensor:
        r""":math:`f_i = -\varepsilon \log \sum_j b_j \exp((g_j - M_{ij})/\varepsilon)` (uniform ``b``), by row blocks."""
        log_b = -float(np.log(cost.shape[1]))
        step = max(1, CHUNK_ELEMENTS // cost.shape[1])
        parts = [torch.logsumexp((g - rows) / self.epsilon, dim=1) for rows in cost.split(step)]
        return -self.epsilon * (torch.cat(parts) + log_b)

    @torch.no_grad()
    def fit_batch(self, tokens: Tensor) -> Tensor:
        """One OT + EMA step on the batch ``tokens`` ``[B, HW, C]``; returns :math:`\\langle\\Gamma, M\\rangle`.

        Keeps the solve's prototype potential in :attr:`dual_g` and its update count in
        :attr:`last_iterations`."""
        batch, cells, channels = tokens.shape
        solution = self.transport_plan(tokens)
        self.dual_g = solution.diagnostics.g.detach()
        self.last_iterations = int(solution.diagnostics.iterations)
        plan_t = solution.plan.transpose(0, 1)
        target = barycentric_projection(plan_t, tokens.reshape(batch * cells, channels).to(plan_t.dtype))
        self.features.mul_(self.ema).add_(target.to(self.features.dtype), alpha=1.0 - self.ema)
        if self.update_positions:
            moved = barycentric_projection(plan_t, self.token_positions.repeat(batch, 1).to(plan_t.dtype))
            shared = moved.reshape(self.n_prototypes, cells, 2).mean(0).repeat(self.n_prototypes, 1)
            self.positions.mul_(self.ema).add_(shared.to(self.positions.dtype), alpha=1.0 - self.ema)
        return solution.cost

    # ------------------------------------------------------------------ scoring
    @torch.no_grad()
    def matched_prototypes(self, tokens: Tensor) -> PrototypeMatch:
        """Nearest prototype of each patch of ``tokens`` ``[B, HW, C]`` (see :class:`PrototypeMatch`)."""
        costs, indices = [], []
        for part in self._image_chunks(tokens):
            cost, index = self.cost(part, scope="image").min(dim=-1)
            costs.append(cost)
            indices.append(index)
        index = torch.cat(indices)
        cells = self.grid[0] * self.grid[1]
        return PrototypeMatch(
            index=index,
            copy=index // cells,
            cell=index % cells,
            position=self.positions[index],
            cost=torch.cat(costs),
        )

    def patch_scores(self, tokens: Tensor) -> Tensor:
        """:math:`s_i = \\min_j M_{ij}` on the grid: ``[B, HW, C] -> [B, H, W]``."""
        return self.matched_prototypes(tokens).cost.reshape(-1, *self.grid)

    def anomaly_map(self, tokens: Tensor, size: tuple[int, int]) -> Tensor:
        """Patch scores upsampled bilinearly to ``size``: ``[B, *size]``.

        Tokens sit at cell centres (``align_corners=False``), the convention of
        :func:`medot.ot.grid_positions` and of the backbones' patch grids.
        """
        scores = self.patch_scores(tokens).unsqueeze(1)
        return F.interpolate(scores, size=tuple(size), mode="bilinear", align_corners=False).squeeze(1)

    @torch.no_grad()
    def transport_cost(self, tokens: Tensor) -> Tensor:
        """Per image, the entropic OT cost :math:`\\langle\\Gamma, M\\rangle` to the prototypes: ``[B]``."""
        values = [
            sinkhorn(
                self.cost(part, scope="image"),
                epsilon=self.epsilon,
                max_iter=self.sinkhorn_iterations,
                tol=0.0,
            ).cost
            for part in self._image_chunks(tokens)
        ]
        return torch.cat(values)

    # ------------------------------------------------------------------ helpers
    def _image_chunks(self, tokens: Tensor) -> Iterator[Tensor]:
        self._check_tokens(tokens)
        per_image = tokens.shape[1] * self.num_prototypes
        step = max(1, CHUNK_ELEMENTS // per_image)
        return iter(tokens.split(step))

    def _check_tokens(self, tokens: Tensor) -> None:
        cells = self.grid[0] * self.grid[1]
        if tokens.ndim != 3 or tokens.shape[1] != cells or tokens.shape[2] != self.channels:
            raise ValueError(
                f"prototype bank {self.name} expects tokens [B, {cells}, {self.channels}] "
                f"(grid {self.grid[0]}x{self.grid[1]}), got {tuple(tokens.shape)}"
            )


class PradotModel(nn.Module):
    """The ensemble: prototype banks over ``(layer, alpha)`` pairs, maps averaged, max as image score."""

    def __init__(self, members: Sequence[PrototypeBank]) -> None:
        super().__init__()
        if not members:
            raise ValueError("a PRADOT ensemble needs at least one prototype bank")
        names = [member.name for member in members]
        if len(set(names)) != len(names):
            raise ValueError(f"ensemble members must differ in (layer, alpha), got {names}")
        self.members = nn.ModuleList(members)

    @classmethod
    def build(
        cls,
        channels: Mapping[str, int],
        grids: Mapping[str, tuple[int, int]],
        layers: Sequence[str],
        alphas: Sequence[float],
        *,
        n_prototypes: int = 16,
        epsilon: float = 0.01,
        ema: float = 0.95,
        sinkhorn_iterations: int = 100,
        update_positions: bool = False,
        seed: int = 0,
        sinkhorn_tol: float = 0.0,
        warm_start: bool = False,
    ) -> PradotModel:
        """One bank per ``(layer, alpha)`` in that order, prototype features drawn from ``seed``."""
        members = []
        for index, (layer, alpha) in enumerate((layer, alpha) for layer in layers for alpha in alphas):
            member_seed = int(np.random.SeedSequence([seed, index]).generate_state(1)[0])
            generator = torch.Generator().manual_seed(member_seed)
            members.append(
                PrototypeBank(
                    layer,
                    channels[layer],
                    grids[layer],
                    n_prototypes=n_prototypes,
                    alpha=alpha,
                    epsilon=epsilon,
                    ema=ema,
                    sinkhorn_iterations=sinkhorn_iterations,
                    update_positions=update_positions,
                    generator=generator,
                    sinkhorn_tol=sinkhorn_tol,
                    warm_start=warm_start,
                )
            )
        return cls(members)

    @property
    def layers(self) -> tuple[str, ...]:
        """The layers the members read, in first-use order."""
        return tuple(dict.fromkeys(member.layer for member in self.members))

    def member(self, name: str | int) -> PrototypeBank:
        """A member by position or by name (``"stride16/alpha=0.3"``)."""
        if isinstance(name, int):
            return self.members[name]
        for member in self.members:
            if member.name == name:
                return member
        raise KeyError(f"no ensemble member {name!r}; members: {[m.name for m in self.members]}")

    def init_from_data(self, tokens: Mapping[str, Tensor], seed: int = 0) -> None:
        """:meth:`PrototypeBank.init_from_data` for every member on its layer's training tokens
        ``{layer: [N, HW, C]}``, member ``i`` drawing from ``SeedSequence([seed, i, 1])``."""
        for index, member in enumerate(self.members):
            member_seed = int(np.random.SeedSequence([seed, index, 1]).generate_state(1)[0])
            member.init_from_data(tokens[member.layer], torch.Generator().manual_seed(member_seed))

    def init_kmeans_plus_plus(self, tokens: Mapping[str, Tensor], seed: int = 0) -> None:
        """:meth:`PrototypeBank.init_kmeans_plus_plus` for every member on its layer's training tokens,
        member ``i`` seeded by ``SeedSequence([seed, i, 2])``."""
        for index, member in enumerate(self.members):
            member_seed = int(np.random.SeedSequence([seed, index, 2]).generate_state(1)[0])
            member.init_kmeans_plus_plus(tokens[member.layer], member_seed)

    def plan_entries_per_image(self) -> int:
        """The largest OT plan one training image adds over the members: ``max HW * P``."""
        return max(member.grid[0] * member.grid[1] * member.num_prototypes for member in self.members)

    def fit_batch(self, tokens: Mapping[str, Tensor]) -> dict[str, Tensor]:
        """One training step of every member on its layer's tokens; OT cost by member name."""
        return {member.name: member.fit_batch(tokens[member.layer]) for member in self.members}

    def anomaly_map(self, tokens: Mapping[str, Tensor], size: tuple[int, int]) -> Tensor:
        """Mean of the members' maps at ``size``: ``[B, *size]``."""
        maps = [member.anomaly_map(tokens[member.layer], size) for member in self.members]
        return torch.stack(maps).mean(0)

    def forward(self, tokens: Mapping[str, Tensor], size: tuple[int, int]) -> tuple[Tensor, Tensor]:
        """``(maps [B, *size], image scores [B])``, the score being the maximum of each map."""
        maps = self.anomaly_map(tokens, size)
        return maps, maps.flatten(1).amax(dim=1)

    def transport_scores(self, tokens: Mapping[str, Tensor]) -> Tensor:
        """Mean over members of the per-image OT cost (the alternative image score): ``[B]``."""
        return torch.stack([member.transport_cost(tokens[member.layer]) for member in self.members]).mean(0)

    def matched_prototypes(self, tokens: Mapping[str, Tensor], member: str | int = 0) -> PrototypeMatch:
        """Nearest prototypes of one member for every patch (for display: which region matched what)."""
        bank = self.member(member)
        return bank.matched_prototypes(tokens[bank.layer])
