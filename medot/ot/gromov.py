r"""Fused Gromov–Wasserstein: batched entropic solver (log-domain) and an exact POT wrapper.

Problem (Vayer et al. 2019, Eq. 4, square loss; POT's
``ot.gromov.entropic_fused_gromov_wasserstein`` with ``solver="PGD"``), for each problem of a batch,

.. math::
    \min_{\mathbf{T} \in U(\mathbf{p}, \mathbf{q})}
    \underbrace{(1 - \alpha)\langle \mathbf{T}, \mathbf{M}\rangle_F
    + \alpha \sum_{i,j,k,l} (\mathbf{C_1}_{ik} - \mathbf{C_2}_{jl})^2\, T_{ij} T_{kl}}_{
    \mathcal{E}(\mathbf{T})}
    + \varepsilon \sum_{ij} T_{ij}\log T_{ij},

with features cost :math:`\mathbf{M}` ``[N, M]``, structure matrices :math:`\mathbf{C_1}` ``[N, N]``,
:math:`\mathbf{C_2}` ``[M, M]`` and trade-off :math:`\alpha \in [0, 1]`. Projected mirror descent
with step :math:`1/\varepsilon` (Peyré et al. 2016, Prop. 2) solves one entropic OT problem per
outer iteration,

.. math::
    \mathbf{T}^{(k+1)} = \mathrm{Sinkhorn}_\varepsilon\big(\mathbf{p}, \mathbf{q},
    (1-\alpha)\mathbf{M} + \alpha\,\nabla\mathcal{Q}(\mathbf{T}^{(k)})\big),\qquad
    \nabla\mathcal{Q}(\mathbf{T}) = \mathbf{L}(\mathbf{C_1}, \mathbf{C_2}) \otimes \mathbf{T}
    + \mathbf{L}(\mathbf{C_1}^\top, \mathbf{C_2}^\top) \otimes \mathbf{T},

from :math:`\mathbf{T}^{(0)} = \mathbf{p}\mathbf{q}^\top`, where (Peyré et al. 2016, Prop. 1)
:math:`\mathbf{L}(\mathbf{C_1}, \mathbf{C_2}) \otimes \mathbf{T} = \mathbf{C_1}^{\odot 2}
\mathbf{p}\mathbf{1}^\top + \mathbf{1}\mathbf{q}^\top \mathbf{C_2}^{\odot 2\top}
- 2\,\mathbf{C_1}\mathbf{T}\mathbf{C_2}^\top` (the two terms coincide for symmetric matrices).
Its fixed points are the stationary points of the entropic objective above.

**Difference from POT.** POT's inner solver is the multiplicative ``ot.sinkhorn``: with unscaled
costs its Gibbs kernel :math:`e^{-\mathbf{G}/\varepsilon}` underflows (e.g. squared-Euclidean
costs around 26 with :math:`\varepsilon = 0.1` in float32, or at :math:`\alpha = 0.5` even in
float64) and POT then warns and returns an all-zero plan and a value of 0 with zero gradient.
Here the inner solver is the log-domain :func:`medot.ot.sinkhorn.sinkhorn_iterations`,
warm-started from the previous outer iteration's potentials, so the kernel is never formed and the
problem is solved as posed, without rescaling. As a last guard the solver raises
:class:`~medot.errors.OTError` if the final plan is non-finite or if its rows, exact after the
last Sinkhorn update, misplace more than 10% of the mass: that only happens when costs over
:math:`\varepsilon` exceed the dtype's resolution (e.g. float32 with :math:`\max\mathbf{M}/
\varepsilon \sim 10^9`), and the message says to use float64 or rescale. It never returns a
silent zero.

**Stopping.** Outer iterations stop per problem when
:math:`\|\mathbf{T}^{(k+1)} - \mathbf{T}^{(k)}\|_1 <` ``tol`` or after ``max_iter``; each inner
Sinkhorn stops at column error ``inner_tol`` or ``inner_max_iter`` (see
:mod:`medot.ot.sinkhorn`). ``marginal_error`` is :math:`\|\mathbf{T}\mathbf{1} - \mathbf{p}\|_1 +
\|\mathbf{T}^\top\mathbf{1} - \mathbf{q}\|_1` of the returned plan.

**Returned values and gradients.** ``value`` is :math:`\mathcal{E}(\mathbf{T}^\star)` (POT's
``fgw_dist``; the quadratic term is evaluated with the plan's own marginals) and ``objective`` is
:math:`\mathcal{E}(\mathbf{T}^\star) + \varepsilon\sum T^\star\log T^\star`, the entropic FGW.
With ``gradient="envelope"`` (default) the iterations run without a graph and ``objective``
back-propagates the envelope (Danskin) gradient, :math:`\partial\mathcal{E}/\partial(\mathbf{M},
\mathbf{C_1}, \mathbf{C_2})` at fixed :math:`\mathbf{T}^\star`: :math:`(1-\alpha)\mathbf{T}^\star`,
:math:`2\alpha(\mathbf{C_1}\odot\mathbf{p}\mathbf{p}^\top - \mathbf{T}^\star\mathbf{C_2}
\mathbf{T}^{\star\top})` and :math:`2\alpha(\mathbf{C_2}\odot\mathbf{q}\mathbf{q}^\top -
\mathbf{T}^{\star\top}\mathbf{C_1}\mathbf{T}^\star)` for symmetric matrices, and on to whatever
embeddings ``M``, ``C1``, ``C2`` were built from. At a stationary :math:`\mathbf{T}^\star` this is
the exact derivative of ``objective`` (the constraint set does not depend on the inputs; checked
against finite differences to ~1e-7). It is *not* the derivative of ``value``, which also moves
through :math:`\mathbf{T}^\star`: on K-MaT-shaped problems it is 70-1200 % off ``value``'s finite
differences at :math:`\alpha = \varepsilon = 0.1` and 1.6-27 % at :math:`\alpha = 0.5`
(``benchmarks/fgw_gradient_check.py``). So in envelope mode ``value`` is returned detached, and
the plan-fixed gradient is available under its own name, ``value_plan_fixed`` (what POT's ``fused_gromov_wasserstein2``
back-propagates). ``gradient="unrolled"`` records the iterations (small problems only) and
differentiates ``value`` and ``objective`` exactly for the computed iterate. No gradient flows to
``p`` or ``q``.

References: G. Peyré, M. Cuturi, J. Solomon, *Gromov–Wasserstein averaging of kernel and distance
matrices*, ICML 2016; T. Vayer, L. Chapel, R. Flamary, R. Tavenard, N. Courty, *Optimal transport
for structured data with application on graphs*, ICML 2019.
"""

