"""``torchrun --nproc_per_node=2 -m medot train optiml`` on CPU (gloo) is one data-parallel run,
equal to one process with the same global batch.

Checked exactly: both ranks end with identical tensors (BatchNorm running statistics included: the
statistics are the global batch's on every rank), the saved model is rank 0's, results are printed
once, one 'done' event.

Checked against a one-process run with the same global batch (2 x 3 = 6 images) and seed, to
``atol 5e-5``: BatchNorm uses the global batch's statistics (``CrossRankBatchNorm``, E[x^2] - E[x]^2
from all-reduced sums, where the one-process run uses torch's two-pass BatchNorm) and the
variance/covariance terms gather every rank's rows, so both runs optimise the same loss and differ by
float rounding only (observed: 1.2e-5 max abs after 4 LARS steps), while training moves the weights
by more than 40 x the tolerance (asserted; observed 4.5e-3).
"""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from distributed_train import recording
from medot.cli import main
from medot.data.synthetic import write_pretraining_set
from test_distributed import torchrun

TOLERANCE = 5e-5


@pytest.fixture(scope="module")
def pool(tmp_path_factory):
    return write_pretraining_set(tmp_path_factory.mktemp("pool"), n_pool=12, n_per_class=4, size=40, progress=False).pool


def optiml_args(pool, out, batch_size):
    return [
        "train", "optiml", "--data", str(pool), "--encoder", "tiny", "--image-size", "32", "--epochs", "2",
        "--warmup-epochs", "0", "--batch-size", str(batch_size), "--lr", "2.0", "--device", "cpu",
        "--out", str(out), "--quiet",
    ]


def test_torchrun_pretrains_one_model_equal_to_one_process_with_the_same_global_batch(
    pool, tmp_path, monkeypatch, one_torch_thread
):
    out = tmp_path / "two"
    run, record = torchrun(optiml_args(pool, out, 3), tmp_path, "two")
    assert run.returncode == 0, run.stderr[-3000:]
    assert run.stdout.count("optiml (tiny) on 12 images") == 1
    events = [json.loads(line) for line in (tmp_path / "two_events.jsonl").read_text().splitlines()]
    assert [event["kind"] for event in events].count("done") == 1
    assert json.loads((out / "model.json").read_text())["training"]["world_size"] == 2

    rank0, rank1 = (load_file(str(record / f"final_rank{rank}.safetensors")) for rank in (0, 1))
    assert rank0.keys() == rank1.keys()
    for name in rank0:
        assert torch.equal(rank0[name], rank1[name]), name
    saved = load_file(str(out / "model.safetensors"))
    for name in saved:
        assert torch.equal(saved[name], rank0[name]), name

    single = tmp_path / "single_record"
    single.mkdir()
    monkeypatch.setenv("MEDOT_HOME", str(tmp_path / "single_home"))
    monkeypatch.delenv("MEDOT_EVENTS_FILE", raising=False)
    with recording(single, "0"):
        assert main(optiml_args(pool, tmp_path / "one", 6)) == 0
    reference = load_file(str(single / "final_rank0.safetensors"))
    initial = load_file(str(single / "initial_rank0.safetensors"))
    weights = [name for name in reference if name.endswith("weight") and reference[name].ndim > 1]
    update_one = torch.cat([(reference[n] - initial[n]).flatten() for n in weights])
    update_two = torch.cat([(rank0[n] - initial[n]).flatten() for n in weights])
    assert update_one.abs().max() > 40 * TOLERANCE  # training moved the weights (observed 4.5e-3)
    assert rank0.keys() == reference.keys()
    for name in reference:
        torch.testing.assert_close(rank0[name].float(), reference[name].float(), rtol=0, atol=TOLERANCE, msg=name)
