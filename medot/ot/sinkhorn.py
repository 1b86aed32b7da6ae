r"""Balanced entropic optimal transport: batched log-domain Sinkhorn.

Problem (Cuturi 2013; Peyré & Cuturi 2019, Eq. 4.2), for each problem of a batch,

.. math::
    \mathrm{OT}_\varepsilon(\mathbf{a}, \mathbf{b}, \mathbf{C}) =
    \min_{\boldsymbol\Gamma \in U(\mathbf{a}, \mathbf{b})}
    \langle \boldsymbol\Gamma, \mathbf{C} \rangle_F
    + \varepsilon\,\mathrm{KL}(\boldsymbol\Gamma \,\|\, \mathbf{a} \otimes \mathbf{b}),
    \qquad U(\mathbf{a}, \mathbf{b}) = \{\boldsymbol\Gamma \ge 0 :
    \boldsymbol\Gamma \mathbf{1} = \mathbf{a},\ \boldsymbol\Gamma^\top \mathbf{1} = \mathbf{b}\},

with :math:`\mathrm{KL}(\boldsymbol\Gamma\|\mathbf{K}) = \sum_{ij} \Gamma_{ij}\log(\Gamma_{ij}/K_{ij})
- \Gamma_{ij} + K_{ij}`. The minimiser is the same plan as POT's ``ot.sinkhorn`` (whose entropy is
:math:`\sum \Gamma \log \Gamma`; the two objectives differ by a constant on :math:`U`). It reads
:math:`\Gamma_{ij} = a_i b_j \exp((f_i + g_j - C_{ij})/\varepsilon)` for dual potentials
:math:`(\mathbf{f}, \mathbf{g})` in cost units, computed by the log-domain Sinkhorn updates
(Peyré & Cuturi 2019, Eq. 4.43; Feydy et al. 2019, Eq. 7)

.. math::
    g_j \leftarrow -\varepsilon \operatorname{LSE}_i\big(\log a_i + (f_i - C_{ij})/\varepsilon\big),
    \qquad
    f_i \leftarrow -\varepsilon \operatorname{LSE}_j\big(\log b_j + (g_j - C_{ij})/\varepsilon\big),

the same sequence of plans as ``ot.sinkhorn(a, b, C, reg, method='sinkhorn_log')`` (``g`` then
``f``) when started from POT's point :math:`\log u = 0`, i.e. ``init=(-epsilon * log(a), 0)``; the
default start :math:`\mathbf{f} = \mathbf{g} = 0` coincides with it for uniform ``a``. Nothing
is exponentiated before the final plan, so no kernel under/overflow occurs for any
:math:`\varepsilon` or cost range (e.g. :math:`\varepsilon = 10^{-3}` on costs in ``[0, 100]``).

**Memory and speed.** Without a graph to record, the solver allocates one ``[B, N, M]`` buffer,
:math:`-\mathbf{C}/\varepsilon`, which becomes the returned plan in place, plus one reused
block-sized workspace (:mod:`medot.ot._kernels`). For PRADOT (12,544 x 3,136, float32) that is
157 MiB on top of the cost matrix. On the CPU an iteration then exponentiates the kernel once, not
twice (:func:`~medot.ot._kernels.scaling_pair`: with :math:`E = \exp(\mathbf{K} + \phi \oplus
\psi)`, the ``f`` update is :math:`\phi \leftarrow \phi - \log E\mathbf{b}` and the next ``g``
update :math:`\psi \leftarrow \psi - \log E^\top(\mathbf{a} / E\mathbf{b})`, the same iterates
as the two log-sum-exp reductions); it falls back to the reductions for any iteration whose
scaling sums leave :math:`[\text{tiny}^{1/8}, \text{tiny}^{-1/8}]` (poor starts at small
:math:`\varepsilon`). Without a graph, exponentials that would fall within 2**40 of float's
subnormal range (float32: below ~1e-26 of a row's largest term) are set to exactly 0 (subnormal
arithmetic is many times slower on x86; these terms are below the sums' rounding). One exponentiation per entry and iteration is
the floor of a log-domain solver; ``benchmarks/ot_threads_bench.py`` times the solve against it.
With a graph to record, or off the CPU, the two reductions are used.

**Stopping.** After each ``f`` update the rows are exact, :math:`\boldsymbol\Gamma\mathbf{1} =
\mathbf{a}`; the column error :math:`\|\boldsymbol\Gamma^\top\mathbf{1} - \mathbf{b}\|_1` comes for
free from the next ``g`` reduction and is evaluated after every update. A problem stops at the
first update where it is ``< tol`` (POT's rule, which POT evaluates every 10th update; ``tol=0``
runs exactly ``max_iter`` updates), or after ``max_iter`` updates. Problems of a batch stop
independently and are frozen once converged, so a batched solve equals a loop of unbatched ones.
The reported ``marginal_error`` is :math:`\|\boldsymbol\Gamma\mathbf{1} - \mathbf{a}\|_1 +
\|\boldsymbol\Gamma^\top\mathbf{1} - \mathbf{b}\|_1` of the returned plan. Floating point bounds it
from below by about ``max|C| / epsilon * finfo(dtype).eps`` (float32 with ``max|C|/epsilon``
around ``1e5``: ``1e-2``; use float64 if marginals must be tight there), and the number of
iterations needed grows with ``max|C| / epsilon``: at ``epsilon=1e-3`` on costs in ``[0, 100]``
the iterates stay finite with exact rows, but columns may need many thousands of iterations
unless the optimal plan is sharp. A solve with ``tol > 0`` that reaches ``max_iter`` with some
problem above ``tol`` issues :class:`~medot.errors.OTConvergenceWarning` (once per call site, as
POT warns); ``diagnostics.converged`` says which. Iterates that turn non-finite stop that problem
at once and raise :class:`~medot.errors.OTError`; non-finite ``init`` potentials are refused.

**Offset.** The iterations run on :math:`\mathbf{C} - \min_{ij} C_{ij}` (per problem). A constant
added to the costs is absorbed by the potentials and leaves every iterate's plan unchanged, but in
float32 an offset eats the resolution of :math:`\mathbf{C}/\varepsilon`: on 60 x 40 costs ``1000 + U``
(:math:`U \sim \mathcal{U}[0, 1)`, :math:`\varepsilon = 0.01`) the unshifted float32 solve ran its
1,000 iterations for a plan 0.39 % off (L1), the shifted one converges in the 50 iterations ``U``
itself needs, 0.05 % off (the rounding of ``1000 + U`` to float32). ``f`` is reported in the units
of the given ``C``.

**Returned values.** ``cost`` is the transport cost :math:`\langle \boldsymbol\Gamma, \mathbf{C}
\rangle_F` (what ``ot.sinkhorn2`` returns); ``objective`` is the entropic value
:math:`\langle \boldsymbol\Gamma, \mathbf{C} \rangle_F + \varepsilon\,\mathrm{KL}(\boldsymbol\Gamma
\| \mathbf{a}\otimes\mathbf{b}) = \langle \boldsymbol\Gamma\mathbf{1}, \mathbf{f}\rangle +
\langle \boldsymbol\Gamma^\top\mathbf{1}, \mathbf{g}\rangle - \varepsilon(\mathbf{1}^\top
\boldsymbol\Gamma \mathbf{1} - \|\mathbf{a}\|_1\|\mathbf{b}\|_1)`, evaluated at the returned plan.

**Gradients.** ``gradient="unrolled"`` (default) lets autograd record the log-domain iterations:
plan, cost and objective are differentiable w.r.t. ``C``, ``a`` and ``b`` and the gradient is exact
for the computed iterate, at a memory cost of about two ``[B, N, M]`` tensors per iteration.
``gradient="envelope"`` runs the iterations without a graph (see **Memory**) and attaches
Danskin's gradients at the solution: :math:`\nabla_{\mathbf{C}}\,\mathrm{objective} =
\boldsymbol\Gamma`, :math:`\nabla_{\mathbf{a}} = \mathbf{f}`, :math:`\nabla_{\mathbf{b}} =
\mathbf{g}` (exact at convergence, up to an additive constant that mass-preserving perturbations
of the marginals do not see; Feydy et al. 2019, Prop. 2). In that mode the plan is returned
detached and ``cost`` back-propagates :math:`\boldsymbol\Gamma` into ``C`` (the plan is held
fixed), which is the envelope gradient of ``objective``. Use it for large problems
(PRADOT: 12,544 x 3,136) where unrolling 100 iterations would not fit in memory.

References: M. Cuturi, *Sinkhorn distances*, NeurIPS 2013; G. Peyré & M. Cuturi, *Computational
Optimal Transport*, 2019; J. Feydy et al., *Interpolating between OT and MMD using Sinkhorn
divergences*, AISTATS 2019.
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
    check_equal_mass,
    check_finite,
    check_gradient_mode,
    check_init,
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
from medot.ot import _kernels
from medot.ot._kernels import (
    batch_inner,
    exponentiate_plan,
    logsumexp_shifted,
    scaled_log_kernel,
    scaling_pair,
    with_envelope_gradient,
)
from medot.ot._stopping import BatchStopping

@dataclass(frozen=True)
class SinkhornDiagnostics:
    """Per-problem record of a Sinkhorn solve (``[B]`` tensors, scalars when unbatched).

    ``iterations``: completed ``(g, f)`` update pairs. ``marginal_error``: ``||Γ1 - a||_1 +
    ||Γᵀ1 - b||_1`` of the returned plan. ``converged``: the column error reached ``tol`` before
    ``max_iter``. ``f``, ``g``: dual potentials in cost units (``[B, N]``, ``[B, M]``, detached),
    usable as ``init`` to warm-start a nearby problem.
    """

    iterations: Tensor
    marginal_error: Tensor
    converged: Tensor
    f: Tensor
    g: Tensor


@dataclass(frozen=True)
class SinkhornResult:
    """Plan ``[B, N, M]``, transport cost ``<Γ, C>``, entropic ``objective`` and diagnostics."""

    plan: Tensor
    cost: Tensor
    objective: Tensor
    diagnostics: SinkhornDiagnostics


@dataclass(frozen=True)
class SinkhornState:
    """Potentials and per-problem bookkeeping returned by :func:`sinkhorn_iterations`."""

    f: Tensor
    g: Tensor
    iterations: Tensor
    converged: Tensor
    failed: Tensor


SINKHORN_FIX = "increase max_iter or epsilon, or use float64 if tol is near float32's resolution."


def sinkhorn_iterations(
    log_kernel: Tensor,
    log_a: Tensor,
    log_b: Tensor,
    epsilon: float,
    f: Tensor,
    g: Tensor,
    max_iter: int,
    tol: float,
    active: Tensor | None = None,
) -> SinkhornState:
    """Run the log-domain updates on ``log_kernel = -C / epsilon`` from potentials ``(f, g)``.

    ``active`` (``[B]`` bool, default all) marks the problems to iterate; the others keep their
    potentials. After every update (when ``tol > 0``) the column error is read off the next ``g``
    reduction, which costs a few ``[B, M]`` kernels and no extra pass, and problems below ``tol``
    are frozen (:class:`~medot.ot._stopping.BatchStopping`); a problem whose column error comes
    out non-finite is frozen too and flagged ``failed`` (instead of running out the budget on NaN).
    This is the engine of :func:`sinkhorn`
    and of the inner loop of the entropic FGW solver, which calls it directly to warm-start across
    outer iterations. Internally the potentials are kept in units of ``epsilon``.
    """
    if active is None:
        active = torch.ones(log_kernel.shape[0], dtype=torch.bool, device=log_kernel.device)
    stopping = BatchStopping(active, may_stop=tol > 0)
    phi, psi = f / epsilon, g / epsilon
    if _fusable(log_kernel, log_a, log_b, phi, psi):
        loop = _column_major_loop if log_kernel.transpose(-1, -2).is_contiguous() else _row_major_loop
        phi, psi, completed = loop(log_kernel, log_a, log_b, phi, psi, max_iter, tol, stopping)
    else:
        phi, psi, completed = _log_sum_exp_loop(log_kernel, log_a, log_b, phi, psi, max_iter, tol, stopping)
    iterations, converged = stopping.finish(completed)
    return SinkhornState(
        f=phi * epsilon, g=psi * epsilon, iterations=iterations, converged=converged, failed=stopping.failed
    )


def _row_update(log_kernel: Tensor, log_b: Tensor, psi: Tensor) -> Tensor:
    """phi = -LSE_j(K + log b + psi) (the ``f`` update, in units of epsilon)."""
    return -logsumexp_shifted(log_kernel, log_b + psi, dim=-1)


def _column_update(log_kernel: Tensor, log_a: Tensor, phi: Tensor) -> Tensor:
    """psi = -LSE_i(K + log a + phi) (the ``g`` update, in units of epsilon)."""
    return -logsumexp_shifted(log_kernel, log_a + phi, dim=-2)


def _check_columns(stopping: BatchStopping, b: Tensor, ratio, completed: int, tol: float) -> bool:
    """Column error ``||b * ratio - b||_1`` (``ratio``: the plan's column sums over ``b``, or a
    callable giving them, evaluated only when the test runs); True to stop."""
    if tol <= 0 or completed == 0:
        return False
    column_error = (b * (ratio() if callable(ratio) else ratio) - b).abs().sum(-1)
    return stopping.stop(column_error < tol, completed, failed=~torch.isfinite(column_error))


def _log_sum_exp_loop(log_kernel, log_a, log_b, phi, psi, max_iter, tol, stopping):
    """Two log-sum-exp reductions per iteration (recorded by autograd when it is on; off the CPU)."""
    b = log_b.exp()
    completed = 0
    for completed in range(max_iter):
        psi_new = _column_update(log_kernel, log_a, phi)
        if _check_columns(stopping, b, lambda: torch.exp(psi - psi_new), completed, tol):
            break
        psi = stopping.keep(psi_new, psi)
        phi = stopping.keep(_row_update(log_kernel, log_b, psi), phi)
    else:
        completed = max_iter
    return phi, psi, completed


def _row_major_loop(log_kernel, log_a, log_b, phi, psi, max_iter, tol, stopping):
    """One exponentiation per iteration (:func:`~medot.ot._kernels.scaling_pair`, ``f`` then the
    next ``g``), on a row-major kernel; the same iterates, iteration counts and stopping as
    :func:`_log_sum_exp_loop`. The first ``g`` update, and any pair whose scaling sums leave the
    safe range, take the log-sum-exp reductions."""
    a, b = log_a.exp(), log_b.exp()
    psi_new = _column_update(log_kernel, log_a, phi)
    ratio = torch.exp(psi - psi_new)
    completed = 0
    for completed in range(max_iter):
        if _check_columns(stopping, b, ratio, completed, tol):
            break
        psi = stopping.keep(psi_new, psi)
        pair = scaling_pair(log_kernel, phi, psi, a, b, stopping.active)
        if pair is None:
            phi_new = _row_update(log_kernel, log_b, psi)
            psi_new = _column_update(log_kernel, log_a, phi_new)
            ratio = torch.exp(psi - psi_new)
        else:
            phi_new, psi_new, _, ratio = pair
        phi = stopping.keep(phi_new, phi)
    else:
        completed = max_iter
    return phi, psi, completed


def _column_major_loop(log_kernel, log_a, log_b, phi, psi, max_iter, tol, stopping):
    """As :func:`_row_major_loop` for a column-major kernel: each pair is ``g`` then ``f``, blocked
    over the contiguous transpose."""
    a, b = log_a.exp(), log_b.exp()
    transposed = log_kernel.transpose(-1, -2)
    completed = 0
    for completed in range(max_iter):
        pair = scaling_pair(transposed, psi, phi, b, a, stopping.active)
        if pair is None:
            psi_new, phi_new = _column_update(log_kernel, log_a, phi), None
            ratio = torch.exp(psi - psi_new)
        else:
            psi_new, phi_new, ratio, _ = pair
        if _check_columns(stopping, b, ratio, completed, tol):
            break
        psi = stopping.keep(psi_new, psi)
        if phi_new is None:
            phi_new = _row_update(log_kernel, log_b, psi)
        phi = stopping.keep(phi_new, phi)
    else:
        completed = max_iter
    return phi, psi, completed


def _fusable(log_kernel: Tensor, *vectors: Tensor) -> bool:
    """The one-exponentiation loops: CPU (their range test is a sync), nothing to record, dense
    storage, and at least :data:`~medot.ot._kernels.SCALING_MIN_ELEMENTS` kernel entries (below
    that, e.g. K-MaT's 6 x 6 FGW, per-op overhead dominates and the reductions are faster)."""
    if log_kernel.device.type != "cpu" or log_kernel.numel() < _kernels.SCALING_MIN_ELEMENTS:
        return False
    if torch.is_grad_enabled() and any(t.requires_grad for t in (log_kernel, *vectors)):
        return False
    return log_kernel.is_contiguous() or log_kernel.transpose(-1, -2).is_contiguous()


def sinkhorn(
    cost: Tensor,
    a: Tensor | None = None,
    b: Tensor | None = None,
    *,
    epsilon: float,
    max_iter: int = 1000,
    tol: float | None = None,
    gradient: Gradient = "unrolled",
    init: tuple[Tensor, Tensor] | None = None,
) -> SinkhornResult:
    """Solve balanced entropic OT for ``cost`` ``[B, N, M]`` (or ``[N, M]``) in the log domain.

    Args:
        cost: cost matrices :math:`\\mathbf{C}`, float32 or float64, any device.
        a, b: source ``[B, N]`` / target ``[B, M]`` weights (a shared ``[N]`` / ``[M]`` vector is
            broadcast; ``None`` means uniform). Zero weights are allowed; ``sum(a) == sum(b)``.
        epsilon: entropic regularisation :math:`\\varepsilon > 0`, in cost units.
        max_iter: maximum number of ``(g, f)`` update pairs.
        tol: stop when :math:`\\|\\boldsymbol\\Gamma^\\top\\mathbf{1} - \\mathbf{b}\\|_1 <` ``tol``
            (``0`` runs exactly ``max_iter`` updates; ``None``: 1e-6 in float64, 1e-4 in float32).
        gradient: ``"unrolled"`` or ``"envelope"`` (see the module docstring).
        init: warm-start potentials ``(f, g)`` in cost units, e.g. a previous result's
            ``diagnostics.f`` / ``diagnostics.g``.

    Returns:
        :class:`SinkhornResult`; outputs lose the batch dimension if ``cost`` had none.

    Raises:
        OTError: invalid inputs, or a numerically failed plan: non-finite, or rows (exact after
            every ``f`` update) misplacing over 10% of the mass. The log domain only fails when
            ``cost / epsilon`` exceeds what the dtype resolves (float32 near ``1e8`` and beyond).
    """
    check_gradient_mode(gradient)
    check_iterations(max_iter)
    eps = check_epsilon(epsilon)
    C, batched = as_batch(cost, "cost")
    tol = resolve_tolerance(tol, C.dtype)
    check_finite(C, "cost")
    _, rows, cols = C.shape
    a_ = marginal(a, C, rows, "a")
    b_ = marginal(b, C, cols, "b")
    check_equal_mass(a_, b_)
    # The plan is invariant to a constant added to C (the potentials absorb it); iterating on
    # C - min(C) keeps an offset from costing float32 its resolution. f is reported in C's units.
    offset = C.detach().amin((-2, -1))
    f0, g0 = _initial_potentials(init, C)
    if init is not None:  # the cold start f = 0 is the same plan in either unit (a constant)
        f0 = f0 - offset.unsqueeze(-1)

    record_graph = needs_unrolled_graph(gradient, C, a_, b_)
    with torch.set_grad_enabled(record_graph):
        source = C if record_graph else C.detach()
        log_a = (a_ if record_graph else a_.detach()).log()
        log_b = (b_ if record_graph else b_.detach()).log()
        log_kernel = scaled_log_kernel(source, eps, offset)
        state = sinkhorn_iterations(log_kernel, log_a, log_b, eps, f0, g0, max_iter, tol)
        raise_if_failed(state.failed, state.iterations, "sinkhorn")
        plan = exponentiate_plan(log_kernel, log_a + state.f / eps, log_b + state.g / eps)
        f = state.f + offset.unsqueeze(-1)
        row_mass, column_mass = plan.sum(-1), plan.sum(-2)
        objective = (
            (row_mass * f).sum(-1)
            + (column_mass * state.g).sum(-1)
            - eps * (row_mass.sum(-1) - a_.sum(-1) * b_.sum(-1))
        )
    row_error = (row_mass - a_).detach().abs().sum(-1)
    marginal_error = row_error + (column_mass - b_).detach().abs().sum(-1)
    check_plan(marginal_error, "sinkhorn")
    check_row_mass(row_error, a_.detach().sum(-1), "sinkhorn")
    transport_cost = batch_inner(plan, C)
    if not record_graph:
        objective = with_envelope_gradient(objective, [(C, plan), (a_, f), (b_, state.g)])
    if tol > 0:
        warn_unconverged(state.converged, "sinkhorn", SINKHORN_FIX)
    diagnostics = SinkhornDiagnostics(
        iterations=state.iterations,
        marginal_error=marginal_error,
        converged=state.converged,
        f=f.detach(),
        g=state.g.detach(),
    )
    return SinkhornResult(
        plan=unbatch(plan, batched),
        cost=unbatch(transport_cost, batched),
        objective=unbatch(objective, batched),
        diagnostics=unbatch_record(diagnostics, batched),
    )


def _initial_potentials(init: tuple[Tensor, Tensor] | None, C: Tensor) -> tuple[Tensor, Tensor]:
    batch, rows, cols = C.shape
    if init is None:
        return C.new_zeros(batch, rows), C.new_zeros(batch, cols)
    f, g = (t.detach().to(dtype=C.dtype, device=C.device) for t in init)
    check_init((f, g))
    if f.shape not in ((rows,), (batch, rows)) or g.shape not in ((cols,), (batch, cols)):
        raise OTError(
            f"init potentials must have shapes [B, N]=[{batch}, {rows}] and [B, M]=[{batch}, {cols}], "
            f"got {tuple(f.shape)} and {tuple(g.shape)}."
        )
    return f.expand(batch, rows), g.expand(batch, cols)