from __future__ import annotations

from dataclasses import dataclass

import ot
import torch
from torch import Tensor

from medot.errors import OTError
from medot.ot._inputs import (
    Gradient,
    as_batch,
    check_epsilon,
    check_equal_mass,
    check_finite,
    check_gradient_mode,
    check_iterations,
    check_plan,
    check_row_mass,
    marginal,
    needs_unrolled_graph,
    raise_if_failed,
    resolve_tolerance,
    unbatch,
    unbatch_record,
    warn_unconverged,
)
from medot.ot._kernels import batch_inner, exponentiate_plan
from medot.ot._stopping import BatchStopping
from medot.ot.sinkhorn import sinkhorn_iterations

FGW_FIX = (
    "increase max_iter / inner_max_iter or epsilon, rescale C1 and C2 (e.g. medot.ot.normalize_by_max), "
    "or use float64."
)


@dataclass(frozen=True)
class FGWDiagnostics:
    """Per-problem record of an entropic FGW solve (``[B]`` tensors, scalars when unbatched).

    ``iterations``: outer (mirror-descent) iterations. ``marginal_error``: ``||T1 - p||_1 +
    ||Tᵀ1 - q||_1``. ``converged``: the outer rule fired before ``max_iter`` and the last inner
    Sinkhorn reached ``inner_tol``. ``plan_change``: the last ``||T_k+1 - T_k||_1``.
    ``inner_iterations``: Sinkhorn iterations summed over outer iterations. ``inner_converged``:
    the last inner Sinkhorn reached ``inner_tol``.
    """

    iterations: Tensor
    marginal_error: Tensor
    converged: Tensor
    plan_change: Tensor
    inner_iterations: Tensor
    inner_converged: Tensor


