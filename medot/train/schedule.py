"""Optimisers and the warm-up + cosine learning-rate schedule."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Literal

import torch

from medot.train.config import TrainConfig


@dataclass(frozen=True)
class WarmupCosineSchedule:
    """Learning rate before optimiser step ``s`` (0-based) of ``T = total_steps``, warm-up ``W``:

    * warm-up, ``s < W``: ``"constant"`` -> ``lr_w`` (CoOp's ConstantWarmupScheduler, ``lr_w =
      1e-5``); ``"linear"`` -> ``lr_w + (lr - lr_w) * s / W``;
    * then cosine annealing over the remaining ``T - W`` steps:
      ``lr_min + (lr - lr_min) * (1 + cos(pi * (s - W) / (T - W))) / 2``.

    The trainer steps it per optimiser step with ``W = warmup_epochs * steps_per_epoch``. (CoOp
    steps per epoch and anneals over all ``T`` epochs after warm-up, so its last epoch ends above
    ``lr_min``; here the annealing spans exactly the post-warm-up steps.)
    """

    lr: float
    total_steps: int
    warmup_steps: int
    warmup: Literal["constant", "linear"] = "constant"
    warmup_lr: float = 1e-5
    min_lr: float = 0.0

    def __call__(self, step: int) -> float:
        if step < self.warmup_steps:
            if self.warmup == "constant":
                return self.warmup_lr
            return self.warmup_lr + (self.lr - self.warmup_lr) * step / self.warmup_steps
        progress = (step - self.warmup_steps) / max(1, self.total_steps - self.warmup_steps)
        return self.min_lr + (self.lr - self.min_lr) * 0.5 * (1.0 + math.cos(math.pi * min(progress, 1.0)))

    @classmethod
    def from_config(cls, config: TrainConfig, steps_per_epoch: int) -> WarmupCosineSchedule:
        return cls(
            lr=config.lr,
            total_steps=config.epochs * steps_per_epoch,
            warmup_steps=config.warmup_epochs * steps_per_epoch,
            warmup=config.warmup,
            warmup_lr=config.warmup_lr,
            min_lr=config.min_lr,
        )


def build_optimizer(groups: list[dict[str, Any]], config: TrainConfig) -> torch.optim.Optimizer:
    """SGD (momentum), AdamW or LARS over ``groups``; each group remembers its base lr as ``base_lr``."""
    if not any(group["params"] for group in groups):
        raise ValueError("the task has no trainable parameters (every parameter has requires_grad=False)")
    if config.optimizer == "sgd":
        optimizer = torch.optim.SGD(groups, lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay)
    elif config.optimizer == "lars":
        from timm.optim import Lars

        optimizer = Lars(groups, lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay)
    else:
        optimizer = torch.optim.AdamW(groups, lr=config.lr, betas=config.betas, weight_decay=config.weight_decay)
    for group in optimizer.param_groups:
        group["base_lr"] = group["lr"]
    return optimizer


def apply_learning_rate(optimizer: torch.optim.Optimizer, schedule: WarmupCosineSchedule, step: int) -> float:
    """Set every group's lr for ``step`` (scaled by its ``base_lr / schedule.lr``); returns the schedule's."""
    lr = schedule(step)
    for group in optimizer.param_groups:
        group["lr"] = lr * group["base_lr"] / schedule.lr
    return lr
