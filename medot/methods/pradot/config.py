"""Hyper-parameters of a PRADOT ensemble (:class:`PradotConfig`) and of its PatchCore baseline."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from medot.errors import MedotError

DEFAULT_ALPHAS = (0.0, 0.3)
"""The paper's ensemble: global (alpha = 0) and local (alpha = 0.3) prototypes on each layer."""


@dataclass(frozen=True)
class PradotConfig:
    """One PRADOT run: an ensemble of prototype banks, one per ``(layer, alpha)`` pair.

    Defaults are the paper's / its authors' configuration (Trombetta & Lartizien 2025): 16
    prototypes per grid location, balanced entropic OT with ``epsilon = 0.01`` and 100 log-domain
    Sinkhorn iterations, EMA momentum 0.95, fixed prototype positions, 50 epochs of batches of 64
    images. ``layers`` empty means "the caller picks" (the CLI uses the backbone's two shallowest
    default layers: ``stride8`` and ``stride16`` for ``lite``).
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
