"""Is the process a job record names still that job's process? (pid-reuse-safe checks)

A pid alone does not name a process for long: once the job's process is gone the kernel may hand
the same number to an unrelated one. A job therefore stores, with its pid, a *start token*: the
boot id and the process start time in clock ticks since boot (``/proc/<pid>/stat`` field 22),
a pair no two processes share. A pid whose token differs is another process and is never signalled.

On systems without ``/proc`` there is no token and only the pid's existence is checked.
"""

from __future__ import annotations

import os
import signal
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Literal

_PROC = Path("/proc")


@dataclass(frozen=True)
class ProcessInfo:
    """What the kernel says about a pid: ``token`` (None without ``/proc``), whether it is a
    zombie (exited, exit status not yet collected by ``parent``) and its parent's pid."""

    token: str | None
    zombie: bool
    parent: int | None


@lru_cache(maxsize=1)
def _boot_id() -> str:
    return (_PROC / "sys" / "kernel" / "random" / "boot_id").read_text().strip()


def inspect_process(pid: int) -> ProcessInfo | None:
    """The process now holding ``pid``, or None when there is none."""
    if not _PROC.is_dir():
        try:
            os.kill(pid, 0)
        except OSError:  # no such process, or another user's: not a job of ours
            return None
        return ProcessInfo(token=None, zombie=False, parent=None)
    try:
        stat = (_PROC / str(pid) / "stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return None
    # "pid (comm) state ppid ...": comm may hold spaces and parentheses, so split after the last ")"
    fields = stat[stat.rindex(")") + 2 :].split()
    state, parent, start_ticks = fields[0], int(fields[1]), fields[19]
    return ProcessInfo(token=f"{_boot_id()}:{start_ticks}", zombie=state == "Z", parent=parent)


def process_token(pid: int) -> str | None:
    """The start token of the process holding ``pid`` (None when unknown)."""
    info = inspect_process(pid)
    return None if info is None else info.token


def job_process_state(pid: int | None, token: str | None) -> Literal["running", "exited"]:
    """Whether the job process ``(pid, token)`` may still be working or be reported on by its
    parent: "exited" when the pid is free, held by another process, or a zombie that no process of
    ours will reap (its parent is elsewhere, e.g. a crashed app's orphan reparented to init)."""
    info = None if pid is None else inspect_process(pid)
    if info is None or (token is not None and info.token != token):
        return "exited"
    if info.zombie and info.parent != os.getpid():
        return "exited"
    return "running"


def signal_job_process(pid: int | None, token: str | None, signum: signal.Signals) -> bool:
    """Send ``signum`` to the job process ``(pid, token)`` if it is still that process; True when
    sent."""
    if job_process_state(pid, token) != "running":
        return False
    try:
        os.kill(pid, signum)
    except ProcessLookupError:
        return False
    return True
