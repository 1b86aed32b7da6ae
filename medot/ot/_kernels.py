"""Memory-aware tensor kernels shared by the log-domain solvers.

The Sinkhorn-type solvers spend their time in one operation, the "soft-min" reduction

.. math::
    \\operatorname{LSE}_j(\\mathbf{K}_{ij} + s_j) = \\log \\sum_j \\exp(\\mathbf{K}_{ij} + s_j)

of a log-kernel :math:`\\mathbf{K} = -\\mathbf{C}/\\varepsilon` shifted by a dual vector, over rows or
columns. When autograd has to record it, :func:`torch.logsumexp` is used as is. Otherwise the
reduction is computed in place in one temporary (fewer kernels than :func:`torch.logsumexp`, which
matters for the many tiny problems of FGW) and, for large row-major kernels, block of rows by
block of rows, so that at most one block-sized temporary exists at a time, capping the extra
memory far below one ``[N, M]`` matrix.

**Block size on CPU.** Each block costs about five torch kernels, and each kernel is one parallel
region when torch runs several threads. Cache-sized blocks (128 Ki elements) made a PRADOT-sized
reduction (12,544 x 3,136) about 1,500 small parallel regions: fine on an idle CPU, but on a
shared one every region waits for its slowest thread, and 2 threads took 9-216 s per 10
iterations against 3.5 s for 1 thread. So at several threads a CPU pass uses at most
:data:`_MAX_CPU_BLOCKS` blocks (at least 128 Ki elements each): ~40 parallel regions per
reduction, and a temporary of at most 1/8 of the kernel (20 MiB for PRADOT). At one thread there
are no parallel regions, and :func:`scaling_pair` keeps its cache-sized blocks (its five passes
over a block then hit the cache).

:func:`scaling_pair` is the Sinkhorn solver's CPU fast path: one exponentiation serves two
half-updates, where two log-sum-exp reductions need two exponentiations and two max passes.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

_BLOCK_ELEMENTS_CPU = 1 << 17
_MAX_CPU_BLOCKS = 8
_BLOCK_ELEMENTS_ACCELERATOR = 1 << 25
_SHORT_AXIS = 256
SCALING_MIN_ELEMENTS = 1 << 15
"""Kernels (``B * N * M`` entries) below this use the two reductions, not :func:`scaling_pair`:
on 6 x 6 FGW problems the extra small ops made a loop of envelope solves 1.5x slower."""


def scaled_log_kernel(cost: Tensor, epsilon: float, shift: Tensor | None = None) -> Tensor:
    """:math:`-(\\mathbf{C} - s)/\\varepsilon`, stored so that both reductions run along a long axis.

    ``shift`` (``[B]``, default 0) is subtracted from each problem's costs first; solvers pass
    :math:`s = \\min_{ij} C_{ij}`, which leaves the plan unchanged (a constant is absorbed by the
    potentials) but keeps an offset (e.g. costs ``1000 + U``) from eating float32's resolution.
    Without a graph to record, one ``[B, N, M]`` tensor is allocated.

    Torch's CPU reductions are several times slower when the innermost (contiguous) axis is short.
    When the target side is short (fewer than 256 points, and fewer than the source side, e.g. 14
    prompts against 289 patch tokens) the kernel is stored column-major, as the transpose of a
    contiguous ``[B, M, N]`` tensor; shapes, values and the order of every operation are unchanged.
    """
    rows, cols = cost.shape[-2:]
    column_major = cols < rows and cols < _SHORT_AXIS
    source = cost.transpose(-1, -2) if column_major else cost
    if shift is None:
        scaled = source / -epsilon
    elif torch.is_grad_enabled() and cost.requires_grad:
        scaled = (source - shift.view(-1, 1, 1)) / -epsilon
    else:
        scaled = torch.sub(source, shift.view(-1, 1, 1)).div_(-epsilon)
    if column_major:
        return scaled.contiguous().transpose(-1, -2)
    return scaled


def logsumexp_shifted(log_kernel: Tensor, shift: Tensor, dim: int) -> Tensor:
    """Log-sum-exp of ``log_kernel + shift`` over rows (``dim=-2``) or columns (``dim=-1``).

    ``log_kernel`` is ``[B, N, M]``. For ``dim=-1`` the shift is a column vector ``[B, M]`` and the
    result is ``[B, N]``; for ``dim=-2`` the shift is a row vector ``[B, N]`` and the result is
    ``[B, M]``. Entries equal to ``-inf`` (zero-weight points) are handled exactly.
    """
    if dim not in (-1, -2):
        raise ValueError(f"dim must be -1 or -2, got {dim}")
    broadcast = shift.unsqueeze(-2) if dim == -1 else shift.unsqueeze(-1)
    if torch.is_grad_enabled() and (log_kernel.requires_grad or shift.requires_grad):
        return torch.logsumexp(log_kernel + broadcast, dim=dim)
    batch, rows, cols = log_kernel.shape
    if log_kernel.device.type == "cpu":
        budget = max(_BLOCK_ELEMENTS_CPU, -(-log_kernel.numel() // _MAX_CPU_BLOCKS))
    else:
        budget = _BLOCK_ELEMENTS_ACCELERATOR
    block_rows = max(1, budget // max(1, batch * cols))
    with torch.no_grad():
        if block_rows >= rows or not log_kernel.is_contiguous():
            return _logsumexp_in_place(log_kernel + broadcast, dim)
        pieces = []
        for start in range(0, rows, block_rows):
            stop = min(start + block_rows, rows)
            row_shift = broadcast if dim == -1 else broadcast[:, start:stop]
            pieces.append(_logsumexp_in_place(log_kernel[:, start:stop] + row_shift, dim))
        if dim == -1:
            return torch.cat(pieces, dim=1)
        return _logsumexp_in_place(torch.stack(pieces, dim=1), 1)


def _logsumexp_in_place(values: Tensor, dim: int) -> Tensor:
    """Stable log-sum-exp that overwrites the temporary ``values`` (fewer kernels than torch's)."""
    peak = values.amax(dim=dim, keepdim=True).clamp_(min=torch.finfo(values.dtype).min)
    flushed = torch.threshold_(values.sub_(peak), _exponent_floor(values.dtype), -math.inf)
    return flushed.exp_().sum(dim=dim).log_().add_(peak.squeeze(dim))


def exponentiate_plan(log_kernel: Tensor, row_shift: Tensor, column_shift: Tensor) -> Tensor:
    """Contiguous ``exp(log_kernel + row_shift ⊕ column_shift)`` for ``[B, N]`` / ``[B, M]`` shifts.

    Without a graph to record, the result overwrites ``log_kernel`` (which must be a solver-owned
    buffer), so materialising the plan costs no extra ``[B, N, M]`` allocation.
    """
    rows, columns = row_shift.unsqueeze(-1), column_shift.unsqueeze(-2)
    inputs = (log_kernel, row_shift, column_shift)
    if torch.is_grad_enabled() and any(t.requires_grad for t in inputs):
        return torch.exp(log_kernel + rows + columns).contiguous()
    with torch.no_grad():
        flushed = torch.threshold_(log_kernel.add_(rows).add_(columns), _exponent_floor(log_kernel.dtype), -math.inf)
        return flushed.exp_().contiguous()


def batch_inner(plan: Tensor, matrix: Tensor) -> Tensor:
    """Frobenius products ``<plan_b, matrix_b>`` for every problem ``b`` of ``[B, N, M]`` inputs."""
    return torch.einsum("bij,bij->b", plan, matrix)


def with_envelope_gradient(value: Tensor, pairs: list[tuple[Tensor, Tensor]]) -> Tensor:
    """Return ``value`` (detached) carrying the gradient ``sum_k <grad_k, d input_k>``.

    ``pairs`` holds ``(input, gradient)`` with ``gradient`` of ``input``'s shape ``[B, ...]``. The
    result equals ``value`` numerically and back-propagates ``gradient`` into ``input``: this is
    how the envelope-mode solvers attach Danskin gradients computed from the optimal plan and
    potentials without recording the iterations.
    """
    linear = value.detach()
    for tensor, gradient in pairs:
        if tensor.requires_grad:
            term = torch.einsum("bk,bk->b", gradient.detach().flatten(1), tensor.flatten(1))
            linear = linear + term - term.detach()
    return linear


def scaling_pair(
    log_kernel: Tensor, x: Tensor, y: Tensor, x_weights: Tensor, y_weights: Tensor, active: Tensor | None = None
) -> tuple[Tensor, Tensor, Tensor, Tensor] | None:
    r"""Two Sinkhorn half-updates from one exponentiation of a row-major ``[B, P, Q]`` log-kernel.

    With :math:`E_{pq} = \exp(K_{pq} + x_p + y_q)` (the plan divided by the weights),

    .. math::
        r = E\,\mathbf{w}^y,\quad x' = x - \log r,\qquad
        c = E^\top (\mathbf{w}^x / r),\quad y' = y - \log c,

    are the exact log-domain updates :math:`x'_p = -\operatorname{LSE}_q(K_{pq} + \log w^y_q + y_q)`
    and :math:`y'_q = -\operatorname{LSE}_p(K_{pq} + \log w^x_p + x'_p)`: the second reduction
    re-uses the first one's exponentials, scaled by :math:`1/r` (the first update is a row
    scaling of the same matrix), so an iteration costs one ``exp`` pass instead of two, and no
    max pass. Returns ``(x', y', r, c)``: :math:`\mathbf{w}^x \odot r` are the row sums of the plan
    at :math:`(x, y)`, :math:`\mathbf{w}^y \odot c` its column sums at :math:`(x', y)`. Rows are processed block by block (complete row sums per block), with one
    reused block-sized workspace. Zero weights are exact (those terms drop out of the sums).

    The scaled form is only safe while :math:`r` and :math:`c` stay near 1 (they are ratios of
    marginals, 1 at the fixed point); when some entry leaves :math:`[\tau, 1/\tau]`,
    :math:`\tau = \text{tiny}^{1/8}` (e.g. early iterations from a poor start, where whole rows of
    :math:`E` may under- or overflow), ``None`` is returned and the caller takes the two
    log-sum-exp reductions instead (only problems marked ``active``, ``[B]`` bool, are tested: a
    frozen problem's values are discarded by the caller). Exponents are clamped at :func:`_exponent_floor` (no subnormal
    arithmetic, and no ``exp(-inf)``, which is several times slower than a normal ``exp`` here;
    weights, including zero ones, enter as multipliers). Not differentiable (no graph is recorded).
    """
    batch, rows, cols = log_kernel.shape
    budget = _block_budget(log_kernel)
    block_rows = min(rows, max(1, budget // max(1, batch * cols)))
    workspace = log_kernel.new_empty(batch, block_rows, cols)
    column_shift, row_weights, column_weights = y.unsqueeze(-2), x_weights, y_weights.unsqueeze(-1)
    row_sums, column_sums = [], None
    floor = _exponent_floor(log_kernel.dtype)
    with torch.no_grad():
        for start in range(0, rows, block_rows):
            stop = min(start + block_rows, rows)
            block = workspace[:, : stop - start]
            torch.add(log_kernel[:, start:stop], column_shift, out=block)
            block.add_(x[:, start:stop].unsqueeze(-1)).clamp_(min=floor).exp_()
            r = torch.bmm(block, column_weights).squeeze(-1)
            row_sums.append(r)
            scaled = (row_weights[:, start:stop] / r).unsqueeze(-2)
            part = torch.bmm(scaled, block).squeeze(-2)
            column_sums = part if column_sums is None else column_sums.add_(part)
        r = torch.cat(row_sums, dim=1) if len(row_sums) > 1 else row_sums[0]
        low = torch.finfo(log_kernel.dtype).tiny ** 0.125
        safe = ((r >= low) & (r <= 1.0 / low)).all(-1) & ((column_sums >= low) & (column_sums <= 1.0 / low)).all(-1)
        if not bool((safe if active is None else safe | ~active).all()):
            return None
        return x - r.log(), y - column_sums.log(), r, column_sums


def _exponent_floor(dtype: torch.dtype) -> float:
    """Exponents at or below this are set to ``-inf`` before ``exp`` (their exponentials to exactly
    0), or in :func:`scaling_pair` clamped to it.

    ``exp(floor)`` is ``2**40`` times the smallest normal number, so neither the exponentials nor
    their products with weights down to ``1e-12`` are subnormal: x86 computes on subnormals many
    times slower (uniform costs in [0, 2) at epsilon = 0.01, where most of the kernel underflows
    gradually, ran about 10x slower than cosine costs of the same size). Every sum that uses it has
    a term of order one (the max, or a near-marginal row or column), so the flushed terms, each
    below ``exp(floor)`` (float32: 1e-26, float64: 1e-295), are below its rounding even when
    clamped (``M * exp(floor)`` against a term of order one)."""
    return math.log(torch.finfo(dtype).tiny) + 40 * math.log(2.0)


def _block_budget(log_kernel: Tensor) -> int:
    """Elements per block: cache-sized at one CPU thread, <= _MAX_CPU_BLOCKS blocks at several."""
    if log_kernel.device.type != "cpu":
        return _BLOCK_ELEMENTS_ACCELERATOR
    if torch.get_num_threads() == 1:
        return _BLOCK_ELEMENTS_CPU
    return max(_BLOCK_ELEMENTS_CPU, -(-log_kernel.numel() // _MAX_CPU_BLOCKS))
