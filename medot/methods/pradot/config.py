"""Hyper-parameters of a PRADOT ensemble (:class:`PradotConfig`) and of its PatchCore baseline."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from medot.errors import MedotError

DEFAULT_ALPHAS = (0.0, 0.3)
"""The paper's ensemble: global (alpha = 0) and local (alpha = 0.3) prototypes on each layer."""

INITS = ("data", "kmeans++", "uniform")
r"""Prototype initialisations: features sampled from the training set at each prototype's own cell
(``data``, default), the same chosen per cell by k-means++ seeding in the cosine geometry
(``kmeans++``), or the authors' :math:`\mathcal{U}[0, 1)^C` noise (``uniform``)."""

SINKHORN_TOL = 1e-2
r"""Default stopping tolerance of a training step's Sinkhorn solve: the L1 error of the prototype
marginal, :math:`\|\Gamma^\top\mathbf{1} - \mathbf{b}\|_1 < 10^{-2}` (at most 1 % of the mass
misplaced; rows are exact after every update). The barycentres divide by each prototype's actual
column mass, so a column-mass error changes no barycentre by itself; ``docs/methods/pradot.md``
records the plan difference against the cold 100-iteration solve that this tolerance gives."""

PRESETS = ("auto", "paper", "cpu")
"""``paper``: the authors' sizes (two layers, 16 prototypes per cell, batches of 64 images, 50
epochs); ``cpu``: one layer (the coarser default, ``stride16`` for ``lite``), 4 prototypes per
cell, OT batches bounded by :data:`CPU_PLAN_BUDGET` entries, 10 epochs; ``auto``: ``paper`` with a
CUDA GPU, else ``cpu``."""

CPU_PLAN_BUDGET = 1 << 21
"""Plan entries per OT problem under the ``cpu`` preset (2 Mi entries, 8 MiB of float32 per plan:
at ``lite`` stride16 with 4 prototypes per cell, 196 x 784 entries per image, 13 images per OT
batch). An epoch costs about the same number of plan entries whatever the batch, so a bounded
batch gives more EMA steps per epoch at no extra cost."""


