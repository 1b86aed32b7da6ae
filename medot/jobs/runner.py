"""Training jobs in worker processes, tracked in the registry: :class:`JobManager`.

A job is a ``medot train <method> ... --out <job dir>`` command run as a child process (argument
list, no shell; stdout and stderr to ``<job dir>/train.log``; progress through the events file of
:mod:`medot.jobs.protocol`), so heavy training never runs in the app process and a crashing job
cannot take the app down. Its exit decides its status:

* stopped by :meth:`JobManager.cancel` -> cancelled (its resumable state stays), unless it had
  already finished: a cancel arriving after the model was written leaves the job done;
* exited 0 having written ``model.safetensors`` -> done (``checkpoint_path`` = that file);
* stopped by a signal from outside (exit 75 or 130, or killed by one) -> interrupted;
* any other exit status -> failed (``error`` = the reason its log gives on the first line, then
  the end of its log).

A job whose process is no child of this app - the app restarted - is left running while its
process (checked by pid *and* start token, :mod:`medot.jobs.processes`) lives, and once it is gone
is judged by its last event: "done" with a model -> done, "error" -> failed, else interrupted.
Interrupted, cancelled and failed jobs :meth:`~JobManager.resume` in the same job directory with
``--resume``. At most ``max_parallel`` jobs run at once; the others wait, queued, and start (oldest
first) as running ones end - a thread per child reaps it the moment it exits.

Jobs have owners (:attr:`JobRecord.owner`): a request made for an ``owner`` (an app user or
session) may cancel or resume only that owner's jobs; a request without one is the local
operator's and may act on any job.

The child gets the manager's ``MEDOT_HOME`` and ``MEDOT_DATA_ROOT`` and unbuffered output, and stays
in the app's process group: Ctrl-C on the app also stops its jobs cleanly (they become interrupted).
"""

from __future__ import annotations

import os
import shlex
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

from medot.jobs.arguments import METHOD_ARGUMENTS, Argument, cli_flags, validate_arguments
from medot.jobs.datasets import check_job_dataset
from medot.jobs.processes import job_process_state, process_token, signal_job_process
from medot.jobs.protocol import EVENTS_FILE_ENV, EXIT_CANCELLED, MODEL_FILE, read_event_records, read_events
from medot.jobs.registry import REGISTRY_FILE, JobError, JobRecord, JobRegistry, JobStatus

if TYPE_CHECKING:
    from medot.train import TrainEvent

CommandBuilder = Callable[[str, Mapping[str, Any], Path, bool], list[str]]
"""``(method, checked arguments, job dir, resume) -> argv`` of a job's training command."""

EXIT_KEYBOARD_INTERRUPT = 130  # medot.cli's status after a KeyboardInterrupt (a second stop signal)
LOG_TAIL_LINES = 20
_LOG_TAIL_BYTES = 64 * 1024
_KILL_WAIT_S = 5.0
_POLL_S = 0.05


def medot_train_command(method: str, arguments: Mapping[str, Any], out_dir: Path, resume: bool) -> list[str]:
    """``python -m medot train <method> --name=value ... --out <out_dir> [--resume]``."""
    command = [sys.executable, "-m", "medot", "train", method, *cli_flags(arguments), "--out", str(out_dir)]
    return [*command, "--resume"] if resume else command


class _Outcome(NamedTuple):
    status: JobStatus
    error: str | None = None
    checkpoint: Path | None = None


