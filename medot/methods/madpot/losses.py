r"""MADPOT's losses, each a plain function of tensors (hand-checked in ``tests/test_madpot.py``).

* :func:`pot_cross_entropy` -- cross-entropy of the POT logits :math:`z_c` (normal, abnormal)
  against the image label;
* :func:`contrastive_loss` -- MadCLIP's dual contrast with a sigmoid loss. Per patch
  :math:`s_i = \cos(v_i, \bar t_{a}) - \cos(v_i, \bar t_{n})` (the abnormal fused prompt against the
  normal one); the image logit is :math:`\tau^{-1}\,\frac1M\sum_i s_i` and the loss is
  :math:`-[y\log\sigma(\cdot) + (1-y)\log(1-\sigma(\cdot))]`. With two classes the contrast of the
  normal class, :math:`\cos(v,\bar t_n) - \cos(v,\bar t_a) = -s`, gives the same sigmoid loss, so
  the two directions of the dual contrast are one term;
* :func:`prompt_diversity` -- mean cosine between distinct prompts of one class (optional penalty);
* :func:`focal_loss` (:math:`\gamma = 2`) and :func:`dice_loss` on abnormal-probability maps against
  soft masks, as MVFA trains its segmentation adapters.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

FOCAL_GAMMA = 2.0
DICE_SMOOTH = 1.0
_EPS = 1e-6


def pot_cross_entropy(logits: Tensor, labels: Tensor) -> Tensor:
    """``[B, 2]`` POT logits, ``[B]`` labels (0 normal, 1 abnormal) -> mean cross-entropy."""
    return F.cross_entropy(logits, labels.long())


def contrastive_loss(image_logits: Tensor, labels: Tensor) -> Tensor:
    """``[B]`` CL image logits :math:`\\tau^{-1}\\bar s` -> mean sigmoid (binary cross-entropy) loss."""
    return F.binary_cross_entropy_with_logits(image_logits, labels.to(image_logits.dtype))


def prompt_diversity(prompts: Tensor) -> Tensor:
    """``[2, K, D]`` normalised prompts -> mean cosine over ordered pairs ``k != k'`` of each class
    (0 when K = 1)."""
    classes, k, _ = prompts.shape
    if k < 2:
        return prompts.new_zeros(())
    gram = prompts @ prompts.transpose(1, 2)
    off_diagonal = gram.sum((1, 2)) - gram.diagonal(dim1=1, dim2=2).sum(-1)
    return off_diagonal.sum() / (classes * k * (k - 1))


def focal_loss(probabilities: Tensor, targets: Tensor, gamma: float = FOCAL_GAMMA) -> Tensor:
    """Mean over pixels of :math:`-[y(1-p)^\\gamma\\log p + (1-y)p^\\gamma\\log(1-p)]` (targets in [0, 1])."""
    p = probabilities.clamp(_EPS, 1 - _EPS)
    y = targets.to(p.dtype)
    loss = -(y * (1 - p) ** gamma * p.log() + (1 - y) * p**gamma * (1 - p).log())
    return loss.mean()


def dice_loss(probabilities: Tensor, targets: Tensor, smooth: float = DICE_SMOOTH) -> Tensor:
    """:math:`1 - (2\\sum py + s) / (\\sum p + \\sum y + s)` over the whole batch (MVFA's binary Dice)."""
    y = targets.to(probabilities.dtype)
    intersection = (probabilities * y).sum()
    return 1 - (2 * intersection + smooth) / (probabilities.sum() + y.sum() + smooth)


def segmentation_loss(probabilities: Tensor, targets: Tensor) -> Tensor:
    """Focal + Dice on ``[B, H, W]`` abnormal-probability maps and their soft masks."""
    return focal_loss(probabilities, targets) + dice_loss(probabilities, targets)


def soft_masks(masks: Tensor, grid: tuple[int, int]) -> Tensor:
    """``[B, h, w]`` masks in [0, 1] -> ``[B, H, W]`` fraction of each grid cell that is anomalous."""
    return F.adaptive_avg_pool2d(masks[:, None].float(), grid)[:, 0]


__all__ = [
    "contrastive_loss",
    "dice_loss",
    "focal_loss",
    "pot_cross_entropy",
    "prompt_diversity",
    "segmentation_loss",
    "soft_masks",
]
