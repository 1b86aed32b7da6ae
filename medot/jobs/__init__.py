"""Few-shot training jobs that run in worker processes and outlive the app.

* :class:`JobManager` - submit, watch, cancel and resume ``medot train <method>`` jobs
  (:mod:`medot.jobs.runner`); arguments checked against :data:`METHOD_ARGUMENTS`, paths confined to
  the data root (:mod:`medot.jobs.arguments`);
* :class:`JobRegistry` / :class:`JobRecord` - the SQLite registry ``$MEDOT_HOME/jobs.sqlite3``
  (:mod:`medot.jobs.registry`);
* the protocol a training command follows as a job - events to ``$MEDOT_EVENTS_FILE``, stop on
  SIGTERM/SIGINT (:func:`event_sink_from_env`, :func:`stop_requested_from_signals`,
  :func:`run_with_job_protocol`; :mod:`medot.jobs.protocol`).

Example::

    manager = JobManager(settings.home, settings.data_root)
    job = manager.submit("kmat", {"dataset": "synthetic", "shots": 4, "epochs": 20})
    manager.progress(job)   # TrainEvent s so far
    manager.cancel(job); manager.resume(job)
"""

from medot.jobs.arguments import METHOD_ARGUMENTS, SYNTHETIC, TRAIN_ARGUMENTS, Argument, capped_arguments, cli_flags
from medot.jobs.protocol import (
    EVENTS_FILE_ENV,
    EXIT_CANCELLED,
    MODEL_FILE,
    event_sink_from_env,
    read_events,
    run_with_job_protocol,
    stop_requested_from_signals,
)
from medot.jobs.registry import JobError, JobRecord, JobRegistry, JobStatus
from medot.jobs.runner import JobManager, medot_train_command

__all__ = [
    "EVENTS_FILE_ENV",
    "EXIT_CANCELLED",
    "METHOD_ARGUMENTS",
    "MODEL_FILE",
    "SYNTHETIC",
    "TRAIN_ARGUMENTS",
    "Argument",
    "capped_arguments",
    "JobError",
    "JobManager",
    "JobRecord",
    "JobRegistry",
    "JobStatus",
    "cli_flags",
    "event_sink_from_env",
    "medot_train_command",
    "read_events",
    "run_with_job_protocol",
    "stop_requested_from_signals",
]
