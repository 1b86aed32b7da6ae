"""How a training command run as a job reports progress and obeys a stop request.

The contract between :class:`medot.jobs.JobManager` and a ``medot train <method>`` command:

* the manager runs ``medot train <method> ... --out <job dir> [--resume]`` in a child process with
  :data:`EVENTS_FILE_ENV` set to ``<job dir>/events.jsonl``; the command appends one JSON object
  per :class:`~medot.train.TrainEvent` (its fields ``kind, epoch, step, total_epochs, metrics,
  message``), one line each, flushed as it happens (:func:`event_sink_from_env`);
* a stop request is SIGTERM (the app's Cancel) or SIGINT (Ctrl-C): the command finishes the
  current optimiser step, saves its resumable state and exits with :data:`EXIT_CANCELLED`
  (:func:`stop_requested_from_signals` is the ``should_stop`` of :meth:`medot.train.Trainer.fit`);
  a second signal stops at once;
* a finished run writes its model to ``<job dir>/model`` (:data:`MODEL_FILE` and its JSON sidecar,
  what :class:`~medot.train.Trainer` writes with ``checkpoint_dir=<job dir>``) and exits with 0;
  any other exit status is a failure, explained by the job's log (the command's stdout/stderr);
* ``--resume`` continues from ``<job dir>``'s resumable state (``Trainer.fit(resume=True)``).

A method CLI keeps to one line with :func:`run_with_job_protocol`::

    return run_with_job_protocol(lambda on_event, should_stop: train(args, on_event, should_stop))

This module imports nothing heavy: the app reads events without loading torch, except
:func:`read_events`, which builds :class:`~medot.train.TrainEvent` objects.
"""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import threading
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from medot.train import EventHandler, TrainEvent, TrainResult

EVENTS_FILE_ENV = "MEDOT_EVENTS_FILE"
EXIT_CANCELLED = 75  # EX_TEMPFAIL (sysexits.h): stopped on request, run again with --resume to continue
MODEL_FILE = "model.safetensors"

_stop_requested = threading.Event()


def encode_event(event: TrainEvent) -> str:
    """One line of the events file (with its newline)."""
    return json.dumps(dataclasses.asdict(event), separators=(",", ":")) + "\n"


def event_sink_from_env() -> EventHandler | None:
    """An ``on_event`` handler that appends each event to ``$MEDOT_EVENTS_FILE``, or None when the
    variable is unset (the command was not started as a job). Each line is written and flushed by
    one ``open(..., "a")`` so a reader sees whole lines, save possibly the one being written."""
    path = os.environ.get(EVENTS_FILE_ENV)
    if not path:
        return None
    events_file = Path(path)

    def append(event: TrainEvent) -> None:
        with events_file.open("a", encoding="utf-8") as handle:
            handle.write(encode_event(event))

    return append


def _request_stop(signum: int, frame: Any) -> None:
    if _stop_requested.is_set():
        raise KeyboardInterrupt
    _stop_requested.set()
    name = signal.Signals(signum).name
    # os.write, not print: the handler may interrupt a write to stderr (progress bars)
    os.write(2, f"\nmedot: {name} received: stopping after the current step (again to stop at once)\n".encode())


def stop_requested_from_signals() -> Callable[[], bool]:
    """Make SIGTERM and SIGINT request a stop, and return the callable that tells whether one was
    requested (``should_stop`` for :meth:`medot.train.Trainer.fit`). A second signal raises
    :class:`KeyboardInterrupt` at once. Signals are per process, so so is the flag; call this from
    the main thread."""
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, _request_stop)
    return _stop_requested.is_set


def run_with_job_protocol(train: Callable[[EventHandler | None, Callable[[], bool]], TrainResult]) -> int:
    """Run ``train(on_event, should_stop)`` under the job protocol and return the exit status:
    0 when it finished, :data:`EXIT_CANCELLED` when it stopped on a signal."""
    result = train(event_sink_from_env(), stop_requested_from_signals())
    return EXIT_CANCELLED if result.status == "cancelled" else 0


def read_event_records(path: str | os.PathLike) -> list[dict[str, Any]]:
    """The JSON objects of an events file, oldest first. A last line without its newline is still
    being written and is left for the next read; a line that is not a JSON object (the torn end of
    a killed attempt) is skipped. A missing file has no events."""
    try:
        data = Path(path).read_bytes()
    except FileNotFoundError:
        return []
    complete = data[: data.rfind(b"\n") + 1]
    records = []
    for line in complete.splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if isinstance(record, dict):
            records.append(record)
    return records


def read_events(path: str | os.PathLike) -> list[TrainEvent]:
    """:func:`read_event_records` as :class:`~medot.train.TrainEvent` objects; fields unknown to
    this version are dropped and records missing a required field skipped."""
    from medot.train.events import TrainEvent

    names = {field.name for field in dataclasses.fields(TrainEvent)}
    events = []
    for record in read_event_records(path):
        try:
            events.append(TrainEvent(**{name: value for name, value in record.items() if name in names}))
        except TypeError:
            continue
    return events