@dataclass(frozen=True)
class FGWResult:
    """Plan ``[B, N, M]``, FGW ``value``, entropic ``objective`` and diagnostics.

    What back-propagates, by ``gradient`` mode (see the module docstring):

    * ``"envelope"``: ``objective`` carries its exact derivative (Danskin); ``value`` is detached,
      because its derivative also involves how the plan moves; ``value_plan_fixed`` is ``value``
      carrying the gradient with the plan held fixed (POT's ``fused_gromov_wasserstein2``
      convention) -- the same tensor as ``objective``'s gradient, which is *not* the derivative of
      ``value`` (70-1200 % off it at alpha = epsilon = 0.1 on K-MaT-shaped problems). The plan
      is detached.
    * ``"unrolled"``: autograd through the iterations; ``plan``, ``value`` and ``objective`` carry
      exact derivatives of the computed iterate, ``value_plan_fixed`` is as above.
    """

    plan: Tensor
    value: Tensor
    objective: Tensor
    value_plan_fixed: Tensor
    diagnostics: FGWDiagnostics


@dataclass(frozen=True)
class ExactFGWResult:
    """Plan ``[B, N, M]`` and FGW value of :func:`fused_gromov_wasserstein_exact`."""

    plan: Tensor
    value: Tensor


def entropic_fused_gromov_wasserstein(
    M: Tensor,
    C1: Tensor,
    C2: Tensor,
    p: Tensor | None = None,
    q: Tensor | None = None,
    *,
    alpha: float = 0.5,
    epsilon: float = 0.1,
    max_iter: int = 1000,
    tol: float | None = None,
    inner_max_iter: int = 1000,
    inner_tol: float | None = None,
    warm_start: bool = True,
    gradient: Gradient = "envelope",
) -> FGWResult:
    """Entropic FGW (square loss) between ``(C1, p)`` and ``(C2, q)`` with feature cost ``M``.

    Args:
        M: ``[B, N, M]`` or ``[N, M]`` feature cost, float32 or float64, any device.
        C1, C2: ``[B, N, N]`` / ``[B, M, M]`` structure matrices (a 2-D matrix is shared by the
            batch); they need not be symmetric.
        p, q: weights ``[B, N]`` / ``[B, M]`` (shared ``[N]`` / ``[M]``, or uniform if ``None``), of
            equal mass. Not differentiated.
        alpha: trade-off :math:`\\alpha \\in [0, 1]` (0: Sinkhorn on ``M``; 1: entropic GW).
        epsilon: entropic regularisation :math:`\\varepsilon > 0`, in units of the objective.
        max_iter, tol: outer stopping rule on :math:`\\|\\mathbf{T}^{(k+1)} - \\mathbf{T}^{(k)}\\|_1`.
        inner_max_iter, inner_tol: inner Sinkhorn stopping rule on the column error.
            Tolerances left at ``None`` are 1e-6 in float64 and 1e-4 in float32.
        warm_start: start each inner Sinkhorn from the previous potentials (POT starts cold).
        gradient: ``"envelope"`` (default): no graph through the iterations; ``objective``
            back-propagates its exact (Danskin) gradient and ``value`` none (see
            :class:`FGWResult`). ``"unrolled"``: autograd records every outer and inner iteration
            (memory grows with the iteration count; small problems only), so ``value`` too
            carries its exact derivative.

    Raises:
        OTError: invalid inputs, or a numerically failed plan (non-finite, or rows off by more
            than 10% of the mass: costs over epsilon beyond the dtype's resolution).
    """
    check_gradient_mode(gradient)
    check_iterations(max_iter)
    check_iterations(inner_max_iter)
    eps = check_epsilon(epsilon)
    if not 0.0 <= float(alpha) <= 1.0:
        raise OTError(f"alpha must lie in [0, 1], got {alpha!r}.")
    M_, batched = as_batch(M, "M")
    tol = resolve_tolerance(tol, M_.dtype)
    inner_tol = resolve_tolerance(inner_tol, M_.dtype, "inner_tol")
    batch, rows, cols = M_.shape
    C1_ = _structure(C1, "C1", batch, rows, M_)
    C2_ = _structure(C2, "C2", batch, cols, M_)
    for matrix, name in ((M_, "M"), (C1_, "C1"), (C2_, "C2")):
        check_finite(matrix, name)
    p_ = marginal(p, M_, rows, "p")
    q_ = marginal(q, M_, cols, "q")
    check_equal_mass(p_, q_)
    if p_.requires_grad or q_.requires_grad:
        raise OTError("entropic_fused_gromov_wasserstein does not differentiate p or q; detach them.")

    record_graph = needs_unrolled_graph(gradient, M_, C1_, C2_)
    inputs = (M_, C1_, C2_) if record_graph else (M_.detach(), C1_.detach(), C2_.detach())
    with torch.set_grad_enabled(record_graph):
        plan, diagnostics, failed = _mirror_descent(
            (*inputs, p_, q_),
            float(alpha),
            eps,
            (max_iter, tol, inner_max_iter, inner_tol),
            warm_start,
        )
    raise_if_failed(failed, diagnostics.iterations, "entropic_fused_gromov_wasserstein")
    check_plan(diagnostics.marginal_error, "entropic_fused_gromov_wasserstein")
    check_row_mass(
        (plan.detach().sum(-1) - p_).abs().sum(-1), p_.sum(-1), "entropic_fused_gromov_wasserstein"
    )
    value_plan_fixed = fused_gromov_wasserstein_value(plan.detach(), M_, C1_, C2_, float(alpha))
    entropy = eps * torch.xlogy(plan, plan).sum((-2, -1))
    if record_graph:
        value = fused_gromov_wasserstein_value(plan, M_, C1_, C2_, float(alpha))
        objective = value + entropy
    else:  # Danskin: at the solution, d objective = dE at fixed plan, i.e. value_plan_fixed's
        value = value_plan_fixed.detach()
        objective = value_plan_fixed + entropy
    if tol > 0:
        warn_unconverged(diagnostics.converged, "entropic_fused_gromov_wasserstein", FGW_FIX)
    return FGWResult(
        plan=unbatch(plan, batched),
        value=unbatch(value, batched),
        objective=unbatch(objective, batched),
        value_plan_fixed=unbatch(value_plan_fixed, batched),
        diagnostics=unbatch_record(diagnostics, batched),
    )


