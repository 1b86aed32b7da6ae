r"""Entropic partial optimal transport: batched log-domain Bregman–Dykstra projections.

Problem (Benamou et al. 2015, Prop. 5; the formulation of POT's
``ot.partial.entropic_partial_wasserstein``), for each problem of a batch,

.. math::
    \boldsymbol\Gamma^\star = \mathop{\arg\min}_{\boldsymbol\Gamma \in \Pi_m(\mathbf{a}, \mathbf{b})}
    \langle \boldsymbol\Gamma, \mathbf{C} \rangle_F
    + \varepsilon \sum_{ij} \Gamma_{ij} \log \Gamma_{ij},
    \qquad \Pi_m = \{\boldsymbol\Gamma \ge 0 : \boldsymbol\Gamma\mathbf{1} \le \mathbf{a},\
    \boldsymbol\Gamma^\top\mathbf{1} \le \mathbf{b},\ \mathbf{1}^\top\boldsymbol\Gamma\mathbf{1} = m\},

with :math:`0 < m \le \min(\|\mathbf{a}\|_1, \|\mathbf{b}\|_1)`. Equivalently
:math:`\boldsymbol\Gamma^\star` is the KL projection of the Gibbs kernel
:math:`\mathbf{K} = e^{-\mathbf{C}/\varepsilon}` onto :math:`\Pi_m = \mathcal{C}_1 \cap
\mathcal{C}_2 \cap \mathcal{C}_3`, computed by Dykstra's algorithm with KL projections onto the row
set :math:`\mathcal{C}_1`, the column set :math:`\mathcal{C}_2` and the mass set
:math:`\mathcal{C}_3` (Benamou et al. 2015, Sec. 5.2). Each projection rescales rows or columns:

.. math::
    \mathrm{P}_{\mathcal{C}_1}(\boldsymbol\Gamma) = \operatorname{diag}\Big(\min\Big(
    \frac{\mathbf{a}}{\boldsymbol\Gamma\mathbf{1}}, \mathbf{1}\Big)\Big)\boldsymbol\Gamma,\quad
    \mathrm{P}_{\mathcal{C}_2}(\boldsymbol\Gamma) = \boldsymbol\Gamma\operatorname{diag}\Big(\min\Big(
    \frac{\mathbf{b}}{\boldsymbol\Gamma^\top\mathbf{1}}, \mathbf{1}\Big)\Big),\quad
    \mathrm{P}_{\mathcal{C}_3}(\boldsymbol\Gamma) = \frac{m\,\boldsymbol\Gamma}
    {\mathbf{1}^\top\boldsymbol\Gamma\mathbf{1}}.

POT stores the plan and the three Dykstra corrections as full ``[N, M]`` matrices. Because every
projection is a diagonal scaling, the corrections are themselves diagonal scalings (a row vector
for :math:`\mathcal{C}_1`, a column vector for :math:`\mathcal{C}_2`, and none is needed for the
affine set :math:`\mathcal{C}_3`), so here the iterate is kept in factored log form
:math:`\log\boldsymbol\Gamma = -\mathbf{C}/\varepsilon + \boldsymbol\alpha \oplus
\boldsymbol\beta` with correction vectors :math:`\mathbf{q}_1 \in \mathbb{R}^N, \mathbf{q}_2 \in
\mathbb{R}^M`. One cycle, started from :math:`\boldsymbol\alpha = \log m -
\operatorname{LSE}(-\mathbf{C}/\varepsilon)`, :math:`\boldsymbol\beta = \mathbf{q}_1 =
\mathbf{q}_2 = 0`:

.. math::
    \mathbf{r} &= \min\big(\log\mathbf{a} - (\boldsymbol\alpha + \mathbf{q}_1)
    - \operatorname{LSE}_j(-C_{ij}/\varepsilon + \beta_j), 0\big), &
    \boldsymbol\alpha &\leftarrow \boldsymbol\alpha + \mathbf{q}_1 + \mathbf{r}, &
    \mathbf{q}_1 &\leftarrow -\mathbf{r},\\
    \mathbf{c} &= \min\big(\log\mathbf{b} - (\boldsymbol\beta + \mathbf{q}_2)
    - \operatorname{LSE}_i(-C_{ij}/\varepsilon + \alpha_i), 0\big), &
    \boldsymbol\beta &\leftarrow \boldsymbol\beta + \mathbf{q}_2 + \mathbf{c}, &
    \mathbf{q}_2 &\leftarrow -\mathbf{c},\\
    \delta &= \log m - \operatorname{LSE}_{ij}(\log\Gamma_{ij}), &
    \boldsymbol\alpha &\leftarrow \boldsymbol\alpha + \delta.

This is the same sequence of plans as ``ot.partial.entropic_partial_wasserstein`` (both of its
``method`` variants), with two log-sum-exp passes per cycle and no ``[N, M]`` state besides
``-C/ε``; all sums are log-sum-exps, so small ``ε`` cannot underflow.

**Stopping.** A problem stops after the first cycle whose change of the log-plan in sup-norm,
:math:`\Delta_k = \max_{ij}|\Delta\alpha_i + \Delta\beta_j|` (computed exactly from the vectors,
together with the mass correction :math:`|\delta|`), is below ``tol`` *and* whose estimated
distance to the fixed point, :math:`\Delta_k\rho/(1-\rho)` with the contraction rate
:math:`\rho = (\Delta_k/\Delta_{k-10})^{1/10}`, is below ``tol`` too; or after ``max_iter``
cycles (POT uses the Frobenius norm of the change alone, every 10th cycle). The second test
matters as ``m`` approaches ``min(sum(a), sum(b))``, where the cycles contract slowly: on
MADPOT-like 289 x 14 cosine costs at :math:`\varepsilon = 0.1`, ``m = 1`` and ``tol=1e-4`` the
change test alone stopped with the largest plan entry 1.5 % off (float32), the pair stops 0.02 %
off after about 2,000 cycles (so the default ``max_iter=1000`` warns there). Points of zero weight
(padding of variable-size batches) are allowed: their rows / columns of the plan are exactly 0
and the other entries follow the same cycles as the problem without them. Problems of a batch stop
independently and are frozen once converged. ``marginal_error`` reports the constraint violation
of the returned plan, :math:`\|(\boldsymbol\Gamma\mathbf{1} - \mathbf{a})_+\|_1 +
\|(\boldsymbol\Gamma^\top\mathbf{1} - \mathbf{b})_+\|_1 + |\mathbf{1}^\top\boldsymbol\Gamma\mathbf{1}
- m|`; the last step is the mass projection, so the plan carries mass :math:`m` to rounding and the
inequalities hold up to ``marginal_error``.

**Returned values.** ``cost`` is :math:`\langle\boldsymbol\Gamma, \mathbf{C}\rangle_F` (POT's
``log['partial_w_dist']``); ``objective`` is :math:`\langle\boldsymbol\Gamma,\mathbf{C}\rangle_F +
\varepsilon\sum\Gamma\log\Gamma = \varepsilon(\langle\boldsymbol\Gamma\mathbf{1},
\boldsymbol\alpha\rangle + \langle\boldsymbol\Gamma^\top\mathbf{1}, \boldsymbol\beta\rangle)`.

**Gradients.** ``gradient="unrolled"`` (default): autograd through the cycles (w.r.t. ``C``,
``a``, ``b`` and a tensor ``mass``). ``gradient="envelope"``: cycles without a graph; the plan is
detached, ``objective`` back-propagates :math:`\nabla_{\mathbf{C}} = \boldsymbol\Gamma^\star`
(Danskin: the feasible set does not depend on ``C``) and ``cost`` back-propagates the same
:math:`\boldsymbol\Gamma^\star` with the plan held fixed. Envelope mode differentiates ``C`` only.

Reference: J.-D. Benamou, G. Carlier, M. Cuturi, L. Nenna, G. Peyré, *Iterative Bregman projections
for regularized transportation problems*, SIAM J. Sci. Comput. 37(2), 2015.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from medot.errors import OTError
from medot.ot._inputs import (
    Gradient,
    as_batch,
    check_epsilon,
    check_finite,
    check_gradient_mode,
    check_iterations,
    check_plan,
    marginal,
    mass_tolerance,
    needs_unrolled_graph,
    raise_if_failed,
    resolve_tolerance,
    unbatch,
    unbatch_record,
    warn_unconverged,
)
from medot.ot._kernels import (
    batch_inner,
    exponentiate_plan,
    logsumexp_shifted,
    scaled_log_kernel,
    with_envelope_gradient,
)
from medot.ot._stopping import BatchStopping

RATE_WINDOW = 10
"""Cycles over which the contraction rate of the stopping test is measured."""

PARTIAL_FIX = (
    "increase max_iter or epsilon, or use float64 (a mass m close to min(sum(a), sum(b)) makes the "
    "Dykstra cycles contract slowly)."
)


@dataclass(frozen=True)
class PartialDiagnostics:
    """Per-problem record of a partial-OT solve (``[B]`` tensors, scalars when unbatched).

    ``iterations``: completed Dykstra cycles. ``marginal_error``: constraint violation of the
    returned plan (see module docstring). ``converged``: the stopping rule fired before
    ``max_iter``. ``transported_mass``: :math:`\\mathbf{1}^\\top\\boldsymbol\\Gamma\\mathbf{1}`.
    ``plan_change``: the last cycle's stopping quantity.
    """

    iterations: Tensor
    marginal_error: Tensor
    converged: Tensor
    transported_mass: Tensor
    plan_change: Tensor


@dataclass(frozen=True)
class PartialResult:
    """Plan ``[B, N, M]`` of mass ``m``, cost ``<Γ, C>``, entropic ``objective``, diagnostics."""

    plan: Tensor
    cost: Tensor
    objective: Tensor
    diagnostics: PartialDiagnostics


def entropic_partial_wasserstein(
    cost: Tensor,
    a: Tensor | None = None,
    b: Tensor | None = None,
    *,
    mass: float | Tensor,
    epsilon: float,
    max_iter: int = 1000,
    tol: float | None = None,
    gradient: Gradient = "unrolled",
) -> PartialResult:
    """Entropic partial OT moving mass ``mass`` between ``a`` and ``b`` under ``cost``.

    Args:
        cost: ``[B, N, M]`` or ``[N, M]`` cost matrices, float32 or float64, any device.
        a, b: non-negative weights ``[B, N]`` / ``[B, M]`` (or shared ``[N]`` / ``[M]``; ``None``
            means uniform, each summing to 1). They need not have equal mass; zero weights (e.g.
            padding) give zero rows / columns of the plan and do not change the other entries.
        mass: transported mass :math:`m`, a float or a ``[B]`` tensor, with
            ``0 < m <= min(sum(a), sum(b))`` (so ``m`` in ``(0, 1]`` for uniform weights).
        epsilon: entropic regularisation :math:`\\varepsilon > 0` (POT's ``reg``).
        max_iter: maximum number of Dykstra cycles (POT's ``numItermax``).
        tol: stopping threshold on the per-cycle log-plan change (``0``: run ``max_iter`` cycles;
            ``None``: 1e-6 in float64, 1e-4 in float32).
        gradient: ``"unrolled"`` or ``"envelope"`` (see the module docstring).

    Raises:
        OTError: invalid inputs (negative weights, infeasible ``mass``) or a non-finite plan.
    """
    check_gradient_mode(gradient)
    check_iterations(max_iter)
    eps = check_epsilon(epsilon)
    C, batched = as_batch(cost, "cost")
    tol = resolve_tolerance(tol, C.dtype)
    check_finite(C, "cost")
    batch, rows, cols = C.shape
    a_ = marginal(a, C, rows, "a")
    b_ = marginal(b, C, cols, "b")
    m = _transported_mass(mass, a_, b_)
    if gradient == "envelope" and any(t.requires_grad for t in (a_, b_, m)):
        raise OTError(
            "gradient='envelope' differentiates the cost matrix only; use gradient='unrolled' "
            "to differentiate w.r.t. a, b or mass."
        )

    record_graph = needs_unrolled_graph(gradient, C, a_, b_, m)
    with torch.set_grad_enabled(record_graph):
        source, a_in, b_in, m_in = (
            (C, a_, b_, m) if record_graph else (C.detach(), a_.detach(), b_.detach(), m.detach())
        )
        offset = source.detach().amin((-2, -1))  # same plans on C - min(C); see sinkhorn
        log_kernel = scaled_log_kernel(source, eps, offset)
        alpha, beta, iterations, converged, change, failed = _dykstra_cycles(
            log_kernel, a_in.log(), b_in.log(), m_in.log(), max_iter, tol
        )
        raise_if_failed(failed, iterations, "entropic_partial_wasserstein")
        plan = exponentiate_plan(log_kernel, alpha, beta)
        row_mass, column_mass = plan.sum(-1), plan.sum(-2)
        live_alpha = torch.where(torch.isfinite(alpha), alpha, 0.0)  # zero-weight rows: -inf
        live_beta = torch.where(torch.isfinite(beta), beta, 0.0)
        objective = eps * ((row_mass * live_alpha).sum(-1) + (column_mass * live_beta).sum(-1))
        objective = objective + offset * row_mass.sum(-1)
    transported = row_mass.detach().sum(-1)
    violation = (
        (row_mass.detach() - a_.detach()).clamp_min(0).sum(-1)
        + (column_mass.detach() - b_.detach()).clamp_min(0).sum(-1)
        + (transported - m.detach()).abs()
    )
    check_plan(violation, "entropic_partial_wasserstein")
    transport_cost = batch_inner(plan, C)
    if not record_graph:
        objective = with_envelope_gradient(objective, [(C, plan)])
    if tol > 0:
        warn_unconverged(converged, "entropic_partial_wasserstein", PARTIAL_FIX)
    diagnostics = PartialDiagnostics(
        iterations=iterations,
        marginal_error=violation,
        converged=converged,
        transported_mass=transported,
        plan_change=change,
    )
    return PartialResult(
        plan=unbatch(plan, batched),
        cost=unbatch(transport_cost, batched),
        objective=unbatch(objective, batched),
        diagnostics=unbatch_record(diagnostics, batched),
    )


def _transported_mass(mass: float | Tensor, a: Tensor, b: Tensor) -> Tensor:
    """``mass`` as a ``[B]`` tensor, checked against ``0 < m <= min(|a|_1, |b|_1)``."""
    batch = a.shape[0]
    m = torch.as_tensor(mass, dtype=a.dtype, device=a.device)
    if m.ndim > 1 or (m.ndim == 1 and m.shape[0] != batch):
        raise OTError(f"mass must be a float or a [{batch}] tensor, got shape {tuple(m.shape)}.")
    m = m.expand(batch)
    available = torch.minimum(a.detach().sum(-1), b.detach().sum(-1))
    too_large = m.detach() > available * (1 + mass_tolerance(a.dtype))
    invalid = ~torch.isfinite(m.detach()) | (m.detach() <= 0) | too_large
    if bool(invalid.any()):
        raise OTError(
            f"mass must satisfy 0 < m <= min(sum(a), sum(b)) = {float(available.min()):.6g}, "
            f"got {m.detach().tolist()}."
        )
    return m


def _dykstra_cycles(
    log_kernel: Tensor, log_a: Tensor, log_b: Tensor, log_m: Tensor, max_iter: int, tol: float
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    """Run the factored Dykstra cycles; returns ``alpha, beta, iterations, converged, change, failed``.

    Zero-weight rows / columns (``log_a`` or ``log_b`` ``-inf``, e.g. padding of a variable-size
    batch) keep ``alpha`` / ``beta`` at ``-inf`` and zero corrections, and are left out of the
    starting mass and of the stopping quantity, so a padded problem runs the same cycles as the
    problem without its padding.
    """
    batch, rows, cols = log_kernel.shape
    live_rows, live_cols = torch.isfinite(log_a), torch.isfinite(log_b)
    minus_inf = torch.tensor(float("-inf"), dtype=log_kernel.dtype, device=log_kernel.device)
    column_start = torch.where(live_cols, 0.0, minus_inf)
    row_totals = torch.where(live_rows, logsumexp_shifted(log_kernel, column_start, -1), minus_inf)
    total = torch.logsumexp(row_totals, -1)
    alpha = torch.where(live_rows, (log_m - total).unsqueeze(-1), minus_inf)
    beta = column_start
    q_rows, q_cols = torch.zeros_like(alpha), torch.zeros_like(beta)
    stopping = BatchStopping(torch.ones(batch, dtype=torch.bool, device=log_kernel.device), may_stop=tol > 0)
    change = torch.full((batch,), float("inf"), dtype=log_kernel.dtype, device=log_kernel.device)
    history: list[Tensor] = []
    completed = 0
    for completed in range(1, max_iter + 1):
        alpha_shifted = alpha + q_rows
        r = (log_a - logsumexp_shifted(log_kernel, beta, -1) - alpha_shifted).clamp(max=0)
        r = torch.where(live_rows, r, 0.0)
        alpha_rows = alpha_shifted + r
        beta_shifted = beta + q_cols
        log_columns = logsumexp_shifted(log_kernel, alpha_rows, -2) + beta_shifted
        c = torch.where(live_cols, (log_b - log_columns).clamp(max=0), 0.0)
        beta_new = beta_shifted + c
        delta = log_m - torch.logsumexp(log_columns + c, -1)
        alpha_new = alpha_rows + delta.unsqueeze(-1)
        measuring = tol > 0 or completed == max_iter
        if measuring:
            d_alpha, d_beta = alpha_new - alpha, beta_new - beta
            highest = torch.where(live_rows, d_alpha, minus_inf).amax(-1) + torch.where(
                live_cols, d_beta, minus_inf
            ).amax(-1)
            lowest = torch.where(live_rows, d_alpha, -minus_inf).amin(-1) + torch.where(
                live_cols, d_beta, -minus_inf
            ).amin(-1)
            cycle_change = torch.maximum(highest.abs(), lowest.abs()).maximum(delta.abs())
            change = stopping.keep(cycle_change.detach(), change)
        alpha, beta = stopping.keep(alpha_new, alpha), stopping.keep(beta_new, beta)
        q_rows, q_cols = stopping.keep(-r, q_rows), stopping.keep(-c, q_cols)
        if tol > 0:
            met = _tail_below(cycle_change.detach(), history, tol)
            if stopping.stop(met, completed, failed=~torch.isfinite(cycle_change.detach())):
                break
    iterations, converged = stopping.finish(completed)
    return alpha, beta, iterations, converged, change, stopping.failed


def _tail_below(change: Tensor, history: list[Tensor], tol: float) -> Tensor:
    """Whether the distance left to the fixed point, estimated from the last cycles, is below ``tol``.

    With a per-cycle contraction rate :math:`\\rho` (measured over :data:`RATE_WINDOW` cycles as
    :math:`(\\Delta_k / \\Delta_{k-w})^{1/w}`), the remaining change is about
    :math:`\\Delta_k\\,\\rho / (1 - \\rho)`. A bare :math:`\\Delta_k <` ``tol`` test stops far from the
    solution when :math:`\\rho \\to 1`, which happens as ``m`` approaches ``min(sum(a), sum(b))``
    (float32 at m = 1: largest plan entry 1.5 % off at ``tol=1e-4``). Both must hold.
    """
    history.append(change)
    if len(history) <= RATE_WINDOW:
        return change == 0
    previous = history.pop(0)
    rate = (change / previous.clamp_min(torch.finfo(change.dtype).tiny)).pow(1.0 / RATE_WINDOW)
    tail = torch.where(rate < 1, change * rate / (1 - rate).clamp_min(torch.finfo(change.dtype).tiny), change * float("inf"))
    tail = torch.where(change == 0, 0.0, tail)
    return (change < tol) & (tail < tol)
