"""Hyper-parameters of a training run (:class:`TrainConfig`)."""

from __future__ import annotations

import math

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

#: fields that change the optimisation itself; a run may only resume under the same values
OPTIMISATION_FIELDS = (
    "epochs",
    "optimizer",
    "lr",
    "weight_decay",
    "momentum",
    "betas",
    "warmup_epochs",
    "warmup",
    "warmup_lr",
    "min_lr",
    "seed",
    "patience",
    "min_delta",
)


@dataclass(frozen=True)
class TrainConfig:
    """One training run. Defaults follow CoOp (Zhou et al., IJCV 2022): SGD with momentum 0.9,
    lr 0.002, weight decay 5e-4, one warm-up epoch at a constant 1e-5, then cosine annealing.

    * ``optimizer``: ``"sgd"`` (momentum ``momentum``), ``"adamw"`` (``betas``) or ``"lars"``
      (timm's ``Lars``, momentum ``momentum``: You et al. 2017, as VICReg trains; a parameter group
      with ``weight_decay`` 0 is neither decayed nor adapted);
    * ``warmup``: ``"constant"`` (CoOp: ``warmup_lr`` throughout the warm-up) or ``"linear"``
      (from ``warmup_lr`` up to ``lr``); see :class:`medot.train.schedule.WarmupCosineSchedule`;
    * ``patience``: stop after this many epochs without the validation score improving by more
      than ``min_delta`` (None: never stop early); the best state is kept either way;
    * ``device``: ``"auto"`` (CUDA when present), ``"cpu"``, ``"cuda"``, ``"cuda:1"``...;
      ``amp``: float16 autocast + gradient scaling, used only on CUDA (a no-op on CPU);
    * ``checkpoint_dir``: where ``resume`` (training state) and ``model`` (final/best weights)
      checkpoints go, the former every ``checkpoint_every`` epochs and on cancellation;
    * ``progress``: per-epoch tqdm bars; ``event_every_steps``: throttle of "step" events.
    """

    epochs: int = 50
    optimizer: Literal["sgd", "adamw", "lars"] = "sgd"
    lr: float = 0.002
    weight_decay: float = 5e-4
    momentum: float = 0.9
    betas: tuple[float, float] = (0.9, 0.999)
    warmup_epochs: int = 1
    warmup: Literal["constant", "linear"] = "constant"
    warmup_lr: float = 1e-5
    min_lr: float = 0.0
    seed: int = 0
    patience: int | None = None
    min_delta: float = 0.0
    device: str = "auto"
    amp: bool = False
    checkpoint_dir: Path | None = None
    checkpoint_every: int = 1
    progress: bool = True
    event_every_steps: int = 10

    def __post_init__(self) -> None:
        if self.optimizer not in ("sgd", "adamw", "lars"):
            raise ValueError(f"optimizer must be 'sgd', 'adamw' or 'lars', got {self.optimizer!r}")
        if self.warmup not in ("constant", "linear"):
            raise ValueError(f"warmup must be 'constant' or 'linear', got {self.warmup!r}")
        if self.epochs < 1 or not 0 <= self.warmup_epochs < self.epochs:
            raise ValueError(f"need epochs >= 1 and 0 <= warmup_epochs < epochs, got {self.epochs}, {self.warmup_epochs}")
        if not math.isfinite(self.lr) or self.lr <= 0:
            raise ValueError(f"lr must be a finite number > 0, got {self.lr}")
        for name in ("weight_decay", "momentum", "warmup_lr", "min_lr", "min_delta"):
            value = getattr(self, name)
            if not math.isfinite(value) or value < 0:
                raise ValueError(f"{name} must be a finite number >= 0, got {value}")
        if self.checkpoint_every < 1 or self.event_every_steps < 1:
            raise ValueError("checkpoint_every and event_every_steps must be >= 1")
        if self.patience is not None and self.patience < 1:
            raise ValueError(f"patience must be >= 1 or None, got {self.patience}")
        if self.checkpoint_dir is not None:
            object.__setattr__(self, "checkpoint_dir", Path(self.checkpoint_dir))

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready copy (paths as strings, tuples as lists)."""
        data = asdict(self)
        data["checkpoint_dir"] = None if self.checkpoint_dir is None else str(self.checkpoint_dir)
        data["betas"] = list(self.betas)
        return data

    def optimisation_differences(self, saved: dict[str, Any]) -> list[str]:
        """``"name: saved -> now"`` for each :data:`OPTIMISATION_FIELDS` entry that differs."""
        now = self.to_dict()
        return [
            f"{name}: {saved.get(name)!r} -> {now[name]!r}" for name in OPTIMISATION_FIELDS if saved.get(name) != now[name]
        ]