def fused_gromov_wasserstein_value(
    plan: Tensor, M: Tensor, C1: Tensor, C2: Tensor, alpha: float
) -> Tensor:
    """:math:`\\mathcal{E}(\\mathbf{T})` for ``[B, ...]`` inputs, differentiable in every argument.

    The quadratic term uses the plan's own marginals :math:`\\mathbf{p} = \\mathbf{T}\\mathbf{1}`,
    :math:`\\mathbf{q} = \\mathbf{T}^\\top\\mathbf{1}`: :math:`\\sum_{ijkl}(\\mathbf{C_1}_{ik} -
    \\mathbf{C_2}_{jl})^2 T_{ij}T_{kl} = \\mathbf{p}^\\top\\mathbf{C_1}^{\\odot2}\\mathbf{p} +
    \\mathbf{q}^\\top\\mathbf{C_2}^{\\odot2}\\mathbf{q} - 2\\langle\\mathbf{C_1}\\mathbf{T}
    \\mathbf{C_2}^\\top, \\mathbf{T}\\rangle_F`. Passing a detached plan gives the envelope gradient.
    """
    p, q = plan.sum(-1), plan.sum(-2)
    structure = (
        torch.einsum("bi,bik,bk->b", p, C1.square(), p)
        + torch.einsum("bj,bjl,bl->b", q, C2.square(), q)
        - 2.0 * batch_inner(C1 @ plan @ C2.transpose(-1, -2), plan)
    )
    return (1.0 - alpha) * batch_inner(plan, M) + alpha * structure


