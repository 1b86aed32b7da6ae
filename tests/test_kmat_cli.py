"""`medot train kmat` / `medot benchmark kmat` on a tiny synthetic task, checkpoint round trip,
cancellation and resume (tiny BiomedCLIP-shaped backbone with random weights)."""

from __future__ import annotations

import argparse
import csv
import json

import pytest
import torch

from medot.checkpoint import load_checkpoint, save_checkpoint
from medot.data.io import read_image
from medot.errors import CheckpointError, MedotError
from medot.methods.kmat.cli import register
from medot.methods.kmat.model import KMaTConfig
from medot.methods.kmat.predictor import load_kmat_predictor
from medot.methods.kmat.runner import METHODS, RunConfig, TrainingCancelled, fit_method, run_method
from medot.methods.prompt_learning.crossmodal import resolve_task
from medot.methods.prompt_learning.features import encode_records
from medot.methods.prompt_learning.knowledge import embed_descriptions
from medot.methods.prompt_learning.prompts import LOW
from medot.train import FeatureCache
from test_kmat import write_tiny_task
from tiny_open_clip import write_tiny_biomedclip


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return write_tiny_biomedclip(tmp_path_factory.mktemp("tiny_model"))


def _backbone(model_dir):
    from medot.backbones import create_backbone

    return create_backbone(f"local-dir:{model_dir}", "cpu")


@pytest.fixture(scope="module")
def backbone(model_dir):
    return _backbone(model_dir)


@pytest.fixture(scope="module")
def task_file(tmp_path_factory):
    return write_tiny_task(tmp_path_factory.mktemp("tiny_task"))


def medot(*argv: str) -> int:
    parser = argparse.ArgumentParser()
    commands = parser.add_subparsers(dest="command", required=True)
    train = commands.add_parser("train").add_subparsers(dest="method", required=True)
    benchmark = commands.add_parser("benchmark").add_subparsers(dest="method", required=True)
    register(commands, train, benchmark)
    args = parser.parse_args(list(argv))
    return args.run(args)


def test_benchmark_prints_table_and_writes_csv_and_json(model_dir, task_file, tmp_path, capsys):
    out = tmp_path / "bench"
    code = medot(
        "benchmark", "kmat", "--task", str(task_file), "--seeds", "1", "2", "--epochs", "2", "--shots", "2",
        "--views", "1", "--backbone", f"local-dir:{model_dir}", "--device", "cpu", "--out", str(out), "--quiet",
        "--kgcoop-lambda", "2.5", "--biomedcoop-lambda1", "0.5", "--biomedcoop-tau", "2", "--cocoop-width", "3",
    )
    assert code == 0
    printed = capsys.readouterr().out
    header = next(line for line in printed.splitlines() if line.startswith("Method"))
    titles = [cell.strip() for cell in header.split("|")]
    assert titles == ["Method", "Acc Hi", "Acc Lo", "Acc H", "F1 Hi", "F1 Lo", "F1 H"]
    rows = {line.split("|")[0].strip() for line in printed.splitlines() if "±" in line and "|" in line}
    assert rows == set(METHODS)
    with (out / "kmat_benchmark.csv").open() as handle:
        table = list(csv.DictReader(handle))
    document = json.loads((out / "kmat_benchmark.json").read_text())
    assert [row["method"] for row in table] == list(METHODS)
    assert len(document["runs"]) == 2 * len(METHODS)
    for row in table:
        runs = [run["metrics"] for run in document["runs"] if run["method"] == row["method"]]
        for metric in ("acc_hi", "acc_lo", "acc_h", "f1_hi", "f1_lo", "f1_h"):
            mean = sum(run[metric] for run in runs) / len(runs)
            assert float(row[f"{metric}_mean"]) == pytest.approx(mean, abs=1e-6)
            assert 0.0 <= mean <= 1.0
        if row["method"].startswith("zeroshot"):  # nothing is trained: every seed gives the same numbers
            assert float(row["acc_h_std"]) == 0.0
    kmat_run = next(run for run in document["runs"] if run["method"] == "kmat" and run["seed"] == 2)
    assert load_checkpoint(kmat_run["model"]).meta["metrics"] == kmat_run["metrics"]
    # the baselines' weights are options, recorded in the benchmark JSON and in each checkpoint
    assert document["settings"]["baselines"] == {
        "kgcoop_lambda": 2.5, "biomedcoop_lambda_sccm": 0.5, "biomedcoop_lambda_kdsp": 1.0,
        "biomedcoop_tau": 2.0, "cocoop_meta_hidden": 3,
    }

    def meta(method):
        return load_checkpoint(next(r["model"] for r in document["runs"] if r["method"] == method)).meta

    assert meta("kgcoop")["hyper_parameters"]["lambda_kg"] == 2.5
    assert (meta("biomedcoop")["hyper_parameters"]["lambda_sccm"], meta("biomedcoop")["hyper_parameters"]["tau"]) == (
        0.5, 2.0,
    )
    assert meta("cocoop")["prompt_learner"]["meta_hidden"] == 3
    cocoop = load_kmat_predictor(next(r["model"] for r in document["runs"] if r["method"] == "cocoop"), _backbone(model_dir))
    assert cocoop.prompts.meta_net[0].out_features == 3


