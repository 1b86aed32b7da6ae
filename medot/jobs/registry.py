"""The job registry: one SQLite file (``$MEDOT_HOME/jobs.sqlite3``) that outlives the app.

A job's life::

    queued --start--> running --exit 0, model written--> done
                         |------non-zero exit / error event--> failed
                         |------cancel()--> cancelled
                         '------killed, stopped from outside, app gone--> interrupted
    interrupted / cancelled / failed --resume()--> queued (re-run with --resume)

Every transition is one compare-and-set ``UPDATE ... WHERE status = ?``, so several threads or
processes (the app, a second app, a test) never move a job twice; starting a job happens inside
a ``BEGIN IMMEDIATE`` transaction that also counts the running jobs, so the parallelism limit
holds across processes. Each call opens its own connection (WAL journal: readers never wait for
the writer). The schema version is SQLite's ``user_version`` (a version-1 registry gains the
``owner`` column when opened; its jobs have no owner); only parameterised SQL is used.

A job's ``owner`` is who launched it: an app user or session (``user:<login>`` /
``session:<hash>``), or None for the local operator (the Python API, ``medot train``).
"""

from __future__ import annotations

import json
import os
import sqlite3
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Literal

from medot.errors import MedotError

JobStatus = Literal["queued", "running", "done", "failed", "cancelled", "interrupted"]
RESUMABLE: tuple[JobStatus, ...] = ("interrupted", "cancelled", "failed")
REGISTRY_FILE = "jobs.sqlite3"
SCHEMA_VERSION = 2
LOG_FILE = "train.log"
EVENTS_FILE = "events.jsonl"

_SCHEMA = """
CREATE TABLE jobs (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    method TEXT NOT NULL,
    arguments TEXT NOT NULL,
    status TEXT NOT NULL CHECK (status IN ('queued', 'running', 'done', 'failed', 'cancelled', 'interrupted')),
    resume INTEGER NOT NULL DEFAULT 0,
    attempts INTEGER NOT NULL DEFAULT 0,
    cancel_requested INTEGER NOT NULL DEFAULT 0,
    pid INTEGER,
    process_token TEXT,
    created_at TEXT NOT NULL,
    started_at TEXT,
    finished_at TEXT,
    job_dir TEXT NOT NULL,
    log_path TEXT NOT NULL,
    events_path TEXT NOT NULL,
    checkpoint_path TEXT,
    epoch INTEGER,
    total_epochs INTEGER,
    loss REAL,
    error TEXT,
    owner TEXT
);
CREATE INDEX jobs_by_status ON jobs (status, id);
"""


class JobError(MedotError):
    """A job request that cannot be honoured (unknown job or method, bad argument, wrong state)."""


@dataclass(frozen=True)
class JobRecord:
    """One row of the registry. ``epoch``/``total_epochs``/``loss`` are the last progress read from
    the job's events; ``error`` says why a job failed or was interrupted; ``owner`` is who launched it
(None: the local operator); ``resume`` is set when
    the next start must pass ``--resume``; ``process_token`` guards ``pid`` against reuse
    (:mod:`medot.jobs.processes`)."""

    id: int
    method: str
    arguments: dict[str, Any]
    status: JobStatus
    resume: bool
    attempts: int
    cancel_requested: bool
    pid: int | None
    process_token: str | None
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    job_dir: Path
    log_path: Path
    events_path: Path
    checkpoint_path: Path | None
    epoch: int | None
    total_epochs: int | None
    loss: float | None
    error: str | None
    owner: str | None = None

    @classmethod
    def from_row(cls, row: sqlite3.Row) -> JobRecord:
        return cls(
            id=row["id"],
            method=row["method"],
            arguments=json.loads(row["arguments"]),
            status=row["status"],
            resume=bool(row["resume"]),
            attempts=row["attempts"],
            cancel_requested=bool(row["cancel_requested"]),
            pid=row["pid"],
            process_token=row["process_token"],
            created_at=datetime.fromisoformat(row["created_at"]),
            started_at=_time_or_none(row["started_at"]),
            finished_at=_time_or_none(row["finished_at"]),
            job_dir=Path(row["job_dir"]),
            log_path=Path(row["log_path"]),
            events_path=Path(row["events_path"]),
            checkpoint_path=None if row["checkpoint_path"] is None else Path(row["checkpoint_path"]),
            epoch=row["epoch"],
            total_epochs=row["total_epochs"],
            loss=row["loss"],
            error=row["error"],
            owner=row["owner"],
        )


