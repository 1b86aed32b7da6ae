"""Memory-aware tensor kernels shared by the log-domain solvers.

The Sinkhorn-type solvers spend their time in one operation, the "soft-min" reduction

.. math::
    \\operatorname{LSE}_j(\\mathbf{K}_{ij} + s_j) = \\log \\sum_j \\exp(\\mathbf{K}_{ij} + s_j)

of a log-kernel :math:`\\mathbf{K} = -\\mathbf{C}/\\varepsilon` shifted by a dual vector, over rows or
columns. When autograd has to record it, or the problem fits in one block, :func:`torch.logsumexp`
is used as is. Otherwise the reduction runs over blocks of rows, in place, so that at most one
block-sized temporary exists at a time: on CPU the blocks fit in cache (the kernel is read once
per reduction), on accelerators they are large enough to keep kernel-launch overhead negligible
while still capping the extra memory far below one ``[N, M]`` matrix.
"""

from __future__ import annotations

import torch
from torch import Tensor

_BLOCK_ELEMENTS_CPU = 1 << 17
_BLOCK_ELEMENTS_ACCELERATOR = 1 << 25


def logsumexp_shifted(log_kernel: Tensor, shift: Tensor, dim: int) -> Tensor:
    """Log-sum-exp of ``log_kernel + shift`` over rows (``dim=-2``) or columns (``dim=-1``).

    ``log_kernel`` is ``[B, N, M]``. For ``dim=-1`` the shift is a column vector ``[B, M]`` and the
    result is ``[B, N]``; for ``dim=-2`` the shift is a row vector ``[B, N]`` and the result is
    ``[B, M]``. Entries equal to ``-inf`` (zero-weight points) are handled exactly.
    """
    if dim not in (-1, -2):
        raise ValueError(f"dim must be -1 or -2, got {dim}")
    broadcast = shift.unsqueeze(-2) if dim == -1 else shift.unsqueeze(-1)
    batch, rows, cols = log_kernel.shape
    budget = _BLOCK_ELEMENTS_CPU if log_kernel.device.type == "cpu" else _BLOCK_ELEMENTS_ACCELERATOR
    block_rows = max(1, budget // max(1, batch * cols))
    recording = torch.is_grad_enabled() and (log_kernel.requires_grad or shift.requires_grad)
    if recording or block_rows >= rows:
        return torch.logsumexp(log_kernel + broadcast, dim=dim)
    with torch.no_grad():
        return _blockwise_logsumexp(log_kernel, broadcast, dim, block_rows)


def _blockwise_logsumexp(log_kernel: Tensor, broadcast: Tensor, dim: int, block_rows: int) -> Tensor:
    rows = log_kernel.shape[1]
    lowest = torch.finfo(log_kernel.dtype).min
    pieces = []
    for start in range(0, rows, block_rows):
        stop = min(start + block_rows, rows)
        row_shift = broadcast if dim == -1 else broadcast[:, start:stop]
        block = torch.add(log_kernel[:, start:stop], row_shift)
        peak = block.amax(dim=dim, keepdim=True).clamp_(min=lowest)
        block.sub_(peak).exp_()
        pieces.append(peak.squeeze(dim) + block.sum(dim=dim).log_())
    if dim == -1:
        return torch.cat(pieces, dim=1)
    return torch.logsumexp(torch.stack(pieces, dim=1), dim=1)


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
