"""Data-parallel training under ``torchrun``: one run over N processes, not N runs racing.

Everything here is a no-op in one process, so a method written against it runs unchanged with
``python -m medot train ...`` and with ``torchrun --nproc_per_node=N -m medot train ...``.

**Session.** :func:`distributed_session` reads the launcher's environment (``RANK``,
``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR``/``MASTER_PORT``; :func:`launch_environment`) and,
when ``WORLD_SIZE > 1``, pins the process to its device (``cuda:$LOCAL_RANK``) before
initialising the process group (``nccl`` on CUDA, ``gloo`` on CPU), then destroys the group on
every way out: normal return, exception, ``KeyboardInterrupt``, and a SIGTERM/SIGINT stop request
(the trainer agrees on stopping across ranks with :func:`any_rank`, so every rank leaves the loop
at the same step). The ``medot`` console script opens it around every ``medot train METHOD`` whose
parser declares ``supports_distributed=True`` (:func:`mark_distributed`); any other command
launched with ``WORLD_SIZE > 1`` is refused with a one-line error (:func:`refuse_world`). Those
launcher-side pieces live in :mod:`medot.launch` (no torch import) and are re-exported here.

**Data parallelism** (what :class:`medot.train.Trainer` does with a process group): the task is
wrapped in ``DistributedDataParallel`` (gradients averaged over ranks), every rank starts from the
same seed, and each epoch's permutation (a function of ``(seed, epoch)`` only) is dealt out
round-robin, rank ``r`` taking positions ``r, r + N, r + 2N, ...`` (:class:`~medot.train.TensorBatches`,
or ``DistributedSampler(num_replicas=context.world_size, rank=context.rank)`` for a
``DataLoader``). The batch size is **per process**: the global batch is ``batch_size x
WORLD_SIZE`` and the learning rate is used as given for that global batch (no automatic scaling).
Step ``s`` of an N-process run with per-process batch ``b`` therefore sees exactly the rows of step
``s`` of a one-process run with batch ``N b``, and since DDP averages the per-rank mean gradients,
the two runs take the same steps whenever every rank's batch has the same size (up to float
summation order, ~1e-6 relative).

**Files.** Only rank 0 writes: checkpoints, events, metrics files and printed results
(:func:`is_main_process`); code that fills a shared cache runs under :func:`main_process_first`
(rank 0 computes and writes, the others wait at a barrier and then read rank 0's entries), so the
feature cache is filled once. Example, for a method's CLI::

    from medot.train import distributed

    with distributed.main_process_first():          # rank 0 fills the cache, others then read it
        features = FeatureCache().encode(backbone, paths, progress=progress and distributed.is_main_process())
    result = Trainer(config).fit(task, batches)     # DDP, sharded batches, rank-0 checkpoints
    if distributed.is_main_process():
        write_metrics(...); print(...)
"""

from __future__ import annotations

import contextlib
import datetime
import os
from collections.abc import Iterator

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from medot.errors import MedotError
from medot.launch import (  # noqa: F401 - re-exported: the launcher side, importable without torch
    DISTRIBUTED_HELP,
    LaunchEnvironment,
    launch_environment,
    mark_distributed,
    refuse_world,
)

#: environment variable: seconds a rank waits in a collective (barrier, all-reduce) before failing
TIMEOUT_ENV = "MEDOT_DIST_TIMEOUT"
DEFAULT_TIMEOUT_S = 1800


def is_distributed() -> bool:
    """True while a process group is initialised (by :func:`distributed_session` or a caller)."""
    return dist.is_available() and dist.is_initialized()


def rank_and_world_size() -> tuple[int, int]:
    return (dist.get_rank(), dist.get_world_size()) if is_distributed() else (0, 1)


def is_main_process() -> bool:
    """True on rank 0 (and in one process): the process that writes files and prints results."""
    return rank_and_world_size()[0] == 0


def _parse_device(device: str | None) -> torch.device | None:
    """None for ``auto``; else ``torch.device(device)``, a bad name being a :class:`MedotError`."""
    if device in (None, "", "auto"):
        return None
    try:
        return torch.device(device)
    except (RuntimeError, ValueError):
        raise MedotError(f"--device {device!r} is not a torch device: use auto, cpu, cuda") from None


def _timeout() -> datetime.timedelta:
    text = os.environ.get(TIMEOUT_ENV, "").strip()
    try:
        seconds = float(text) if text else DEFAULT_TIMEOUT_S
    except ValueError:
        seconds = -1.0
    if not seconds > 0:
        raise MedotError(f"{TIMEOUT_ENV}={text!r}: give the collective timeout as a positive number of seconds")
    return datetime.timedelta(seconds=seconds)


