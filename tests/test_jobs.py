"""Training jobs: worker processes, the SQLite registry, cancel/resume, and an app restart.

The jobs run a tiny fake training command (``FAKE_TRAIN`` below, written into tmp_path) that
follows the job protocol exactly as a method CLI does - :func:`run_with_job_protocol`, hence
:func:`event_sink_from_env` and :func:`stop_requested_from_signals` - so these tests depend on no
method's training command and never load torch in a child.
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import threading
import time
from types import SimpleNamespace

import pytest

from medot.errors import PathNotAllowedError
from medot.jobs import (
    EVENTS_FILE_ENV,
    MODEL_FILE,
    Argument,
    JobError,
    JobManager,
    JobRegistry,
    cli_flags,
    medot_train_command,
    read_events,
)
from medot.jobs.protocol import read_event_records

FAKE_TRAIN = '''
"""Stand-in for `medot train <method>`: one "epoch" per --epoch-seconds, resumable state in
<out>/state.json, the model in <out>/model.safetensors (its bytes are JSON here). While the file
--hold exists, no epoch after the first starts: the test decides when the job may go on."""
import argparse, json, sys, time
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace

from medot.jobs.protocol import run_with_job_protocol


@dataclass
class Event:  # TrainEvent's fields; importing medot.train would load torch into every fake job
    kind: str
    epoch: int
    step: int
    total_epochs: int
    metrics: dict = field(default_factory=dict)
    message: str = ""


def train(args, on_event, should_stop):
    out = Path(args.out)
    state = out / "state.json"
    start = json.loads(state.read_text())["epoch"] if args.resume and state.exists() else 0
    on_event(Event("start", start, start, args.epochs, message=f"from epoch {start}"))
    for epoch in range(start + 1, args.epochs + 1):
        deadline = time.monotonic() + args.epoch_seconds
        while time.monotonic() < deadline or (epoch > 1 and args.hold and Path(args.hold).exists()):
            if should_stop():
                on_event(Event("cancelled", epoch, epoch - 1, args.epochs))
                return SimpleNamespace(status="cancelled")
            time.sleep(0.01)
        if epoch == args.fail_at:
            raise RuntimeError(f"simulated divergence at epoch {epoch}")
        state.write_text(json.dumps({"epoch": epoch}))
        on_event(Event("epoch", epoch, epoch, args.epochs, {"loss": 1.0 / epoch}))
    (out / "model.safetensors").write_text(json.dumps({"epochs": args.epochs, "resumed_from": start}))
    on_event(Event("done", args.epochs, args.epochs, args.epochs))
    return SimpleNamespace(status="completed")


parser = argparse.ArgumentParser()
parser.add_argument("--epochs", type=int, required=True)
parser.add_argument("--epoch-seconds", type=float, default=0.05)
parser.add_argument("--fail-at", type=int, default=0)
parser.add_argument("--dataset", default="synthetic")
parser.add_argument("--hold", default="")
parser.add_argument("--out", required=True)
parser.add_argument("--resume", action="store_true")
args = parser.parse_args()
sys.exit(run_with_job_protocol(lambda on_event, should_stop: train(args, on_event, should_stop)))
'''

FAKE_METHODS = {
    "fake": {
        "epochs": Argument("int", 1, 1000),
        "epoch_seconds": Argument("float", 0.0, 10.0),
        "fail_at": Argument("int", 1, 1000),
        "dataset": Argument("dataset"),
        "hold": Argument("path"),
    }
}

APP = '''
import sys, time
from medot.jobs import Argument, JobManager, cli_flags

FAKE = sys.argv[1]

def command_for(method, arguments, out_dir, resume):
    return [sys.executable, FAKE, *cli_flags(arguments), "--out", str(out_dir), *(["--resume"] if resume else [])]

manager = JobManager(sys.argv[2], sys.argv[3], command_for=command_for, methods={methods!r})
print(manager.submit("fake", {{"epochs": 4, "hold": "hold"}}), flush=True)
time.sleep(60)
'''

DEADLINE_S = 20.0


@pytest.fixture
def setup(tmp_path):
    """The fake script, home, data root, the hold file (created; see FAKE_TRAIN) and
    ``manager(max_parallel=1)`` to make managers; every job still running at the end is stopped."""
    fake = tmp_path / "fake_train.py"
    fake.write_text(textwrap.dedent(FAKE_TRAIN))
    home, data_root = tmp_path / "home", tmp_path / "data"
    data_root.mkdir()
    hold = data_root / "hold"
    hold.touch()
    managers = []

    def command_for(method, arguments, out_dir, resume):
        resume_flag = ["--resume"] if resume else []
        return [sys.executable, str(fake), *cli_flags(arguments), "--out", str(out_dir), *resume_flag]

    def manager(max_parallel=1):
        managers.append(
            JobManager(home, data_root, max_parallel, command_for=command_for, methods=FAKE_METHODS, cancel_grace_s=5.0)
        )
        return managers[-1]

    yield SimpleNamespace(fake=fake, home=home, data_root=data_root, hold=hold, manager=manager)
    if managers:
        for record in managers[-1].registry.jobs("running"):
            managers[-1].cancel(record.id)


def wait_for(condition, what):
    deadline = time.monotonic() + DEADLINE_S
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.02)
    raise AssertionError(f"timed out waiting for {what}")


def wait_status(manager, job, status):
    return wait_for(lambda: (r := manager.get(job)).status == status and r, f"job {job} to be {status}")


def epochs_reported(manager, job):
    return [event.epoch for event in manager.progress(job) if event.kind == "epoch"]


def test_job_reports_progress_and_finishes_with_its_checkpoint(setup):
    manager = setup.manager()
    job = manager.submit("fake", {"epochs": 3, "dataset": "synthetic", "hold": "hold"})
    wait_for(lambda: epochs_reported(manager, job) == [1], "the first epoch's event")
    record = manager.get(job)
    assert record.status == "running" and (record.epoch, record.total_epochs, record.loss) == (1, 3, 1.0)
    setup.hold.unlink()
    record = wait_status(manager, job, "done")
    assert epochs_reported(manager, job) == [1, 2, 3]
    kinds = [event.kind for event in manager.progress(job)]
    assert kinds[0] == "start" and kinds[-1] == "done"
    assert record.checkpoint_path == setup.home / "jobs" / str(job) / MODEL_FILE
    assert json.loads(record.checkpoint_path.read_text()) == {"epochs": 3, "resumed_from": 0}
    assert (record.epoch, record.total_epochs, record.loss) == (3, 3, pytest.approx(1 / 3))
    assert record.arguments == {"epochs": 3, "dataset": "synthetic", "hold": str(setup.hold.resolve())}
    assert record.error is None and record.attempts == 1
    assert record.started_at <= record.finished_at
    assert "--epochs=3" in manager.log_tail(job)  # the command line heads the log


def test_cancel_keeps_resumable_state_and_resume_continues(setup):
    manager = setup.manager()
    job = manager.submit("fake", {"epochs": 4, "hold": "hold"})
    wait_for(lambda: epochs_reported(manager, job), "an epoch")
    record = manager.cancel(job)
    assert record.status == "cancelled" and record.checkpoint_path is None
    assert json.loads((record.job_dir / "state.json").read_text()) == {"epoch": 1}
    assert [e.kind for e in manager.progress(job)][-1] == "cancelled"  # stopped on SIGTERM, not killed
    setup.hold.unlink()
    manager.resume(job)
    with pytest.raises(JobError, match="only interrupted, cancelled or failed"):
        manager.resume(job)
    record = wait_status(manager, job, "done")
    assert record.attempts == 2
    assert json.loads(record.checkpoint_path.read_text()) == {"epochs": 4, "resumed_from": 1}
    assert epochs_reported(manager, job) == [1, 2, 3, 4]  # no epoch lost or repeated
    with pytest.raises(JobError, match="only queued or running"):
        manager.cancel(job)


def test_killed_child_is_interrupted_for_a_new_manager_and_resumable(setup):
    manager = setup.manager()
    job = manager.submit("fake", {"epochs": 3, "hold": "hold"})
    wait_for(lambda: epochs_reported(manager, job), "an epoch")
    os.kill(manager.get(job).pid, signal.SIGKILL)
    restarted = setup.manager()
    record = wait_status(restarted, job, "interrupted")
    assert record.checkpoint_path is None and "resume to continue" in record.error
    setup.hold.unlink()
    restarted.resume(job)
    record = wait_status(restarted, job, "done")
    assert json.loads(record.checkpoint_path.read_text()) == {"epochs": 3, "resumed_from": 1}


def test_app_restart_leaves_live_orphan_running_then_interrupted_and_resumable(setup):
    """The app process dies: its job keeps running (another manager leaves it alone); once the
    job dies too, the new manager marks it interrupted, and resuming finishes it."""
    app_script = APP.format(methods=FAKE_METHODS)
    app = subprocess.Popen(
        [sys.executable, "-c", app_script, str(setup.fake), str(setup.home), str(setup.data_root)],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        job = int(app.stdout.readline())
        manager = setup.manager()
        wait_for(lambda: epochs_reported(manager, job), "an epoch")
        assert manager.get(job).status == "running"  # another app's job: left alone
    finally:
        app.kill()
        app.wait()
        app.stdout.close()
    record = manager.get(job)
    assert record.status == "running"  # the orphan lives on
    os.kill(record.pid, signal.SIGKILL)
    record = wait_status(setup.manager(), job, "interrupted")
    assert "no medot app watched it" in record.error
    setup.hold.unlink()
    manager.resume(job)
    record = wait_status(manager, job, "done")
    assert json.loads(record.checkpoint_path.read_text()) == {"epochs": 4, "resumed_from": 1}


def test_failing_job_reports_the_end_of_its_log(setup):
    manager = setup.manager()
    job = manager.submit("fake", {"epochs": 5, "fail_at": 2})
    record = wait_status(manager, job, "failed")
    assert "exited with status 1" in record.error
    assert "RuntimeError: simulated divergence at epoch 2" in record.error
    assert record.checkpoint_path is None and record.epoch == 1


def test_queue_respects_max_parallel(setup):
    manager = setup.manager(max_parallel=1)
    first = manager.submit("fake", {"epochs": 3})
    second = manager.submit("fake", {"epochs": 3})
    assert [manager.registry.get(job).status for job in (first, second)] == ["running", "queued"]
    seen_running = []

    def both_done():  # raw registry reads: the reaper threads alone must advance the queue
        records = [manager.registry.get(job) for job in (first, second)]
        seen_running.append(sum(r.status == "running" for r in records))
        return all(r.status == "done" for r in records) and records

    one, two = wait_for(both_done, "both jobs")
    assert max(seen_running) == 1
    assert one.finished_at <= two.started_at


def test_arguments_are_checked_and_paths_confined(setup, tmp_path):
    data_root, manager = setup.data_root, setup.manager()
    (data_root / "chest").mkdir()
    (tmp_path / "outside").mkdir()
    (data_root / "escape").symlink_to(tmp_path / "outside")
    for dataset in ("/etc", "../outside", "escape", "chest/../../outside"):
        with pytest.raises(PathNotAllowedError):
            manager.submit("fake", {"epochs": 1, "dataset": dataset})
    for method, args, match in [
        ("nope", {}, "unknown training method 'nope'"),
        ("fake", {"out": "/tmp/x"}, "does not take out"),
        ("fake", {"epochs": 0}, "at least 1"),
        ("fake", {"epochs": 2.5}, "whole number"),
        ("fake", {"epochs": True}, "must be a number"),
        ("fake", {"epoch_seconds": float("nan")}, "finite"),
        ("fake", {"dataset": "missing"}, "does not exist"),
    ]:
        with pytest.raises(JobError, match=match):
            manager.submit(method, args)
    assert manager.list_jobs() == []
    job = manager.submit("fake", {"epochs": "1", "epoch_seconds": 0, "dataset": "chest"})
    assert manager.get(job).arguments == {"epochs": 1, "epoch_seconds": 0.0, "dataset": str((data_root / "chest"))}
    wait_status(manager, job, "done")


def test_command_is_an_argument_list_with_equals_form_flags(tmp_path):
    command = medot_train_command("kmat", {"dataset": "-rf", "batch_size": 8, "amp": True, "x": False}, tmp_path, True)
    assert command[1:5] == ["-m", "medot", "train", "kmat"]
    assert command[5:] == ["--dataset=-rf", "--batch-size=8", "--amp", "--out", str(tmp_path), "--resume"]


def test_events_reader_tolerates_torn_and_partial_lines(tmp_path, monkeypatch):
    from medot.jobs import event_sink_from_env
    from medot.train import TrainEvent

    path = tmp_path / "events.jsonl"
    monkeypatch.delenv(EVENTS_FILE_ENV, raising=False)
    assert event_sink_from_env() is None
    monkeypatch.setenv(EVENTS_FILE_ENV, str(path))
    sink = event_sink_from_env()
    first = TrainEvent("epoch", 1, 10, 3, {"loss": 0.5}, "epoch 1/3")
    sink(first)
    with path.open("a") as handle:
        handle.write('{"kind": "epoch", "epo\n')  # torn by a kill, then closed by the next attempt
        handle.write('{"kind": "step", "epoch": 2, "step": 11, "total_epochs": 3, "future_field": 1}\n')
        handle.write('{"kind": "epoch", "epoch": 2, "st')  # still being written
    events = read_events(path)
    assert events == [first, TrainEvent("step", 2, 11, 3)]
    with path.open("a") as handle:
        handle.write('ep": 20, "total_epochs": 3}\n')
    assert [record["step"] for record in read_event_records(path)] == [10, 11, 20]
    assert read_events(tmp_path / "none.jsonl") == []


def test_reused_pid_is_not_taken_for_the_job(setup):
    """A 'running' job whose pid now belongs to another process (here: this test process, with
    another start token) is interrupted, not left running and never signalled."""
    home = setup.home
    registry = JobRegistry(home / "jobs.sqlite3")
    job = registry.create("fake", {"epochs": 1}, home / "jobs").id
    registry.start_next(1, lambda record: (os.getpid(), "another-boot:0"))
    assert registry.get(job).status == "running"
    assert setup.manager().get(job).status == "interrupted"


def test_registry_refuses_a_newer_schema_and_serves_threads(tmp_path):
    path = tmp_path / "jobs.sqlite3"
    registry = JobRegistry(path)
    ids = []

    def create_many():
        ids.extend(registry.create("fake", {"n": i}, tmp_path / "jobs").id for i in range(10))

    threads = [threading.Thread(target=create_many) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(ids) == list(range(1, 41))
    assert {r.id for r in JobRegistry(path).jobs("queued")} == set(ids)
    assert registry.get(7).log_path == tmp_path / "jobs" / "7" / "train.log"
    with sqlite3.connect(path) as connection:
        assert connection.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        connection.execute("PRAGMA user_version = 99")
    with pytest.raises(JobError, match="newer medot"):
        JobRegistry(path)
    with pytest.raises(JobError, match="no job 99"):
        registry.get(99)


def test_late_report_on_an_old_attempt_changes_nothing(tmp_path):
    """A manager that learns late that attempt 1 ended must not settle attempt 2, which another
    manager started meanwhile by resuming the job."""
    registry = JobRegistry(tmp_path / "jobs.sqlite3")
    job = registry.create("fake", {}, tmp_path / "jobs").id
    registry.start_next(1, lambda record: (101, "boot:1"))
    assert registry.finish(job, 1, "interrupted", error="killed")
    assert registry.requeue_for_resume(job)
    resumed = registry.start_next(1, lambda record: (102, "boot:2"))
    assert (resumed.status, resumed.attempts, resumed.resume, resumed.error) == ("running", 2, True, None)
    assert not registry.finish(job, 1, "interrupted", error="late report on attempt 1")
    assert registry.get(job).status == "running"
    assert registry.finish(job, 2, "done", checkpoint_path=tmp_path / "model.safetensors")
    assert registry.get(job).checkpoint_path == tmp_path / "model.safetensors"
