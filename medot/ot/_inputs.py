"""Input checks and batching shared by the solvers.

Every solver works on a leading batch dimension ``B``: an unbatched ``[N, M]`` problem is lifted to
``[1, N, M]`` on the way in and squeezed back on the way out. Marginals default to uniform weights.
Problems a user can cause (wrong shapes, negative weights, NaN costs, unequal masses) raise
:class:`~medot.errors.OTError` with a message that says what to change.
"""

from __future__ import annotations

import warnings
from dataclasses import fields
from typing import Literal, TypeVar

import torch
from torch import Tensor

from medot.errors import OTConvergenceWarning, OTError

Gradient = Literal["unrolled", "envelope"]
"""How a solver differentiates: through its iterations, or by the envelope (Danskin) theorem."""

SUPPORTED_DTYPES = (torch.float32, torch.float64)

T = TypeVar("T")


def as_batch(matrix: Tensor, name: str) -> tuple[Tensor, bool]:
    """Return ``matrix`` as ``[B, N, M]`` and whether it already had a batch dimension."""
    if not isinstance(matrix, Tensor):
        raise OTError(f"{name} must be a torch.Tensor, got {type(matrix).__name__}.")
    if matrix.dtype not in SUPPORTED_DTYPES:
        raise OTError(
            f"{name} has dtype {matrix.dtype}; the OT solvers need float32 or float64 "
            "(convert with .float() or .double())."
        )
    if matrix.ndim == 2:
        return matrix.unsqueeze(0), False
    if matrix.ndim == 3:
        return matrix, True
    raise OTError(f"{name} must have shape [N, M] or [B, N, M], got {tuple(matrix.shape)}.")


def unbatch(tensor: Tensor, batched: bool) -> Tensor:
    """Undo :func:`as_batch` on a solver output whose first dimension is the batch."""
    return tensor if batched else tensor.squeeze(0)


def unbatch_record(record: T, batched: bool) -> T:
    """Apply :func:`unbatch` to every field of a diagnostics dataclass."""
    values = {field.name: unbatch(getattr(record, field.name), batched) for field in fields(record)}
    return type(record)(**values)


def check_finite(matrix: Tensor, name: str) -> None:
    """Raise if ``matrix`` holds NaN or infinite entries (one reduction pass, no temporary)."""
    low, high = torch.aminmax(matrix.detach())
    if not (torch.isfinite(low) and torch.isfinite(high)):
        raise OTError(f"{name} contains NaN or infinite values; check the features it was built from.")


def check_epsilon(epsilon: float, name: str = "epsilon") -> float:
    """Return ``epsilon`` as a float after checking it is a finite positive number."""
    value = float(epsilon)
    if not (value > 0.0 and value < float("inf")):
        raise OTError(f"{name} must be a finite positive number, got {epsilon!r}.")
    return value


DEFAULT_TOLERANCE = {torch.float64: 1e-6, torch.float32: 1e-4}
"""Default stopping tolerances. In float32 the attainable accuracy is about
``(max|C| / epsilon) * 6e-8`` (e.g. ``1e-5`` at ``max|C| / epsilon = 200``), so a float64-style
``1e-6`` would make typical float32 solves run to ``max_iter``."""


def check_iterations(max_iter: int) -> int:
    """Validate an iteration budget."""
    if int(max_iter) < 1:
        raise OTError(f"max_iter must be at least 1, got {max_iter!r}.")
    return int(max_iter)


def resolve_tolerance(tol: float | None, dtype: torch.dtype, name: str = "tol") -> float:
    """``tol`` as a float, or :data:`DEFAULT_TOLERANCE` for ``dtype`` when it is ``None``."""
    if tol is None:
        return DEFAULT_TOLERANCE[dtype]
    if not float(tol) >= 0.0:
        raise OTError(f"{name} must be non-negative, got {tol!r}.")
    return float(tol)


def marginal(weights: Tensor | None, like: Tensor, size: int, name: str) -> Tensor:
    """Return the ``[B, size]`` histogram ``weights`` (uniform if ``None``) on ``like``'s device.

    Weights may be unnormalised but must be finite, non-negative and have positive total mass.
    A ``[size]`` vector is shared by every problem of the batch.
    """
    batch = like.shape[0]
    if weights is None:
        return torch.full((batch, size), 1.0 / size, dtype=like.dtype, device=like.device)
    if not isinstance(weights, Tensor):
        raise OTError(f"{name} must be a torch.Tensor or None, got {type(weights).__name__}.")
    if weights.shape not in ((size,), (batch, size)):
        raise OTError(
            f"{name} must have shape [{size}] or [{batch}, {size}] to match the cost, "
            f"got {tuple(weights.shape)}."
        )
    weights = weights.to(dtype=like.dtype, device=like.device).expand(batch, size)
    detached = weights.detach()
    if not bool(torch.isfinite(detached).all()) or bool((detached < 0).any()):
        raise OTError(f"{name} must hold finite, non-negative weights.")
    if bool((detached.sum(-1) <= 0).any()):
        raise OTError(f"{name} has zero total mass in at least one problem; give it positive weights.")
    return weights


