"""Live progress of a training run, for an app or a log (:class:`TrainEvent`)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

EventKind = Literal["start", "step", "epoch", "checkpoint", "early_stop", "cancelled", "done", "error"]


@dataclass(frozen=True)
class TrainEvent:
    """One thing that happened during :meth:`medot.train.Trainer.fit`.

    ``epoch`` is the 1-based epoch in progress, or between epochs the last one finished (0
    before the first step; for "epoch" events, the one just finished); ``step`` is the number of
    optimiser steps taken so far, ``metrics`` the numbers worth showing (running or
    epoch-mean loss terms, ``lr``, ``val_score``, ``best_score``...) and ``message`` a line for a
    person. Kinds: "start", "step" (every ``event_every_steps`` steps), "epoch", "checkpoint",
    "early_stop", "cancelled", "done" and "error". Only rank 0 emits events.
    """

    kind: EventKind
    epoch: int
    step: int
    total_epochs: int
    metrics: dict[str, float] = field(default_factory=dict)
    message: str = ""


EventHandler = Callable[[TrainEvent], None]