def fused_gromov_wasserstein_exact(
    M: Tensor,
    C1: Tensor,
    C2: Tensor,
    p: Tensor | None = None,
    q: Tensor | None = None,
    *,
    alpha: float = 0.5,
) -> ExactFGWResult:
    """Unregularised FGW (square loss) by POT's conditional gradient, one problem at a time.

    Wraps ``ot.gromov.fused_gromov_wasserstein2`` on POT's torch backend: torch in, torch out,
    same device; ``value`` carries POT's gradients w.r.t. ``M``, ``C1``, ``C2``, ``p``, ``q``
    (plan held fixed, as for the entropic solver). FGW is non-convex and the conditional gradient
    returns a local optimum reached from :math:`\\mathbf{p}\\mathbf{q}^\\top`; use it as a reference,
    not in training loops (each call solves exact OT problems on the CPU).
    """
    if not 0.0 <= float(alpha) <= 1.0:
        raise OTError(f"alpha must lie in [0, 1], got {alpha!r}.")
    M_, batched = as_batch(M, "M")
    batch, rows, cols = M_.shape
    C1_ = _structure(C1, "C1", batch, rows, M_)
    C2_ = _structure(C2, "C2", batch, cols, M_)
    p_ = marginal(p, M_, rows, "p")
    q_ = marginal(q, M_, cols, "q")
    check_equal_mass(p_, q_)
    values, plans = [], []
    for k in range(batch):
        value, log = ot.gromov.fused_gromov_wasserstein2(
            M_[k], C1_[k], C2_[k], p_[k], q_[k], loss_fun="square_loss", alpha=float(alpha), log=True
        )
        values.append(value)
        plans.append(log["T"])
    return ExactFGWResult(
        plan=unbatch(torch.stack(plans), batched), value=unbatch(torch.stack(values), batched)
    )


def _structure(matrix: Tensor, name: str, batch: int, size: int, like: Tensor) -> Tensor:
    structure, _ = as_batch(matrix, name)
    if structure.shape[-2:] != (size, size) or structure.shape[0] not in (1, batch):
        raise OTError(
            f"{name} must be [{size}, {size}] or [{batch}, {size}, {size}] to match M, "
            f"got {tuple(matrix.shape)}."
        )
    if structure.dtype != like.dtype or structure.device != like.device:
        raise OTError(f"{name} must have M's dtype and device ({like.dtype}, {like.device}).")
    return structure.expand(batch, size, size)


def _structure_pairs(C1: Tensor, C2: Tensor) -> list[tuple[Tensor, Tensor, float]]:
    """``(A, B, weight)`` terms of :math:`\\nabla\\mathcal{Q}`: one doubled term when symmetric."""
    transposed = (C1.transpose(-1, -2), C2.transpose(-1, -2))
    if torch.equal(C1, transposed[0]) and torch.equal(C2, transposed[1]):
        return [(C1, C2, 2.0)]
    return [(C1, C2, 1.0), (*transposed, 1.0)]