def test_train_grid_selects_on_high_end_validation(model_dir, task_file, tmp_path, capsys):
    out = tmp_path / "run"
    code = medot(
        "train", "kmat", "--task", str(task_file), "--shots", "2", "--epochs", "2", "--views", "1",
        "--grid-anc", "0.5", "4", "--grid-fgw", "1", "--backbone", f"local-dir:{model_dir}", "--device", "cpu",
        "--out", str(out), "--quiet",
    )
    assert code == 0
    grid = json.loads((out / "grid.json").read_text())
    points = grid["points"]
    assert [(p["lambda_anchor"], p["lambda_transport"]) for p in points] == [(0.5, 1.0), (4.0, 1.0)]
    best = max(points, key=lambda p: (p["val_accuracy"], -p["val_cross_entropy"]))
    assert grid["chosen"] == best
    checkpoint = load_checkpoint(out / "model")
    assert checkpoint.meta["hyper_parameters"]["lambda_anchor"] == best["lambda_anchor"]
    assert set(checkpoint.meta["metrics"]) == {"acc_hi", "acc_lo", "acc_h", "f1_hi", "f1_lo", "f1_h"}
    assert "chosen: lambda_anc" in capsys.readouterr().out


def test_cli_refuses_unknown_methods(task_file):
    with pytest.raises(MedotError, match="choose one of coop, cocoop"):
        medot("train", "kmat", "--task", str(task_file), "--method", "clip")
    with pytest.raises(MedotError, match="give distinct names"):
        medot("benchmark", "kmat", "--task", str(task_file), "--methods", "coop,magic")


@pytest.mark.parametrize("method", ["kmat", "cocoop"])
def test_checkpoint_round_trip_rebuilds_the_same_predictions(backbone, task_file, tmp_path, method):
    task = resolve_task(task_file)
    knowledge = embed_descriptions(backbone, task.descriptions, task.classes)
    cache = FeatureCache(tmp_path / "cache")
    run = RunConfig(shots=2, epochs=2, views=1, progress=False)
    fitted = fit_method(
        method, backbone, task.high_end_data(2, 1), classes=task.classes, modalities=task.modalities,
        knowledge=knowledge, run=run, kmat=KMaTConfig(lambda_anchor=2.0), out_dir=tmp_path / "run", cache=cache,
    )
    records = task.low_end_test()[:5]
    embeddings = encode_records(backbone, records, cache, progress=False).plain
    with torch.no_grad():
        expected = fitted.task.logits(embeddings, LOW).softmax(-1)
    predictor = load_kmat_predictor(fitted.result.model_path, backbone)
    probabilities = predictor.predict_proba([read_image(r.path) for r in records], "xray")
    assert torch.allclose(probabilities, expected, atol=1e-5)
    assert predictor.class_names == task.classes
    tensors = load_checkpoint(fitted.result.model_path).tensors
    if method == "kmat":
        plan = tensors["artefacts.fgw_plan"]
        assert plan.shape == (3, 3) and torch.allclose(plan.sum(1), torch.full((3,), 1 / 3), atol=1e-4)
        assert torch.allclose(tensors["artefacts.w_low"].norm(dim=-1), torch.ones(3), atol=1e-5)
        counts = torch.bincount(tensors["artefacts.description_modality"], minlength=2)
        assert counts.tolist() == [len(knowledge.embeddings) // 2] * 2
    else:
        assert not any(name.startswith("artefacts.") for name in tensors)


def test_predictor_refuses_another_backbone(backbone, task_file, tmp_path):
    task = resolve_task(task_file)
    knowledge = embed_descriptions(backbone, task.descriptions, task.classes)
    run = RunConfig(shots=2, epochs=2, views=1, progress=False)
    cache = FeatureCache(tmp_path / "cache")
    result = run_method("coop", backbone, task, knowledge, run, out_dir=tmp_path / "run", cache=cache)
    checkpoint = load_checkpoint(result.model_path)
    checkpoint.meta["backbone"] = "lite"
    save_checkpoint(tmp_path / "other", checkpoint)
    with pytest.raises(CheckpointError, match="trained on backbone 'lite'"):
        load_kmat_predictor(tmp_path / "other", backbone)


def test_cancelled_run_says_how_to_resume_and_resumes(backbone, task_file, tmp_path):
    task = resolve_task(task_file)
    knowledge = embed_descriptions(backbone, task.descriptions, task.classes)
    run = RunConfig(shots=2, epochs=2, views=1, progress=False)
    common = {"out_dir": tmp_path / "run", "cache": FeatureCache(tmp_path / "cache")}
    calls = {"n": 0}

    def stop_after_two_steps() -> bool:
        calls["n"] += 1
        return calls["n"] > 2

    with pytest.raises(TrainingCancelled, match="--resume"):
        run_method("kmat", backbone, task, knowledge, run, should_stop=stop_after_two_steps, **common)
    resumed = run_method("kmat", backbone, task, knowledge, run, resume=True, **common)
    fresh = run_method("kmat", backbone, task, knowledge, run, out_dir=tmp_path / "fresh", cache=common["cache"])
    resumed_ctx = load_checkpoint(resumed.model_path).tensors["prompts.context"]
    assert torch.allclose(resumed_ctx, load_checkpoint(fresh.model_path).tensors["prompts.context"], atol=1e-6)