def mass_tolerance(dtype: torch.dtype) -> float:
    """Relative tolerance for comparing total masses: ``sqrt`` of the dtype's machine epsilon."""
    return torch.finfo(dtype).eps ** 0.5


def check_equal_mass(a: Tensor, b: Tensor) -> None:
    """Balanced OT needs ``sum(a) == sum(b)`` (to :func:`mass_tolerance`) in every problem."""
    mass_a, mass_b = a.detach().sum(-1), b.detach().sum(-1)
    gap = (mass_a - mass_b).abs() / mass_a.clamp_min(torch.finfo(a.dtype).tiny)
    if bool((gap > mass_tolerance(a.dtype)).any()):
        worst = int(gap.argmax())
        raise OTError(
            f"balanced OT needs marginals of equal mass, but problem {worst} has "
            f"sum(a)={float(mass_a[worst]):.6g} and sum(b)={float(mass_b[worst]):.6g}; "
            "normalise both to 1 or use entropic_partial_wasserstein."
        )


def check_gradient_mode(gradient: str) -> None:
    """Reject anything but the two documented gradient modes."""
    if gradient not in ("unrolled", "envelope"):
        raise OTError(f"gradient must be 'unrolled' or 'envelope', got {gradient!r}.")


def needs_unrolled_graph(gradient: Gradient, *tensors: Tensor) -> bool:
    """True when autograd must record the iterations: unrolled mode and some input needs grad."""
    return (
        gradient == "unrolled"
        and torch.is_grad_enabled()
        and any(t.requires_grad for t in tensors)
    )


ROW_MASS_GUARD = 0.1
"""Relative row-marginal error beyond which a Sinkhorn-type plan is declared numerically failed."""

PRECISION_HINT = (
    "the costs divided by epsilon exceed what this dtype resolves; use float64, rescale the costs "
    "(e.g. medot.ot.normalize_by_max) or increase epsilon."
)


def check_plan(marginal_error: Tensor, solver: str) -> None:
    """Raise instead of returning a plan whose marginals came out non-finite."""
    bad = ~torch.isfinite(marginal_error)
    if bool(bad.any()):
        index = int(bad.nonzero()[0, 0])
        raise OTError(f"{solver} produced a non-finite transport plan (problem {index}); {PRECISION_HINT}")


def check_row_mass(row_error: Tensor, mass: Tensor, solver: str) -> None:
    """Raise if rows that the last Sinkhorn update made exact are off by more than 10% of the mass.

    After an ``f`` update the row marginals hold up to rounding, whatever the iteration count, so
    a large row error (including an all-zero plan) can only mean lost floating-point precision.
    """
    gap = row_error / mass
    if bool((gap > ROW_MASS_GUARD).any()):
        index = int(gap.argmax())
        raise OTError(
            f"{solver} lost precision in problem {index}: its plan misplaces "
            f"{float(row_error[index]):.3g} of mass {float(mass[index]):.3g} on rows that should be "
            f"exact; {PRECISION_HINT}"
        )


def check_init(potentials: tuple[Tensor, ...]) -> None:
    """Refuse non-finite warm-start potentials (they would otherwise surface as a failed plan)."""
    for potential in potentials:
        if not bool(torch.isfinite(potential).all()):
            raise OTError(
                "init potentials contain NaN or infinite values; pass a previous converged result's "
                "diagnostics.f / diagnostics.g, or init=None to start cold."
            )


def raise_if_failed(failed: Tensor, iterations: Tensor, solver: str) -> None:
    """Raise for problems whose iterates became non-finite (they were frozen when it happened)."""
    if bool(failed.any()):
        index = int(failed.nonzero()[0, 0])
        raise OTError(
            f"{solver} produced non-finite iterates in problem {index} at iteration "
            f"{int(iterations[index])} and stopped there; {PRECISION_HINT}"
        )


def warn_unconverged(converged: Tensor, solver: str, fix: str, stacklevel: int = 3) -> None:
    """Issue :class:`~medot.errors.OTConvergenceWarning` if some problem missed its tolerance.

    The message is the same for every call from one place (no numbers in it), so Python's default
    filter shows it once per call site, as POT does; ``diagnostics`` hold the per-problem detail.
    ``stacklevel`` points at the caller of the public solver.
    """
    if not bool(converged.all()):
        warnings.warn(
            f"{solver} reached max_iter before its stopping tolerance in at least one problem "
            f"(see result.diagnostics.converged); {fix}",
            OTConvergenceWarning,
            stacklevel=stacklevel,
        )