Launcher = Callable[[JobRecord], tuple[int, str | None]]
"""Starts a claimed job's process and returns its ``(pid, start token)``; raises OSError if it cannot."""


class JobRegistry:
    """The jobs table in ``path`` (created, or checked against :data:`SCHEMA_VERSION`)."""

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self._connect() as connection:
            connection.execute("PRAGMA journal_mode=WAL")
            with _transaction(connection):
                version = connection.execute("PRAGMA user_version").fetchone()[0]
                if version > SCHEMA_VERSION:
                    raise JobError(
                        f"{self.path} was written by a newer medot (schema {version}, this one reads "
                        f"{SCHEMA_VERSION}): upgrade medot or point MEDOT_HOME elsewhere"
                    )
                if version == 0:
                    for statement in filter(str.strip, _SCHEMA.split(";")):
                        connection.execute(statement)
                elif version == 1:  # before jobs had owners: the existing jobs keep none (the operator's)
                    connection.execute("ALTER TABLE jobs ADD COLUMN owner TEXT")
                if version < SCHEMA_VERSION:
                    # PRAGMA takes no parameters; SCHEMA_VERSION is a constant int
                    connection.execute(f"PRAGMA user_version = {SCHEMA_VERSION:d}")

    @contextmanager
    def _connect(self) -> Iterator[sqlite3.Connection]:
        connection = sqlite3.connect(self.path, timeout=30.0, isolation_level=None)
        connection.row_factory = sqlite3.Row
        try:
            yield connection
        finally:
            connection.close()

    # ------------------------------------------------------------------ reads
    def get(self, job_id: int) -> JobRecord:
        with self._connect() as connection:
            row = connection.execute("SELECT * FROM jobs WHERE id = ?", (job_id,)).fetchone()
        if row is None:
            raise JobError(f"there is no job {job_id}")
        return JobRecord.from_row(row)

    def jobs(self, status: JobStatus | None = None) -> list[JobRecord]:
        """Jobs, newest first (only those in ``status`` when given)."""
        with self._connect() as connection:
            if status is None:
                rows = connection.execute("SELECT * FROM jobs ORDER BY id DESC").fetchall()
            else:
                rows = connection.execute("SELECT * FROM jobs WHERE status = ? ORDER BY id DESC", (status,)).fetchall()
        return [JobRecord.from_row(row) for row in rows]

    # ------------------------------------------------------------------ transitions
    def create(self, method: str, arguments: dict[str, Any], jobs_dir: Path, max_active: int | None = None,
               *, owner: str | None = None, max_owner_active: int | None = None) -> JobRecord:
        """A new queued job of ``owner`` whose files live in ``jobs_dir/<id>``; refused
        (:class:`JobError`) when ``max_active`` jobs in all, or ``max_owner_active`` jobs of
        ``owner``, are already queued or running (counted in the same transaction)."""
        with self._connect() as connection, _transaction(connection):
            if owner is not None and max_owner_active is not None:
                mine = [row[0] for row in connection.execute(
                    "SELECT id FROM jobs WHERE status IN ('queued', 'running') AND owner = ? ORDER BY id", (owner,)
                )]
                if len(mine) >= max_owner_active:
                    raise JobError(
                        f"you already have {len(mine)} job(s) queued or running ({', '.join(map(str, mine))}), "
                        f"the most one user may have ({max_owner_active}); wait for one to finish or cancel one"
                    )
            if max_active is not None:
                active = connection.execute(
                    "SELECT COUNT(*) FROM jobs WHERE status IN ('queued', 'running')"
                ).fetchone()[0]
                if active >= max_active:
                    raise JobError(
                        f"{active} jobs are already queued or running here, the most this app allows "
                        f"({max_active}); wait for one to finish or cancel one"
                    )
            cursor = connection.execute(
                "INSERT INTO jobs (method, arguments, status, created_at, job_dir, log_path, events_path, owner) "
                "VALUES (?, ?, 'queued', ?, '', '', '', ?)",
                (method, json.dumps(arguments, sort_keys=True), _now(), owner),
            )
            job_id = cursor.lastrowid
            job_dir = Path(jobs_dir) / str(job_id)
            connection.execute(
                "UPDATE jobs SET job_dir = ?, log_path = ?, events_path = ? WHERE id = ?",
                (str(job_dir), str(job_dir / LOG_FILE), str(job_dir / EVENTS_FILE), job_id),
            )
        return self.get(job_id)

    def start_next(self, max_running: int, launch: Launcher) -> JobRecord | None:
        """Start the oldest queued job with ``launch`` unless ``max_running`` jobs already run;
        the job that was started (or, when ``launch`` raised OSError, marked failed), else None."""
        with self._connect() as connection, _transaction(connection):
            running = connection.execute("SELECT COUNT(*) FROM jobs WHERE status = 'running'").fetchone()[0]
            if running >= max_running:
                return None
            row = connection.execute("SELECT * FROM jobs WHERE status = 'queued' ORDER BY id LIMIT 1").fetchone()
            if row is None:
                return None
            record = JobRecord.from_row(row)
            try:
                pid, token = launch(record)
            except OSError as error:
                connection.execute(
                    "UPDATE jobs SET status = 'failed', finished_at = ?, error = ? WHERE id = ?",
                    (_now(), f"could not start the training command: {error}", record.id),
                )
            else:
                connection.execute(
                    "UPDATE jobs SET status = 'running', pid = ?, process_token = ?, started_at = ?, "
                    "finished_at = NULL, attempts = attempts + 1, cancel_requested = 0, error = NULL WHERE id = ?",
                    (pid, token, _now(), record.id),
                )
        return self.get(record.id)

    def note_progress(self, job_id: int, epoch: int | None, total_epochs: int | None, loss: float | None) -> None:
        with self._connect() as connection:
            connection.execute(
                "UPDATE jobs SET epoch = ?, total_epochs = ?, loss = ? WHERE id = ?",
                (epoch, total_epochs, loss, job_id),
            )

    def finish(
        self,
        job_id: int,
        attempt: int,
        status: JobStatus,
        *,
        error: str | None = None,
        checkpoint_path: Path | None = None,
    ) -> bool:
        """Move a job running its ``attempt``-th attempt to ``status``; False when it no longer is
        (already settled, or settled and resumed: a late report on an old attempt changes nothing)."""
        checkpoint = None if checkpoint_path is None else str(checkpoint_path)
        return self._transition(
            "UPDATE jobs SET status = ?, finished_at = ?, error = ?, checkpoint_path = ? "
            "WHERE id = ? AND status = 'running' AND attempts = ?",
            (status, _now(), error, checkpoint, job_id, attempt),
        )

    def request_cancel(self, job_id: int) -> bool:
        """Flag a running job as cancelled by the user (before it is signalled); False if not running."""
        return self._transition(
            "UPDATE jobs SET cancel_requested = 1 WHERE id = ? AND status = 'running'", (job_id,)
        )

    def cancel_queued(self, job_id: int) -> bool:
        return self._transition(
            "UPDATE jobs SET status = 'cancelled', finished_at = ? WHERE id = ? AND status = 'queued'", (_now(), job_id)
        )

    def requeue_for_resume(self, job_id: int) -> bool:
        """Queue an interrupted, cancelled or failed job again, to start with ``--resume``."""
        return self._transition(
            "UPDATE jobs SET status = 'queued', resume = 1, pid = NULL, process_token = NULL, finished_at = NULL, "
            "error = NULL, checkpoint_path = NULL WHERE id = ? AND status IN (?, ?, ?)",
            (job_id, *RESUMABLE),
        )

    def _transition(self, sql: str, parameters: tuple[Any, ...]) -> bool:
        with self._connect() as connection:
            return connection.execute(sql, parameters).rowcount == 1


@contextmanager
def _transaction(connection: sqlite3.Connection) -> Iterator[None]:
    """``BEGIN IMMEDIATE`` (take the write lock now) ... ``COMMIT``, or ``ROLLBACK`` on error."""
    connection.execute("BEGIN IMMEDIATE")
    try:
        yield
    except BaseException:
        connection.execute("ROLLBACK")
        raise
    connection.execute("COMMIT")


def _now() -> str:
    return datetime.now(timezone.utc).isoformat()


def _time_or_none(text: str | None) -> datetime | None:
    return None if text is None else datetime.fromisoformat(text)

