r"""Cross-rank statistics for data-parallel pretraining: the run under ``torchrun`` computes the same
loss as one process with the global batch.

* :class:`CrossRankBatchNorm` - BatchNorm whose training-mode statistics are those of the global
  batch: per channel, :math:`n = \sum_r n_r`, :math:`\mu = \sum_r S_r / n`,
  :math:`\sigma^2 = \sum_r Q_r / n - \mu^2` from each rank's sum :math:`S_r` and sum of squares
  :math:`Q_r`, exchanged with the differentiable ``torch.distributed.nn.functional.all_reduce``
  (its backward sums the gradients over ranks, so the result is exact for the global loss). This is
  what ``torch.nn.SyncBatchNorm`` does on CUDA; torch's version refuses CPU tensors, so gloo runs
  use this one. Running statistics use the unbiased :math:`\sigma^2 n / (n - 1)` as torch does.
* :func:`gather_rows` - every rank's rows, concatenated in rank order, differentiable (VICReg's
  ``FullGatherLayer``): the variance and covariance terms see the global batch.

Why gradients come out right: every rank computes the same global term :math:`V`; the backward of
the gather (or all-reduce) sums over ranks, giving rank ``r`` the gradient :math:`W\,\partial V /
\partial q_r`, and DDP's average over the ``W`` ranks turns that into :math:`\partial V/\partial\theta`.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.nn.modules.batchnorm import _BatchNorm

from medot.train.distributed import is_distributed


class CrossRankBatchNorm(_BatchNorm):
    """BatchNorm over ``[N, C]`` or ``[N, C, ...]`` with statistics over every rank's batch."""

    def _check_input_dim(self, input: Tensor) -> None:  # noqa: A002 - torch's signature
        if input.dim() < 2:
            raise ValueError(f"expected at least 2-D input, got {input.dim()}-D")

    def forward(self, x: Tensor) -> Tensor:
        if not (self.training and is_distributed()):
            return super().forward(x)
        import torch.distributed.nn.functional as dist_nn

        channels = x.shape[1]
        dims = [0, *range(2, x.dim())]
        count = x.new_tensor([x.numel() // channels], dtype=x.dtype)
        stats = dist_nn.all_reduce(torch.cat([x.sum(dims), (x * x).sum(dims), count]))
        n = stats[-1]
        mean = stats[:channels] / n
        var = (stats[channels : 2 * channels] / n - mean * mean).clamp_min(0.0)
        if self.track_running_stats:
            with torch.no_grad():
                momentum = self.momentum if self.momentum is not None else 0.1
                self.running_mean.mul_(1 - momentum).add_(momentum * mean.detach())
                self.running_var.mul_(1 - momentum).add_(momentum * var.detach() * n / (n - 1))
                self.num_batches_tracked.add_(1)
        shape = [1, channels] + [1] * (x.dim() - 2)
        y = (x - mean.view(shape)) * torch.rsqrt(var.view(shape) + self.eps)
        if self.affine:
            y = y * self.weight.view(shape) + self.bias.view(shape)
        return y


def convert_batch_norms(module: nn.Module) -> nn.Module:
    """Replace every ``BatchNorm1d/2d`` in ``module`` by :class:`CrossRankBatchNorm` (same
    parameters and buffers), in place; returns ``module``."""
    for name, child in module.named_children():
        if isinstance(child, (nn.BatchNorm1d, nn.BatchNorm2d)) and not isinstance(child, CrossRankBatchNorm):
            replacement = CrossRankBatchNorm(
                child.num_features, child.eps, child.momentum, child.affine, child.track_running_stats
            )
            replacement.load_state_dict(child.state_dict())
            setattr(module, name, replacement.to(next(child.buffers()).device))
        else:
            convert_batch_norms(child)
    return module


def gather_rows(x: Tensor) -> Tensor:
    """``x`` of every rank concatenated along dim 0 (rank order), with gradients; ``x`` itself in
    one process. Every rank must pass the same shape."""
    if not is_distributed():
        return x
    import torch.distributed.nn.functional as dist_nn

    return torch.cat(dist_nn.all_gather(x.contiguous()))