def _mirror_descent(
    problem: tuple[Tensor, Tensor, Tensor, Tensor, Tensor],
    alpha: float,
    eps: float,
    stopping_rules: tuple[int, float, int, float],
    warm_start: bool,
) -> tuple[Tensor, FGWDiagnostics]:
    """Projected mirror descent (the outer loop) on ``problem = (M, C1, C2, p, q)``, no autograd.

    The linearised cost :math:`(1-\\alpha)\\mathbf{M} + \\alpha\\nabla\\mathcal{Q}(\\mathbf{T})` is
    :math:`(1-\\alpha)\\mathbf{M} - 2\\alpha\\,\\mathbf{A}\\mathbf{T}\\mathbf{B}^\\top` plus the marginal
    terms :math:`\\alpha(\\mathbf{A}^{\\odot2}\\mathbf{p}\\mathbf{1}^\\top + \\mathbf{1}\\mathbf{q}^\\top
    \\mathbf{B}^{\\odot2\\top})` (POT's ``init_matrix``). Those are a row term plus a column term,
    which the Sinkhorn potentials absorb exactly, so they are left out, and so is each iteration's
    minimum: the inner Sinkhorn sees the same plans on a cost that starts at 0. In float32 this
    matters: with structure matrices in the tens the dropped terms are hundreds of times
    :math:`\\varepsilon` and used to swamp the plan-dependent part. Returns the plan, the
    diagnostics and a ``[B]`` mask of problems whose iterates became non-finite (stopped at once).
    """
    M, C1, C2, p, q = problem
    max_iter, tol, inner_max_iter, inner_tol = stopping_rules
    batch, rows, cols = M.shape
    log_p, log_q = p.log(), q.log()
    pairs = _structure_pairs(C1, C2)
    log_kernel_constant = (1.0 - alpha) * M / -eps
    plan = p.unsqueeze(-1) * q.unsqueeze(-2)
    f, g = M.new_zeros(batch, rows), M.new_zeros(batch, cols)
    stopping = BatchStopping(torch.ones(batch, dtype=torch.bool, device=M.device), may_stop=tol > 0)
    inner_iterations = torch.zeros(batch, dtype=torch.long, device=M.device)
    inner_converged = torch.zeros(batch, dtype=torch.bool, device=M.device)
    change = torch.full((batch,), float("inf"), dtype=M.dtype, device=M.device)
    completed = 0
    for completed in range(1, max_iter + 1):
        log_kernel = log_kernel_constant
        for A, B, weight in pairs:
            log_kernel = torch.baddbmm(
                log_kernel, A @ plan, B.transpose(-1, -2), alpha=2.0 * alpha * weight / eps
            )
        log_kernel = log_kernel - log_kernel.amax((-2, -1), keepdim=True)
        start = (f, g) if warm_start else (torch.zeros_like(f), torch.zeros_like(g))
        state = sinkhorn_iterations(
            log_kernel, log_p, log_q, eps, *start, inner_max_iter, inner_tol, active=stopping.active
        )
        new_plan = exponentiate_plan(log_kernel, log_p + state.f / eps, log_q + state.g / eps)
        step_change = (new_plan - plan).abs().sum((-2, -1))
        plan = stopping.keep(new_plan, plan)
        f, g = stopping.keep(state.f, f), stopping.keep(state.g, g)
        change = stopping.keep(step_change, change)
        inner_converged = stopping.keep(state.converged, inner_converged)
        inner_iterations += state.iterations
        failed = state.failed | ~torch.isfinite(step_change)
        if stopping.stop(step_change < tol, completed, failed=failed):
            break
    iterations, outer_converged = stopping.finish(completed)
    marginal_error = (plan.sum(-1) - p).abs().sum(-1) + (plan.sum(-2) - q).abs().sum(-1)
    diagnostics = FGWDiagnostics(
        iterations=iterations,
        marginal_error=marginal_error,
        converged=outer_converged & inner_converged,
        plan_change=change,
        inner_iterations=inner_iterations,
        inner_converged=inner_converged,
    )
    return plan, diagnostics, stopping.failed
