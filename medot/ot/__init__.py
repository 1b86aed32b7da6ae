"""Batched, differentiable, device-agnostic optimal-transport solvers for the medot methods.

Every solver takes torch tensors on any device, float32 or float64, batched over a leading
dimension (``[B, N, M]``; an unbatched ``[N, M]`` problem is accepted and returned unbatched), and
returns a frozen dataclass with the plan, the value(s) and a diagnostics record (iterations,
marginal error, converged flag, solver-specific fields). Invalid inputs and numerically failed
solves raise :class:`medot.errors.OTError`; no solver returns NaN or a silent zero. A solve that reaches
its iteration budget above its tolerance issues :class:`medot.errors.OTConvergenceWarning` (once
per call site, with the fix to try).

Solvers (one family per module, the maths in each module's docstring):

* :func:`sinkhorn` (:mod:`medot.ot.sinkhorn`): balanced entropic OT, log-domain Sinkhorn;
  gradient unrolled through the iterations or by the envelope theorem.
* :func:`entropic_partial_wasserstein` (:mod:`medot.ot.partial`): entropic partial OT moving mass
  ``m`` (Benamou et al. 2015), log-domain Dykstra with vector-only state.
* :func:`entropic_fused_gromov_wasserstein` (:mod:`medot.ot.gromov`): entropic fused
  Gromov–Wasserstein (square loss) by projected mirror descent with an inner log-domain Sinkhorn;
  envelope gradient w.r.t. ``M``, ``C1``, ``C2``. :func:`fused_gromov_wasserstein_exact` wraps
  POT's conditional-gradient solver as a reference.

Costs (:mod:`medot.ot.costs`): :func:`cosine_cost`, :func:`squared_euclidean_cost`,
:func:`euclidean_cost`, :func:`grid_positions`, :func:`grid_distance`, :func:`normalize_by_max`,
:func:`barycentric_projection`.

POT (``import ot``) is the reference implementation: ``tests/test_ot_*.py`` check these solvers
against it, and ``benchmarks/ot_bench.py`` times them against it.
"""

from medot.errors import OTConvergenceWarning
from medot.ot.costs import (
    barycentric_projection,
    cosine_cost,
    euclidean_cost,
    grid_distance,
    grid_positions,
    normalize_by_max,
    squared_euclidean_cost,
)
from medot.ot.gromov import (
    ExactFGWResult,
    FGWDiagnostics,
    FGWResult,
    entropic_fused_gromov_wasserstein,
    fused_gromov_wasserstein_exact,
    fused_gromov_wasserstein_value,
)
from medot.ot.partial import PartialDiagnostics, PartialResult, entropic_partial_wasserstein
from medot.ot.sinkhorn import SinkhornDiagnostics, SinkhornResult, sinkhorn

__all__ = [
    "ExactFGWResult",
    "FGWDiagnostics",
    "FGWResult",
    "OTConvergenceWarning",
    "PartialDiagnostics",
    "PartialResult",
    "SinkhornDiagnostics",
    "SinkhornResult",
    "barycentric_projection",
    "cosine_cost",
    "entropic_fused_gromov_wasserstein",
    "entropic_partial_wasserstein",
    "euclidean_cost",
    "fused_gromov_wasserstein_exact",
    "fused_gromov_wasserstein_value",
    "grid_distance",
    "grid_positions",
    "normalize_by_max",
    "sinkhorn",
    "squared_euclidean_cost",
]