class JobManager:
    """Submits, watches, cancels and resumes training jobs of the registry ``home/jobs.sqlite3``
    (job directories under ``home/jobs``); user paths must lie under ``data_root``; at most
    ``max_active`` jobs may be queued or running at once, at most ``max_active_per_owner`` of
    them one owner's (None: no limit).

    Safe to share between threads; several managers (processes) may use one registry. Creating one
    reconciles the registry at once (jobs left running by a previous app become interrupted once
    their process is gone) and starts queued jobs.
    """

    def __init__(
        self,
        home: str | os.PathLike,
        data_root: str | os.PathLike,
        max_parallel: int = 1,
        *,
        command_for: CommandBuilder = medot_train_command,
        methods: Mapping[str, Mapping[str, Argument]] = METHOD_ARGUMENTS,
        cancel_grace_s: float = 15.0,
        max_active: int | None = None,
        max_active_per_owner: int | None = None,
    ) -> None:
        if max_parallel < 1:
            raise ValueError(f"max_parallel must be >= 1, got {max_parallel}")
        self.home = Path(home).expanduser().resolve()
        self.data_root = Path(data_root).expanduser().resolve()
        self.jobs_dir = self.home / "jobs"
        self.max_parallel = max_parallel
        self.command_for = command_for
        self.methods = methods
        self.cancel_grace_s = cancel_grace_s
        self.max_active = max_active
        self.max_active_per_owner = max_active_per_owner
        self.registry = JobRegistry(self.home / REGISTRY_FILE)
        self._lock = threading.RLock()
        self._children: dict[int, tuple[int, subprocess.Popen]] = {}  # job id -> (attempt, its process)
        self.refresh()

    # ------------------------------------------------------------------ requests
    def submit(self, method: str, args: Mapping[str, Any], owner: str | None = None) -> int:
        """Queue a ``method`` training job of ``owner`` (None: the operator) with ``args`` (checked
        by :func:`~medot.jobs.arguments.validate_arguments`, its dataset by
        :func:`~medot.jobs.datasets.check_job_dataset`) and start it if a slot is free."""
        arguments = validate_arguments(method, args, self.data_root, self.methods)
        check_job_dataset(method, arguments, self.home, self.data_root)
        job_id = self.registry.create(method, arguments, self.jobs_dir, max_active=self.max_active, owner=owner,
                                      max_owner_active=self.max_active_per_owner).id
        self.refresh()
        return job_id

    def cancel(self, job_id: int, owner: str | None = None) -> JobRecord:
        """Cancel a queued job, or stop a running one: SIGTERM (it saves its resumable state and
        exits), then SIGKILL if it has not exited after ``cancel_grace_s`` seconds. Returns once
        the process is gone. With an ``owner``, only that owner's jobs (:meth:`owned`)."""
        self.owned(job_id, owner, "cancel")
        with self._lock:
            if self.registry.cancel_queued(job_id):
                return self.registry.get(job_id)
            if not self.registry.request_cancel(job_id):
                status = self.registry.get(job_id).status
                raise JobError(f"job {job_id} is {status}: only queued or running jobs can be cancelled")
            record = self.registry.get(job_id)
            process = self._child_of(record)
        if process is not None:
            _stop_child(process, self.cancel_grace_s)
        else:
            _stop_foreign(record, self.cancel_grace_s)
        self.refresh()
        return self.registry.get(job_id)

    def resume(self, job_id: int, owner: str | None = None) -> JobRecord:
        """Queue an interrupted, cancelled or failed job again; it re-runs with ``--resume`` in its
        job directory, continuing from its last saved state. With an ``owner``, only that owner's
        jobs (:meth:`owned`)."""
        self.owned(job_id, owner, "resume")
        with self._lock:
            if not self.registry.requeue_for_resume(job_id):
                status = self.registry.get(job_id).status
                raise JobError(f"job {job_id} is {status}: only interrupted, cancelled or failed jobs can be resumed")
            self.refresh()
            return self.registry.get(job_id)

    def owned(self, job_id: int, owner: str | None, action: str = "change") -> JobRecord:
        """The job, if ``owner`` may ``action`` it: its own jobs, or any job when ``owner`` is None
        (the operator); raises :class:`JobError` otherwise."""
        record = self.registry.get(job_id)
        if owner is not None and record.owner != owner:
            who = "outside the app (by the operator)" if record.owner is None else "by someone else"
            raise JobError(f"job {job_id} was launched {who}: you can only {action} your own jobs")
        return record

    # ------------------------------------------------------------------ views
    def get(self, job_id: int) -> JobRecord:
        self.refresh()
        return self.registry.get(job_id)

    def list_jobs(self) -> list[JobRecord]:
        """All jobs, newest first, after a :meth:`refresh`."""
        self.refresh()
        return self.registry.jobs()

    def progress(self, job_id: int) -> list[TrainEvent]:
        """The job's events so far, all attempts, oldest first (a line still being written is left out)."""
        return read_events(self.registry.get(job_id).events_path)

    def log_tail(self, job_id: int, n: int = LOG_TAIL_LINES) -> str:
        """The last ``n`` lines of the job's log, progress-bar redraws collapsed to their last state."""
        return _tail(self.registry.get(job_id).log_path, n)

    # ------------------------------------------------------------------ bookkeeping
    def refresh(self) -> None:
        """Settle the jobs whose process has ended, record the progress of the others, and start
        queued jobs while fewer than ``max_parallel`` run."""
        with self._lock:
            for record in self.registry.jobs("running"):
                self._reconcile(record)
            while self.registry.start_next(self.max_parallel, self._launch) is not None:
                continue

    def _child_of(self, record: JobRecord) -> subprocess.Popen | None:
        """Our child running ``record``'s current attempt, if any (a child left from an earlier
        attempt, settled and resumed by another manager meanwhile, is forgotten)."""
        attempt, process = self._children.get(record.id, (None, None))
        if process is not None and attempt != record.attempts:
            del self._children[record.id]
            return None
        return process

    def _reconcile(self, record: JobRecord) -> None:
        process = self._child_of(record)
        if process is not None:
            code = process.poll()
            ended = code is not None
        else:  # no child of ours: its exit status is unknown
            code = None
            ended = job_process_state(record.pid, record.process_token) == "exited"
        self._note_progress(record)
        if not ended:
            return
        self._children.pop(record.id, None)
        outcome = self._judge_by_events(record) if code is None else self._judge_by_exit(record, code)
        # a cancel that arrives after the job finished (its model written) changes nothing: done stays done
        if outcome.status != "done" and self.registry.get(record.id).cancel_requested:  # may be flagged late
            outcome = _Outcome("cancelled")
        self.registry.finish(
            record.id, record.attempts, outcome.status, error=outcome.error, checkpoint_path=outcome.checkpoint
        )

    def _judge_by_exit(self, record: JobRecord, code: int) -> _Outcome:
        if code == 0:
            return _finished(record)
        if code < 0:
            return _Outcome("interrupted", f"stopped by {_signal_name(-code)} before finishing; resume to continue")
        if code in (EXIT_CANCELLED, EXIT_KEYBOARD_INTERRUPT):
            return _Outcome("interrupted", f"stopped by a signal from outside (exit status {code}); resume to continue")
        tail = self.log_tail(record.id)
        return _Outcome(
            "failed", f"{_reason(tail)} (the training command exited with status {code}); its log ends:\n{tail}"
        )

    def _judge_by_events(self, record: JobRecord) -> _Outcome:
        events = read_event_records(record.events_path)
        last = events[-1] if events else {}
        if last.get("kind") == "done":
            return _finished(record)
        if last.get("kind") == "error":
            return _Outcome("failed", f"{last.get('message', '')}; its log ends:\n{self.log_tail(record.id)}")
        return _Outcome(
            "interrupted",
            "the process ended while no medot app watched it (the app restarted, or it was killed); resume to continue",
        )

    def _note_progress(self, record: JobRecord) -> None:
        """Copy the last epoch, epoch count and loss of the job's events into its record."""
        epoch, total, loss = record.epoch, record.total_epochs, record.loss
        for event in read_event_records(record.events_path):
            epoch, total = event.get("epoch", epoch), event.get("total_epochs", total)
            metrics = event.get("metrics")
            if isinstance(metrics, dict) and isinstance(metrics.get("loss"), (int, float)):
                loss = float(metrics["loss"])
        if (epoch, total, loss) != (record.epoch, record.total_epochs, record.loss):
            self.registry.note_progress(record.id, epoch, total, loss)

    def _launch(self, record: JobRecord) -> tuple[int, str | None]:
        """Start ``record``'s command (called by the registry inside its start transaction)."""
        record.job_dir.mkdir(parents=True, exist_ok=True)
        _end_torn_line(record.events_path)
        command = self.command_for(record.method, record.arguments, record.job_dir, record.resume)
        environment = {
            **os.environ,
            EVENTS_FILE_ENV: str(record.events_path),
            "MEDOT_HOME": str(self.home),
            "MEDOT_DATA_ROOT": str(self.data_root),
            "PYTHONUNBUFFERED": "1",
        }
        header = (
            f"=== medot job {record.id}, attempt {record.attempts + 1}{' (resume)' if record.resume else ''}, "
            f"{datetime.now().astimezone().isoformat(timespec='seconds')}: {shlex.join(command)}\n"
        )
        with record.log_path.open("a", encoding="utf-8") as log:
            log.write(header)
            log.flush()
            process = subprocess.Popen(
                command, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, env=environment
            )
        self._children[record.id] = (record.attempts + 1, process)
        threading.Thread(target=self._reap, args=(process,), name=f"medot-job-{record.id}", daemon=True).start()
        return process.pid, process_token(process.pid)

    def _reap(self, process: subprocess.Popen) -> None:
        process.wait()
        self.refresh()


