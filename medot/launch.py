"""The multi-process launcher (``torchrun``) as the console script sees it; imports no torch.

``torchrun`` starts ``WORLD_SIZE`` copies of a command and tells each its ``RANK`` (global),
``LOCAL_RANK`` (on its node) and where to meet (``MASTER_ADDR``/``MASTER_PORT``). The ``medot``
console script reads that here, before loading anything heavy: a ``medot train METHOD`` marked
with :func:`mark_distributed` runs as one data-parallel run across the processes (see
:mod:`medot.train.distributed`), any other command is refused with ``WORLD_SIZE > 1``
(:func:`refuse_world`) rather than run N times over the same files.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

from medot.errors import MedotError

#: appended to the description of every ``medot train METHOD`` that supports torchrun
DISTRIBUTED_HELP = (
    "Multi-process training: 'torchrun --nproc_per_node=N -m medot train ...' trains ONE model on N "
    "processes (one per GPU, nccl; gloo on CPU; multi-node: add --nnodes, --node_rank, --master_addr, --master_port). "
    "--batch-size is per process: the global batch is batch-size x N, and --lr applies to that global batch "
    "as given (it is not scaled with N); to reproduce a one-process run with batch B, use --batch-size B/N. "
    "Only rank 0 writes the model, the events and the printed results."
)


@dataclass(frozen=True)
class LaunchEnvironment:
    """The launcher's view of this process: global ``rank``, ``world_size``, ``local_rank``."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_distributed(self) -> bool:
        return self.world_size > 1


def launch_environment() -> LaunchEnvironment:
    """``RANK`` / ``WORLD_SIZE`` / ``LOCAL_RANK`` as ``torchrun`` sets them (one process when unset)."""

    def number(name: str, default: int) -> int:
        text = os.environ.get(name, "").strip()
        if not text:
            return default
        try:
            return int(text)
        except ValueError:
            raise MedotError(f"environment variable {name}={text!r} is not an integer (torchrun sets it)") from None

    world_size = number("WORLD_SIZE", 1)
    rank = number("RANK", 0)
    local_rank = number("LOCAL_RANK", rank)
    if world_size < 1 or not 0 <= rank < world_size or local_rank < 0:
        raise MedotError(
            f"inconsistent launcher environment: RANK={rank}, WORLD_SIZE={world_size}, LOCAL_RANK={local_rank}"
        )
    return LaunchEnvironment(rank, world_size, local_rank)


def mark_distributed(parser: Any) -> None:
    """Declare that a ``medot train METHOD`` parser runs correctly under ``torchrun`` (one model,
    rank-0 writes): the console script then runs it inside
    :func:`medot.train.distributed.distributed_session` with its ``--device``, and
    :data:`DISTRIBUTED_HELP` is added to its ``--help``. Unmarked commands refuse ``WORLD_SIZE > 1``."""
    parser.set_defaults(supports_distributed=True)
    parser.epilog = f"{parser.epilog}\n\n{DISTRIBUTED_HELP}" if parser.epilog else DISTRIBUTED_HELP


def mark_single_process(parser: Any, reason: str) -> None:
    """Declare that a command must run in one process, and why: under ``WORLD_SIZE > 1`` the
    console script refuses it with ``reason`` (:func:`refuse_world`) before any process group, and
    its ``--help`` says so."""
    parser.set_defaults(single_process_reason=reason)
    note = f"Single process only (not under torchrun): {reason}."
    parser.epilog = f"{parser.epilog}\n\n{note}" if parser.epilog else note


def refuse_world(command: str, reason: str = "") -> None:
    """Raise :class:`MedotError` when started with ``WORLD_SIZE > 1`` (before any collective)."""
    env = launch_environment()
    if env.is_distributed:
        why = f" ({reason})" if reason else ""
        raise MedotError(
            f"'{command}' runs in one process only{why}, but was started as rank {env.rank} of "
            f"{env.world_size}: run it without torchrun (or with --nproc_per_node=1)"
        )


def rank_prefix() -> str:
    """``"[rank R/N] "`` when started with ``WORLD_SIZE > 1``, else ``""`` (for error lines)."""
    try:
        env = launch_environment()
    except MedotError:
        return ""
    return f"[rank {env.rank}/{env.world_size}] " if env.is_distributed else ""
