"""The few ``torch.distributed`` facts the trainer needs; everything is a no-op in one process.

Under ``torchrun`` (``torch.distributed`` initialised by the caller) the trainer wraps the task in
``DistributedDataParallel``, gives each rank its shard of the data (:class:`EpochContext`), lets
only rank 0 write checkpoints, show progress and emit events, and makes every per-step decision
(cancel, non-finite loss) collectively, so no rank is left waiting in an all-reduce.
"""

from __future__ import annotations

import os

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


def rank_and_world_size() -> tuple[int, int]:
    return (dist.get_rank(), dist.get_world_size()) if is_distributed() else (0, 1)


def resolve_device(name: str) -> torch.device:
    """``"auto"`` -> CUDA when present (under ``torchrun``: ``cuda:$LOCAL_RANK``), else CPU."""
    if name != "auto":
        return torch.device(name)
    if not torch.cuda.is_available():
        return torch.device("cpu")
    return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)) if is_distributed() else 0)


def wrap_for_training(task: nn.Module, device: torch.device) -> nn.Module:
    """``task`` itself, or ``DistributedDataParallel(task)`` when a process group is running."""
    if not is_distributed():
        return task
    return DistributedDataParallel(task, device_ids=[device] if device.type == "cuda" else None)


def any_rank(flag: bool, device: torch.device) -> bool:
    """True when ``flag`` is True on at least one rank (a MAX all-reduce; no communication alone)."""
    if not is_distributed():
        return flag
    value = torch.tensor([float(flag)], device=device)
    dist.all_reduce(value, op=dist.ReduceOp.MAX)
    return bool(value.item())