def _finished(record: JobRecord) -> _Outcome:
    model = record.job_dir / MODEL_FILE
    if model.is_file():
        return _Outcome("done", checkpoint=model)
    return _Outcome("failed", f"the training command ended without writing its model {model}")


def _stop_child(process: subprocess.Popen, grace_s: float) -> None:
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout=grace_s)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def _stop_foreign(record: JobRecord, grace_s: float) -> None:
    """Stop a job process this app did not start, signalling it only while it is still that job's."""
    for signum, wait_s in ((signal.SIGTERM, grace_s), (signal.SIGKILL, _KILL_WAIT_S)):
        if not signal_job_process(record.pid, record.process_token, signum):
            return
        deadline = time.monotonic() + wait_s
        while time.monotonic() < deadline:
            if job_process_state(record.pid, record.process_token) == "exited":
                return
            time.sleep(_POLL_S)


def _end_torn_line(events_path: Path) -> None:
    """Close a line a killed attempt left half-written, so the next attempt's first event starts
    a line of its own (the torn one is then skipped as unreadable)."""
    try:
        with events_path.open("rb") as handle:
            handle.seek(-1, os.SEEK_END)
            torn = handle.read(1) != b"\n"
    except OSError:  # no file yet, or an empty one
        return
    if torn:
        with events_path.open("ab") as handle:
            handle.write(b"\n")


def _tail(path: Path, n: int) -> str:
    try:
        with path.open("rb") as handle:
            size = handle.seek(0, os.SEEK_END)
            handle.seek(max(0, size - _LOG_TAIL_BYTES))
            data = handle.read()
    except FileNotFoundError:
        return ""
    lines = data.decode("utf-8", "replace").split("\n")
    if size > _LOG_TAIL_BYTES:
        lines = lines[1:]  # cut mid-line
    shown = []
    for line in lines:
        redraws = [part for part in line.split("\r") if part.strip()]
        if redraws:
            shown.append(redraws[-1])
    return "\n".join(shown[max(0, len(shown) - n) :])


def _reason(log_tail: str) -> str:
    """The line of a failed command's log that says why: its last ``medot: error:`` line (what the
    CLI prints for a user error), else the last line of a traceback, else the last line."""
    lines = [line.strip() for line in log_tail.splitlines() if line.strip()]
    for line in reversed(lines):
        if line.startswith("medot: error:"):
            return line.removeprefix("medot: error:").strip()
    return lines[-1] if lines else "no output"


def _signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"