@contextlib.contextmanager
def distributed_session(device: str | None = "auto") -> Iterator[LaunchEnvironment]:
    """Initialise the process group from the launcher's environment for the ``with`` body.

    A no-op (yields the one-process environment) when ``WORLD_SIZE`` is unset or 1, or when a
    group is already initialised (the caller owns it). Otherwise: with CUDA (``device`` ``auto``
    on a CUDA machine, or ``cuda...``) the process is pinned to ``cuda:$LOCAL_RANK`` and joins an
    ``nccl`` group, else a ``gloo`` one; the group is destroyed however the body ends.
    """
    env = launch_environment()
    if not env.is_distributed or is_distributed():
        yield env
        return
    chosen = _parse_device(device)
    timeout = _timeout()
    use_cuda = torch.cuda.is_available() if chosen is None else chosen.type == "cuda"
    if chosen is not None and chosen.type == "cuda" and chosen.index is not None:
        raise MedotError(
            f"--device {device} names one GPU for all {env.world_size} processes: under torchrun use "
            "--device cuda (or auto), and each process takes the GPU of its LOCAL_RANK"
        )
    if use_cuda:
        if env.local_rank >= torch.cuda.device_count():
            raise MedotError(
                f"LOCAL_RANK {env.local_rank} has no GPU: this node has {torch.cuda.device_count()}; "
                "start at most one process per GPU (--nproc_per_node)"
            )
        torch.cuda.set_device(env.local_rank)
    dist.init_process_group("nccl" if use_cuda else "gloo", timeout=timeout)
    try:
        yield env
    finally:
        dist.destroy_process_group()


def resolve_device(name: str | None) -> torch.device:
    """``"auto"``/None -> CUDA when present, else CPU; under a process group an index-less
    ``"cuda"`` is this rank's GPU (``cuda:$LOCAL_RANK``, pinned by :func:`distributed_session`)."""
    if name in (None, "", "auto"):
        if not torch.cuda.is_available():
            return torch.device("cpu")
        name = "cuda"
    from medot.backbones.factory import check_device

    device = torch.device(check_device(name))
    if device.type == "cuda" and device.index is None:
        index = int(os.environ.get("LOCAL_RANK", 0)) if is_distributed() else torch.cuda.current_device()
        return torch.device("cuda", index)
    return device


def wrap_for_training(task: nn.Module, device: torch.device) -> nn.Module:
    """``task`` itself, or ``DistributedDataParallel(task)`` when a process group is running."""
    if not is_distributed():
        return task
    return DistributedDataParallel(task, device_ids=[device] if device.type == "cuda" else None)


def _collective_device() -> torch.device:
    """Where a collective's tensors must live: this rank's GPU for nccl, the CPU otherwise."""
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def barrier() -> None:
    """Wait until every rank arrives (no-op in one process)."""
    if is_distributed():
        dist.barrier()


def any_rank(flag: bool, device: torch.device | None = None) -> bool:
    """True when ``flag`` is True on at least one rank (a MAX all-reduce; no communication alone).
    ``device`` is ignored (kept for callers): the collective uses the backend's device."""
    if not is_distributed():
        return flag
    value = torch.tensor([float(flag)], device=_collective_device())
    dist.all_reduce(value, op=dist.ReduceOp.MAX)
    return bool(value.item())


def all_reduce_sum_(tensor: torch.Tensor) -> torch.Tensor:
    """Sum ``tensor`` over ranks, in place, and return it (unchanged in one process)."""
    if is_distributed():
        target = _collective_device()
        if tensor.device == target:
            dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
        else:
            moved = tensor.to(target)
            dist.all_reduce(moved, op=dist.ReduceOp.SUM)
            tensor.copy_(moved)
    return tensor


def broadcast_from_main(value: float) -> float:
    """Rank 0's ``value`` on every rank (so a decision taken on a float is the same everywhere)."""
    if not is_distributed():
        return value
    tensor = torch.tensor([value], dtype=torch.float64, device=_collective_device())
    dist.broadcast(tensor, src=0)
    return float(tensor.item())


@contextlib.contextmanager
def main_process_first(what: str = "the shared step") -> Iterator[None]:
    """Run the ``with`` body on rank 0 first, then on the other ranks.

    For work whose result rank 0 leaves on disk for the others (filling the feature cache,
    writing synthetic data): the other ranks wait at a barrier until rank 0's body has finished,
    then run theirs, which finds rank 0's files. If rank 0's body raises, the others raise a
    :class:`MedotError` naming ``what`` instead of running theirs (nobody is left waiting). Every
    rank must enter it (it is a collective); a no-op in one process.
    """
    if not is_distributed():
        yield
        return
    rank, _ = rank_and_world_size()
    if rank != 0:
        if any_rank(False):
            raise MedotError(f"rank 0 failed during {what}; see its error above")
        yield
        return
    try:
        yield
    except BaseException:
        any_rank(True)
        raise
    any_rank(False)
