"""What the trainer trains: a :class:`TrainingTask` (an ``nn.Module`` that scores its own batches)."""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any

import torch
from torch import nn

from medot.errors import CheckpointError


class TrainingTask(nn.Module, ABC):
    """A model plus its loss, as K-MaT, MADPOT and PRADOT define them.

    * :meth:`training_step` returns named scalar loss terms, the total under ``"loss"`` (the one
      back-propagated), e.g. ``{"loss": ce + lam * ot, "ce": ce, "ot": ot}``;
    * :meth:`validation_score` (higher is better, or None when there is no validation split)
      drives early stopping and the choice of the kept state;
    * :meth:`checkpoint_tensors` / :meth:`load_checkpoint_tensors` are the learned state (default:
      every parameter with ``requires_grad``, so a frozen backbone inside the task is not saved)
      and :meth:`checkpoint_meta` the JSON that describes it (must name ``method`` and ``backbone``).

    :meth:`forward` is :meth:`training_step`, so the trainer calls ``model(batch)`` and the step runs
    through ``DistributedDataParallel``'s gradient synchronisation when it wraps the task.
    """

    @abstractmethod
    def training_step(self, batch: Any) -> dict[str, torch.Tensor]:
        """Loss terms of one batch (already on the task's device); ``"loss"`` is minimised."""

    @abstractmethod
    def checkpoint_meta(self) -> dict[str, Any]:
        """JSON-serialisable description of the learned state: ``method``, ``backbone``, class
        names, hyper-parameters..."""

    def forward(self, batch: Any) -> dict[str, torch.Tensor]:
        return self.training_step(batch)

    def validation_score(self) -> float | None:
        """Score on held-out data, higher is better (run in eval mode without gradients)."""
        return None

    def parameter_groups(self) -> list[dict[str, Any]]:
        """Optimiser parameter groups; a group may set its own ``"lr"`` (scheduled in proportion)."""
        return [{"params": [p for p in self.parameters() if p.requires_grad]}]

    def checkpoint_tensors(self) -> dict[str, torch.Tensor]:
        """The learned state by name (live tensors; callers clone what they keep)."""
        return {name: p.detach() for name, p in self.named_parameters() if p.requires_grad}

    def load_checkpoint_tensors(self, tensors: dict[str, torch.Tensor]) -> None:
        """Copy ``tensors`` (as returned by :meth:`checkpoint_tensors`) into the task, in place."""
        expected = self.checkpoint_tensors()
        missing, unexpected = sorted(set(expected) - set(tensors)), sorted(set(tensors) - set(expected))
        wrong = [name for name in expected.keys() & tensors.keys() if tensors[name].shape != expected[name].shape]
        if missing or unexpected or wrong:
            raise CheckpointError(
                f"checkpoint does not fit this {type(self).__name__}: missing {missing}, unexpected {unexpected}, "
                f"wrong shape {sorted(wrong)}; was it trained with other classes or another backbone?"
            )
        with torch.no_grad():
            for name, tensor in expected.items():
                tensor.copy_(tensors[name])
