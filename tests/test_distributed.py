"""One ``medot train`` under ``torchrun`` is one data-parallel run (medot.train.distributed).

The main test launches the real console entry point (``medot.cli.main``, through
tests/distributed_train.py, which only records tensors and cache counts) on 2 CPU processes (gloo)
and compares it with a one-process run of the same global batch. Tolerance for that comparison:
``atol 1e-6`` on the learned prompts. DDP averages the two ranks' mean gradients where the
one-process run averages the 4 rows at once, so the two runs agree up to float32 summation
order (observed ~1e-8 on the tiny task), while training moves the prompts by far more than 1e-6
(asserted). The two ranks themselves must agree exactly.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
from safetensors.torch import load_file

from distributed_train import recording
from medot.cli import build_parser, main
from medot.errors import MedotError
from medot.launch import DISTRIBUTED_HELP, launch_environment
from medot.train import distributed
from test_kmat import write_tiny_task
from tiny_open_clip import write_tiny_biomedclip

TESTS = Path(__file__).parent
TOLERANCE = 1e-6


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return write_tiny_biomedclip(tmp_path_factory.mktemp("tiny_model"))


@pytest.fixture(scope="module")
def task_file(tmp_path_factory):
    return write_tiny_task(tmp_path_factory.mktemp("tiny_task"))


def kmat_args(model_dir: Path, task_file: Path, out: Path, batch_size: int) -> list[str]:
    return [
        "train", "kmat", "--task", str(task_file), "--shots", "4", "--epochs", "3", "--views", "2",
        "--batch-size", str(batch_size), "--lr", "0.05", "--backbone", f"local-dir:{model_dir}",
        "--device", "cpu", "--out", str(out), "--quiet",
    ]


def torchrun_command(args: list[str], tmp_path: Path, name: str) -> tuple[list[str], dict[str, str]]:
    """``torchrun --standalone --nproc_per_node=2 tests/distributed_train.py ARGS`` and its
    environment: its own MEDOT_HOME (empty feature cache), events file and record folder."""
    record = tmp_path / f"{name}_record"
    record.mkdir()
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(TESTS.parent), str(TESTS), os.environ.get("PYTHONPATH", "")]),
        "MEDOT_HOME": str(tmp_path / f"{name}_home"),
        "MEDOT_EVENTS_FILE": str(tmp_path / f"{name}_events.jsonl"),
        "MEDOT_TEST_RECORD": str(record),
        "OMP_NUM_THREADS": "1",
    }
    for variable in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(variable, None)
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
               str(TESTS / "distributed_train.py"), *args]
    return command, env


def torchrun(args: list[str], tmp_path: Path, name: str) -> tuple[subprocess.CompletedProcess, Path]:
    """Run :func:`torchrun_command` to the end; returns it and its record folder."""
    command, env = torchrun_command(args, tmp_path, name)
    # the timeout only turns a hang (ranks waiting on each other) into a failure; not a speed check
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=900), tmp_path / f"{name}_record"


def test_torchrun_trains_one_kmat_model_equal_to_one_process_with_the_same_global_batch(
    model_dir, task_file, tmp_path, monkeypatch, one_torch_thread
):
    out = tmp_path / "two"
    run, record = torchrun(kmat_args(model_dir, task_file, out, batch_size=2), tmp_path, "two")
    assert run.returncode == 0, run.stderr[-3000:]

    # one run's outputs: one model, one metrics file, results printed once, events from rank 0 only
    # (hidden files: medot.checkpoint's previous versions of the same two checkpoints)
    assert sorted(path.name for path in out.rglob("*") if not path.name.startswith(".")) == [
        "metrics.json", "model.json", "model.safetensors", "resume.json", "resume.safetensors"
    ]
    assert run.stdout.count("kmat on tiny") == 1
    events = [json.loads(line) for line in (tmp_path / "two_events.jsonl").read_text().splitlines()]
    assert [event["kind"] for event in events].count("start") == 1
    assert [event["kind"] for event in events].count("done") == 1
    meta = json.loads((out / "model.json").read_text())
    assert meta["training"]["world_size"] == 2

    # the feature cache is filled once: rank 1 only reads what rank 0 wrote
    calls = {rank: [json.loads(line) for line in (record / f"cache_rank{rank}.jsonl").read_text().splitlines()]
             for rank in (0, 1)}
    assert len(calls[0]) == len(calls[1]) and sum(call["misses"] for call in calls[0]) > 0
    assert all(call["misses"] == 0 for call in calls[1])
    assert [call["hits"] for call in calls[1]] == [call["hits"] + call["misses"] for call in calls[0]]

    # both ranks end with the same prompts, and the saved model is them
    rank0, rank1 = (load_file(str(record / f"final_rank{rank}.safetensors")) for rank in (0, 1))
    assert rank0.keys() == rank1.keys()
    for name in rank0:
        assert torch.equal(rank0[name], rank1[name]), name
    saved = load_file(str(out / "model.safetensors"))
    for name in saved:
        assert torch.equal(saved[name], rank0[name]), name

    # ... equal to one process with the same global batch (2 x 2 = 4) and seed
    single = tmp_path / "single_record"
    single.mkdir()
    monkeypatch.setenv("MEDOT_HOME", str(tmp_path / "single_home"))
    monkeypatch.delenv("MEDOT_EVENTS_FILE", raising=False)
    with recording(single, "0"):
        assert main(kmat_args(model_dir, task_file, tmp_path / "one", batch_size=4)) == 0
    reference = load_file(str(single / "final_rank0.safetensors"))
    initial = load_file(str(single / "initial_rank0.safetensors"))
    context = "prompts.context"
    assert (reference[context] - initial[context]).abs().max() > 1000 * TOLERANCE  # training moved them
    for name in reference:
        torch.testing.assert_close(rank0[name], reference[name], rtol=0, atol=TOLERANCE, msg=name)
    assert json.loads((tmp_path / "one" / "model.json").read_text())["training"]["world_size"] == 1


def test_a_failure_on_rank_0_ends_every_rank_with_a_one_line_error(tmp_path, model_dir):
    missing = tmp_path / "no_such_task.json"
    args = ["train", "kmat", "--task", str(missing), "--backbone", f"local-dir:{model_dir}", "--device", "cpu"]
    run, _ = torchrun(args, tmp_path, "failed")
    assert run.returncode != 0
    assert "medot: error: [rank 0/2] no task named" in run.stderr
    assert "medot: error: [rank 1/2] rank 0 failed during preparing the task's data" in run.stderr
    assert not re.search(r'File ".*[/\\]medot[/\\]', run.stderr)  # torchrun's own report, no medot traceback


def test_sigterm_to_torchrun_stops_every_rank_at_one_step_and_rank_0_saves_the_state(tmp_path, model_dir, task_file):
    out, events = tmp_path / "stopped", tmp_path / "stopped_events.jsonl"
    args = kmat_args(model_dir, task_file, out, batch_size=1)
    args[args.index("--epochs") + 1] = "1000"  # far more than runs before the signal
    command, env = torchrun_command(args, tmp_path, "stopped")
    process = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               start_new_session=True)
    try:
        # signal once the first epoch has ended (read from the events file: no timing assumption)
        while process.poll() is None and '"kind":"epoch"' not in (events.read_text() if events.exists() else ""):
            time.sleep(0.2)
        assert process.poll() is None, process.stderr.read()[-3000:]
        process.send_signal(signal.SIGTERM)
        stdout, stderr = process.communicate(timeout=600)  # a hang (ranks left waiting) fails here
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
    assert stderr.count("medot: SIGTERM received: stopping after the current step") == 2  # both ranks
    assert stdout.count("kmat training was cancelled after") == 1
    kinds = [json.loads(line)["kind"] for line in events.read_text().splitlines()]
    assert kinds.count("cancelled") == 1 and "done" not in kinds
    assert sorted(path.name for path in out.iterdir() if not path.name.startswith(".")) == [
        "resume.json", "resume.safetensors"
    ]
    assert not re.search(r'File ".*[/\\]medot[/\\]', stderr)


# ------------------------------------------------------------------ one process, no launcher
@pytest.mark.parametrize(
    ("argv", "refused"),
    [
        (["train", "pradot", "--data", "synthetic"], "'medot train pradot' runs in one process only (PRADOT's"),
        (["benchmark", "kmat", "--task", "synthetic"], "'medot benchmark kmat' runs in one process only"),
        (["predict", "x.png", "--labels", "a,b"], "'medot predict' runs in one process only"),
    ],
)
def test_commands_that_are_not_data_parallel_refuse_a_world_size_above_one(argv, refused, monkeypatch, capsys):
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    assert main(argv) == 2
    error = capsys.readouterr().err
    assert error.startswith(f"medot: error: [rank 1/2] {refused}")
    assert "run it without torchrun" in error
    assert not dist.is_initialized()


def test_train_help_states_the_global_batch_and_learning_rate_rule():
    parser = build_parser()
    train = parser._subparsers._group_actions[0].choices["train"]
    kmat = train._subparsers._group_actions[0].choices["kmat"]
    assert kmat.epilog == DISTRIBUTED_HELP
    assert "the global batch is batch-size x N" in DISTRIBUTED_HELP
    assert "not scaled" in DISTRIBUTED_HELP
    assert kmat.get_default("supports_distributed") is True


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"WORLD_SIZE": "two"}, "WORLD_SIZE='two' is not an integer"),
        ({"WORLD_SIZE": "2", "RANK": "2"}, "inconsistent launcher environment: RANK=2, WORLD_SIZE=2"),
    ],
)
def test_a_broken_launcher_environment_is_a_clear_error(env, message, monkeypatch):
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(MedotError, match=message):
        launch_environment()


@pytest.mark.parametrize(
    ("device", "timeout", "message"),
    [
        ("cuda:1", "", "--device cuda:1 names one GPU for all 2 processes"),
        ("gpu0", "", "--device 'gpu0' is not a torch device"),
        ("cpu", "soon", "MEDOT_DIST_TIMEOUT='soon': give the collective timeout as a positive number"),
    ],
)
def test_a_launch_that_cannot_work_is_refused_before_joining_the_group(device, timeout, message, monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("MEDOT_DIST_TIMEOUT", timeout)
    with pytest.raises(MedotError, match=re.escape(message)):
        with distributed.distributed_session(device):
            pass
    assert not dist.is_initialized()


def test_without_a_launcher_the_helpers_are_one_process_no_ops(monkeypatch):
    for variable in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(variable, raising=False)
    with distributed.distributed_session("cpu") as env:
        assert (env.rank, env.world_size, env.is_distributed) == (0, 1, False)
        assert not dist.is_initialized() and distributed.is_main_process()
        values = torch.tensor([1.0, 2.0])
        assert distributed.all_reduce_sum_(values) is values and values.tolist() == [1.0, 2.0]
        assert distributed.broadcast_from_main(0.25) == 0.25 and distributed.any_rank(True) is True
        with distributed.main_process_first():
            ran = True
        assert ran
