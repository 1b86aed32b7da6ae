"""Batches for the trainer: a factory called once per epoch with an :class:`EpochContext`.

``train_batches(context)`` returns a sized iterable of batches for one epoch (a list, a
:class:`TensorBatches`, or a ``DataLoader(..., generator=context.generator,
sampler=DistributedSampler(..., num_replicas=context.world_size, rank=context.rank))``). Drawing
the order only from ``context.generator`` is what makes runs reproducible and resumable: the
generator is a function of (seed, epoch), so a resumed epoch replays the same batches.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import torch


@dataclass(frozen=True)
class EpochContext:
    """What a batch factory needs to know about the epoch it is asked for (``epoch`` is 0-based)."""

    epoch: int
    generator: torch.Generator
    rank: int = 0
    world_size: int = 1


BatchFactory = Callable[[EpochContext], Iterable[Any]]


class TensorBatches:
    """Shuffled mini-batches of rows of equally long tensors (e.g. cached features and labels).

    Under data parallelism each rank takes every ``world_size``-th row of the epoch's permutation,
    after padding the permutation by wrapping around (as ``DistributedSampler`` does) so every rank
    runs the same number of steps; ``batch_size`` is per rank.
    """

    def __init__(self, *tensors: torch.Tensor, batch_size: int, shuffle: bool = True, drop_last: bool = False) -> None:
        if not tensors or any(t.shape[0] != tensors[0].shape[0] for t in tensors):
            raise ValueError("TensorBatches needs one or more tensors with the same number of rows")
        if tensors[0].shape[0] == 0 or batch_size < 1:
            raise ValueError("TensorBatches needs at least one row and batch_size >= 1")
        self.tensors = tensors
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.drop_last = drop_last

    def __call__(self, context: EpochContext) -> _EpochBatches:
        rows = self.tensors[0].shape[0]
        order = torch.randperm(rows, generator=context.generator) if self.shuffle else torch.arange(rows)
        per_rank = math.ceil(rows / context.world_size)
        padded = order.repeat(math.ceil(per_rank * context.world_size / rows))[: per_rank * context.world_size]
        return _EpochBatches(self, padded[context.rank :: context.world_size])


class _EpochBatches:
    """One epoch of :class:`TensorBatches`: sized, iterable once per call of ``iter``."""

    def __init__(self, source: TensorBatches, indices: torch.Tensor) -> None:
        self.source = source
        self.indices = indices

    def __len__(self) -> int:
        rows, size = len(self.indices), self.source.batch_size
        return rows // size if self.source.drop_last else math.ceil(rows / size)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, ...]]:
        size = self.source.batch_size
        for start in range(0, len(self) * size, size):
            chunk = self.indices[start : start + size]
            yield tuple(t[chunk.to(t.device)] for t in self.source.tensors)


def move_to_device(batch: Any, device: torch.device) -> Any:
    """``batch`` with every tensor inside (nested tuples, named tuples, lists, dicts) moved to ``device``."""
    if torch.is_tensor(batch):
        return batch.to(device, non_blocking=True)
    if isinstance(batch, dict):
        return {key: move_to_device(value, device) for key, value in batch.items()}
    if isinstance(batch, (list, tuple)):
        moved = [move_to_device(value, device) for value in batch]
        return type(batch)(*moved) if hasattr(batch, "_fields") else type(batch)(moved)
    return batch