@dataclass(frozen=True)
class PradotConfig:
    """One PRADOT run: an ensemble of prototype banks, one per ``(layer, alpha)`` pair.

    Sizes default to the paper's / its authors' configuration (Trombetta & Lartizien 2025): 16
    prototypes per grid location, balanced entropic OT with ``epsilon = 0.01`` and at most 100
    log-domain Sinkhorn iterations, EMA momentum 0.95, fixed prototype positions, 50 epochs of
    batches of (at most) 64 images. ``layers`` empty means "the caller picks" (the CLI uses the
    backbone's two shallowest default layers: ``stride8`` and ``stride16`` for ``lite``).

    Training departs from the authors by default in three ways that cost no accuracy
    (``docs/methods/pradot.md``): ``init="data"`` (prototypes start at training features of their
    own cell; ``"uniform"`` is the authors' noise), ``warm_start`` (each Sinkhorn solve starts from
    the previous step's prototype potential) and ``sinkhorn_tol`` (stop when the prototype marginal
    is within that L1 error; ``0`` runs exactly ``sinkhorn_iterations``). ``plan_budget`` (plan
    entries, ``None``: no bound) caps the images per OT batch below ``batch_size`` so that one step
    fits a memory budget. :meth:`preset` gives the ``paper`` and ``cpu`` settings.
    """

    layers: tuple[str, ...] = ()
    alphas: tuple[float, ...] = DEFAULT_ALPHAS
    n_prototypes: int = 16
    epsilon: float = 0.01
    sinkhorn_iterations: int = 100
    ema: float = 0.95
    update_positions: bool = False
    epochs: int = 50
    batch_size: int = 64
    seed: int = 0
    init: str = "data"
    warm_start: bool = True
    sinkhorn_tol: float = SINKHORN_TOL
    plan_budget: int | None = None

    @classmethod
    def preset(cls, name: str, default_layers: tuple[str, ...] | list[str] = (), *, cuda: bool = False,
               **overrides: Any) -> PradotConfig:
        """The ``paper`` or ``cpu`` settings (``auto``: ``paper`` when ``cuda``, else ``cpu``) for a
        backbone whose default layers are ``default_layers``; ``overrides`` (not None) win."""
        resolved = resolve_preset(name, cuda)
        layers = tuple(default_layers[:2]) if resolved == "paper" else tuple(default_layers[1:2] or default_layers[:1])
        if resolved == "paper":
            base: dict[str, Any] = {"layers": layers}
        else:
            base = {"layers": layers, "n_prototypes": 4, "epochs": 10, "plan_budget": CPU_PLAN_BUDGET}
        base.update({key: value for key, value in overrides.items() if value is not None})
        return cls(**base)

    def __post_init__(self) -> None:
        object.__setattr__(self, "layers", tuple(self.layers))
        object.__setattr__(self, "alphas", tuple(float(a) for a in self.alphas))
        problems = []
        if len(set(self.layers)) != len(self.layers):
            problems.append(f"layers {list(self.layers)} repeat a layer")
        if not self.alphas or any(not 0.0 <= a <= 1.0 for a in self.alphas):
            problems.append(f"alphas must be one or more numbers in [0, 1], got {list(self.alphas)}")
        if len(set(self.alphas)) != len(self.alphas):
            problems.append(f"alphas {list(self.alphas)} repeat a value")
        if self.n_prototypes < 1:
            problems.append(f"n_prototypes must be >= 1, got {self.n_prototypes}")
        if not self.epsilon > 0.0:
            problems.append(f"epsilon must be > 0, got {self.epsilon}")
        if self.sinkhorn_iterations < 1:
            problems.append(f"sinkhorn_iterations must be >= 1, got {self.sinkhorn_iterations}")
        if not 0.0 <= self.ema < 1.0:
            problems.append(f"ema must be in [0, 1), got {self.ema}")
        if self.epochs < 1:
            problems.append(f"epochs must be >= 1, got {self.epochs}")
        if self.batch_size < 1:
            problems.append(f"batch_size must be >= 1, got {self.batch_size}")
        if self.init not in INITS:
            problems.append(f"init must be one of {', '.join(INITS)}, got {self.init!r}")
        if not self.sinkhorn_tol >= 0.0:
            problems.append(f"sinkhorn_tol must be >= 0, got {self.sinkhorn_tol}")
        if self.plan_budget is not None and self.plan_budget < 1:
            problems.append(f"plan_budget must be >= 1 plan entries, got {self.plan_budget}")
        if problems:
            raise MedotError("invalid PRADOT settings: " + "; ".join(problems))

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready copy (tuples as lists)."""
        data = asdict(self)
        data["layers"], data["alphas"] = list(self.layers), list(self.alphas)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> PradotConfig:
        known = {name: data[name] for name in cls.__dataclass_fields__ if name in data}
        return cls(**known)


def resolve_preset(name: str, cuda: bool) -> str:
    """``paper`` or ``cpu`` for a preset name (``auto`` follows ``cuda``); refuses unknown names."""
    if name not in PRESETS:
        raise MedotError(f"unknown PRADOT preset {name!r}; choose one of {', '.join(PRESETS)}")
    if name == "auto":
        return "paper" if cuda else "cpu"
    return name


@dataclass(frozen=True)
class PatchCoreConfig:
    """PatchCore (Roth et al., CVPR 2022) as anomalib configures it.

    ``coreset_ratio`` of the training patches kept by greedy k-center selection (10 %), after a
    sparse Johnson-Lindenstrauss projection with distortion ``projection_eps`` (anomalib: 0.9)
    whenever that lowers the dimension; ``num_neighbors`` memory items for the optional image
    score re-weighting (Eq. 7; anomalib: 9); ``blur_sigma`` of the Gaussian that smooths the
    upsampled map (paper: 4 pixels).
    """

    coreset_ratio: float = 0.1
    projection_eps: float = 0.9
    num_neighbors: int = 9
    reweight: bool = False
    blur_sigma: float = 4.0
    seed: int = 0

    def __post_init__(self) -> None:
        if not 0.0 < self.coreset_ratio <= 1.0:
            raise MedotError(f"coreset_ratio must be in (0, 1], got {self.coreset_ratio}")
        if not 0.0 < self.projection_eps < 1.0:
            raise MedotError(f"projection_eps must be in (0, 1), got {self.projection_eps}")
        if self.num_neighbors < 1:
            raise MedotError(f"num_neighbors must be >= 1, got {self.num_neighbors}")
        if self.blur_sigma < 0.0:
            raise MedotError(f"blur_sigma must be >= 0, got {self.blur_sigma}")
