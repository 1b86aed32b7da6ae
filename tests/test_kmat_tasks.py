"""K-MaT on your own data: folder tasks, `medot task init`, class checks, errors that name paths
(tiny BiomedCLIP-shaped backbone with random weights, tiny PNG trees)."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from medot.checkpoint import load_checkpoint
from medot.data.datasets import DatasetLayoutError
from medot.errors import MedotError
from medot.methods.prompt_learning.crossmodal import TaskError, resolve_task
from test_kmat_cli import medot
from tiny_open_clip import write_tiny_biomedclip

pytestmark = pytest.mark.usefixtures("one_torch_thread")

CLASSES = ("covid", "normal")
HIGH_COUNTS = {"train": 3, "val": 1, "test": 2}
LOW_COUNTS = {"val": 1, "test": 2}


def write_tree(root: Path, counts: dict[tuple[str, str, str], int] | None = None) -> Path:
    """``root/ct/{train,val,test}/<class>/`` and ``root/xray/{val,test}/<class>/`` of 16x16 PNGs."""
    rng = np.random.default_rng(0)
    layout = {("ct", split, cls): n for split, n in HIGH_COUNTS.items() for cls in CLASSES}
    layout |= {("xray", split, cls): n for split, n in LOW_COUNTS.items() for cls in CLASSES}
    layout |= counts or {}
    for (modality, split, cls), n in layout.items():
        folder = root / modality / split / cls
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(n):
            pixels = rng.integers(0, 255, (16, 16, 3), dtype=np.uint8)
            pixels[..., CLASSES.index(cls)] = 200  # a class signal
            Image.fromarray(pixels).save(folder / f"{modality}_{split}_{cls}_{i}.png")
    return root


def write_descriptions(path: Path, classes=CLASSES, modalities=("ct", "xray")) -> Path:
    sentences = {
        m: {c: [f"a {m} image of {c}, view {k}." for k in range(3)] for c in classes} for m in modalities
    }
    document = {
        "task": "mine",
        "modalities": {"high": modalities[0], "low": modalities[1]},
        "classes": list(classes),
        "descriptions": sentences,
    }
    path.write_text(json.dumps(document))
    return path


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return write_tiny_biomedclip(tmp_path_factory.mktemp("tiny_model"))


def common(model_dir, out) -> list[str]:
    return [
        "--shots", "2", "--epochs", "2", "--views", "1", "--backbone", f"local-dir:{model_dir}", "--device", "cpu",
        "--out", str(out), "--quiet",
    ]


def test_folder_task_reads_modalities_and_classes_from_folder_names(tmp_path):
    task = resolve_task(write_tree(tmp_path / "mine"))
    assert task.modalities == ("ct", "xray")
    assert task.classes == CLASSES
    assert task.descriptions is None
    data = task.high_end_data(2, seed=1)
    assert len(data.train) == 4 and len(data.val) == 2
    assert all(r.path.parent.parent.name == "train" and r.path.parts[-4] == "ct" for r in data.train)
    low = task.low_end_test()
    assert len(low) == 4 and all(r.path.parent.parent.name == "test" for r in low)  # low-end val is never read
    assert [r.class_name for r in low] == ["covid", "covid", "normal", "normal"]


def test_folder_task_trains_and_benchmarks_end_to_end(model_dir, tmp_path, capsys):
    root = write_tree(tmp_path / "mine")
    descriptions = write_descriptions(tmp_path / "mine_descriptions.json")
    out = tmp_path / "bench"
    code = medot(
        "benchmark", "kmat", "--task", str(root), "--descriptions", str(descriptions),
        "--methods", "zeroshot,zeroshot_desc,coop,kmat", "--seeds", "1", *common(model_dir, out),
    )
    assert code == 0
    printed = capsys.readouterr().out
    rows = {line.split("|")[0].strip() for line in printed.splitlines() if "±" in line and "|" in line}
    assert rows == {"zeroshot", "zeroshot_desc", "coop", "kmat"}
    document = json.loads((out / "kmat_benchmark.json").read_text())
    model = load_checkpoint(next(r["model"] for r in document["runs"] if r["method"] == "kmat"))
    assert model.meta["class_names"] == list(CLASSES)
    assert model.meta["modalities"] == {"high": "ct", "low": "xray"}
    assert model.meta["task"] == "mine"


def test_methods_needing_descriptions_refuse_without_them_and_the_others_run(model_dir, tmp_path, capsys):
    root = write_tree(tmp_path / "mine")
    for method in ("kmat", "biomedcoop"):
        with pytest.raises(MedotError, match="needs class descriptions") as error:
            medot("train", "kmat", "--task", str(root), "--method", method, *common(model_dir, tmp_path / method))
        message = str(error.value)
        assert "--descriptions FILE" in message and '"modalities"' in message
        assert str(Path("assets") / "descriptions" / "chest.json") in message
        assert Path(message.split("example: ")[1].split(";")[0]).is_file()
    with pytest.raises(MedotError, match="zeroshot_desc needs class descriptions"):
        medot("benchmark", "kmat", "--task", str(root), "--methods", "zeroshot,zeroshot_desc", *common(model_dir, tmp_path / "b"))
    code = medot(
        "benchmark", "kmat", "--task", str(root), "--methods", "zeroshot,coop,cocoop,kgcoop", "--seeds", "1",
        *common(model_dir, tmp_path / "ok"),
    )
    assert code == 0
    assert "kgcoop" in capsys.readouterr().out


def test_task_init_prints_counts_and_writes_a_task_json_that_reads_the_same_images(tmp_path, capsys):
    root = write_tree(tmp_path / "mine", {("ct", "test", "normal"): 5})
    descriptions = write_descriptions(root / "descriptions.json")
    assert medot("task", "init", str(root), "--descriptions", str(descriptions), "--shots", "2") == 0
    printed = capsys.readouterr().out
    table = [line.split() for line in printed.splitlines()]
    header = next(line for line in table if line and line[0] == "class")
    assert header[1:] == ["ct/train", "ct/val", "ct/test", "xray/val", "(unused)", "xray/test"]
    assert ["covid", "3", "1", "2", "1", "2"] in table
    assert ["normal", "3", "1", "5", "1", "2"] in table
    assert ["total", "6", "2", "7", "2", "4"] in table
    written = json.loads((root / "task.json").read_text())
    assert written["descriptions"] == "descriptions.json"
    split = json.loads((root / "ct" / "split_ct.json").read_text())
    assert split["train"][0][0] == "train/covid/ct_train_covid_0.png"  # relative to the modality's root
    from_json, from_folder = resolve_task(root / "task.json"), resolve_task(root, descriptions=descriptions)
    assert from_json.modalities == from_folder.modalities == ("ct", "xray")
    for split_name in ("train", "val", "test"):
        assert from_json._records(from_json.high, split_name) == from_folder._records(from_folder.high, split_name)
    assert from_json.low_end_test() == from_folder.low_end_test()
    with pytest.raises(MedotError, match="already exist"):
        medot("task", "init", str(root), "--shots", "2")


def test_task_init_without_descriptions_writes_modalities_and_classes(tmp_path, capsys):
    root = write_tree(tmp_path / "mine")
    assert medot("task", "init", str(root), "--shots", "2") == 0
    assert "kmat, zeroshot_desc and biomedcoop will refuse" in capsys.readouterr().out
    task = resolve_task(root / "task.json")
    assert (task.modalities, task.classes, task.descriptions) == (("ct", "xray"), CLASSES, None)


def test_a_class_missing_from_a_split_is_an_error_naming_class_modality_split_and_path(tmp_path):
    root = write_tree(tmp_path / "mine")
    shutil.rmtree(root / "ct" / "val" / "normal")
    task = resolve_task(root)
    with pytest.raises(TaskError) as error:
        task.high_end_data(2, seed=1)
    message = str(error.value)
    assert "class 'normal' has no image in the ct val split" in message
    assert str(root.resolve() / "ct" / "val") in message
    (root / "xray" / "test" / "covid").rename(root / "xray" / "test" / ".hidden")
    with pytest.raises(TaskError, match=r"class 'covid' has no image in the xray test split"):
        task.low_end_test()
    with pytest.raises(MedotError, match="nothing written") as error:
        medot("task", "init", str(root), "--shots", "2")
    assert "ct val" in str(error.value) and "xray test" in str(error.value)
    assert not (root / "task.json").exists()


def test_a_class_with_fewer_images_than_shots_says_how_many_it_has(tmp_path):
    root = write_tree(tmp_path / "mine", {("ct", "train", "normal"): 1})
    task = resolve_task(root)
    with pytest.raises(DatasetLayoutError) as error:
        task.high_end_data(2, seed=1)
    message = str(error.value)
    assert "class 'normal' has 1 image(s) in the ct train split" in message
    assert str(root.resolve() / "ct" / "train") in message and "--shots 2" in message


def test_task_json_with_more_classes_than_the_data_is_an_error(tmp_path):
    """The `chest` route trained a 3-class model on 2-class data; now the missing class is named."""
    root = write_tree(tmp_path / "mine")
    write_descriptions(root / "three.json", classes=("covid", "normal", "pneumonia"))
    (root / "task.json").write_text(json.dumps({
        "name": "three", "descriptions": "three.json",
        "high": {"root": "ct/train"},
        "low": {"root": "xray/test"},
    }))
    task = resolve_task(root / "task.json")
    assert len(task.classes) == 3
    with pytest.raises(TaskError, match=r"class 'pneumonia' has no image in the xray test split"):
        task.low_end_test()


def test_errors_name_the_resolved_path_they_tried(tmp_path, monkeypatch):
    root = write_tree(tmp_path / "mine")
    (root / "task.json").write_text(json.dumps({
        "name": "x", "descriptions": "descriptons.json", "high": {"root": "ct"}, "low": {"root": "xray"},
    }))
    monkeypatch.chdir(tmp_path)
    with pytest.raises(MedotError) as error:
        resolve_task(Path("mine") / "task.json")
    assert str(root.resolve() / "descriptons.json") in str(error.value)
    with pytest.raises(MedotError) as error:
        resolve_task(Path("mine"), descriptions="typo.json")
    assert os.path.abspath("typo.json") in str(error.value)
    (root / "task.json").write_text(json.dumps({
        "name": "x", "modalities": {"high": "ct", "low": "xray"}, "class_names": list(CLASSES),
        "high": {"root": "ct", "split_file": "ct/split.json"}, "low": {"root": "xray"},
    }))
    with pytest.raises(TaskError, match=str(root.resolve() / "ct" / "split.json")):
        resolve_task(Path("mine") / "task.json")


# --------------------------------------------------------------------------- the paper's protocol from one command
def test_benchmark_grid_selects_lambdas_per_seed_on_validation_only(model_dir, tmp_path, capsys, monkeypatch):
    import medot.methods.kmat.benchmark as benchmark_module
    from medot.train import FeatureCache

    root = write_tree(tmp_path / "mine")
    descriptions = write_descriptions(tmp_path / "d.json")
    task = resolve_task(root, descriptions=descriptions)
    test_images = {r.path for r in (*task.high_end_test(), *task.low_end_test())}
    val_images = {r.path for r in task.high_end_data(2, 1).val}
    state = {"selecting": False}
    seen_while_selecting: set[Path] = set()
    encode, grid_search = FeatureCache.encode, benchmark_module.grid_search

    def spy_encode(self, backbone, paths, **kwargs):
        if state["selecting"]:
            seen_while_selecting.update(Path(p) for p in paths)
        return encode(self, backbone, paths, **kwargs)

    def spy_grid(*args, **kwargs):
        state["selecting"] = True
        try:
            return grid_search(*args, **kwargs)
        finally:
            state["selecting"] = False

    monkeypatch.setattr(FeatureCache, "encode", spy_encode)
    monkeypatch.setattr(benchmark_module, "grid_search", spy_grid)
    out = tmp_path / "bench"
    code = medot(
        "benchmark", "kmat", "--task", str(root), "--descriptions", str(descriptions), "--methods", "kmat",
        "--seeds", "1", "2", "--grid-anc", "0", "8", "--grid-fgw", "1", *common(model_dir, out),
    )
    assert code == 0
    assert val_images <= seen_while_selecting and seen_while_selecting.isdisjoint(test_images)
    document = json.loads((out / "kmat_benchmark.json").read_text())
    assert document["settings"]["kmat_grid"]["lambda_anchor"] == [0.0, 8.0]
    printed = capsys.readouterr().out
    for run in document["runs"]:
        selection = run["selection"]
        points = selection["grid"]
        assert [p["lambda_anchor"] for p in points] == [0.0, 8.0]
        best = max(points, key=lambda p: (p["val_accuracy"], -p["val_cross_entropy"]))
        assert (selection["lambda_anchor"], selection["lambda_transport"]) == (best["lambda_anchor"], 1.0)
        assert load_checkpoint(run["model"]).meta["hyper_parameters"]["lambda_anchor"] == best["lambda_anchor"]
        assert f"seed {run['seed']}: lambda_anc {best['lambda_anchor']:g}, lambda_fgw 1" in printed
    assert "kmat lambdas chosen per seed on high-end validation accuracy" in printed


def test_benchmark_prints_chance_runs_np_and_anchor_separation(model_dir, tmp_path, capsys):
    import torch

    from medot.backbones import create_backbone
    from medot.methods.prompt_learning.knowledge import embed_descriptions

    root = write_tree(tmp_path / "mine", {("ct", "test", "normal"): 6, ("xray", "test", "covid"): 3})
    descriptions = write_descriptions(tmp_path / "d.json")
    out = tmp_path / "bench"
    code = medot(
        "benchmark", "kmat", "--task", str(root), "--descriptions", str(descriptions),
        "--methods", "zeroshot,coop", "--seeds", "1", "2", *common(model_dir, out),
    )
    assert code == 0
    printed = capsys.readouterr().out
    document = json.loads((out / "kmat_benchmark.json").read_text())
    # chance: 1/2 classes; majority class of ct test 6/8, of xray test 3/5
    assert document["chance"] == pytest.approx({"uniform": 0.5, "majority_hi": 0.75, "majority_lo": 0.6})
    assert "chance: 1/classes 50.0, majority class of the test split Hi 75.0 / Lo 60.0" in printed
    run_lines = [line for line in printed.splitlines() if " seed " in line and ": accuracy Hi " in line]
    assert len(run_lines) == 4  # one line per finished run (method x seed), even under --quiet
    coop_seed2 = next(r for r in document["runs"] if r["method"] == "coop" and r["seed"] == 2)["metrics"]
    assert f"coop seed 2: accuracy Hi {100 * coop_seed2['acc_hi']:.1f} Lo {100 * coop_seed2['acc_lo']:.1f}" in printed
    assert "N_p = 3 descriptions per class and modality" in printed
    # anchor separation against a hand computation from the description embeddings
    backbone = create_backbone(f"local-dir:{model_dir}", "cpu")
    task = resolve_task(root, descriptions=descriptions)
    knowledge = embed_descriptions(backbone, task.descriptions, task.classes)
    for index, modality in enumerate(("ct", "xray")):
        anchors = [
            torch.nn.functional.normalize(knowledge.rows(index, c).mean(0), dim=0) for c in range(len(CLASSES))
        ]
        expected = float(anchors[0] @ anchors[1])
        entry = document["anchor_separation"][modality]
        assert entry["max_off_diagonal"] == pytest.approx(expected, abs=1e-5)
        assert sorted(entry["closest_pair"]) == list(CLASSES)
        assert f"{modality}: closest classes" in printed and f"cosine {expected:.3f}" in printed


def test_quiet_turns_off_the_hugging_face_progress_bars(model_dir, tmp_path, monkeypatch):
    import transformers
    from transformers.utils import logging as hf_logging

    monkeypatch.delenv("HF_HUB_DISABLE_PROGRESS_BARS", raising=False)
    hf_logging.enable_progress_bar()
    root = write_tree(tmp_path / "mine")
    try:
        medot("benchmark", "kmat", "--task", str(root), "--methods", "zeroshot", "--seeds", "1", *common(model_dir, tmp_path / "b"))
        assert not hf_logging.is_progress_bar_enabled()
        assert os.environ["HF_HUB_DISABLE_PROGRESS_BARS"] == "1"
    finally:
        hf_logging.enable_progress_bar()
    assert transformers.utils.logging.is_progress_bar_enabled()


# --------------------------------------------------------------------------- signals
@pytest.fixture
def signal_protocol():
    """Restore the signal handlers and clear medot's stop flag after a test that sends signals."""
    import signal

    from medot.jobs import protocol

    handlers = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT)}
    protocol._stop_requested.clear()
    yield
    protocol._stop_requested.clear()
    for signum, handler in handlers.items():
        signal.signal(signum, handler)


def test_sigterm_during_a_grid_stops_after_one_step_with_exit_75_and_resumes(
    model_dir, tmp_path, monkeypatch, capfd, signal_protocol
):
    import signal

    from medot.jobs.protocol import EXIT_CANCELLED
    from medot.train import engine

    root = write_tree(tmp_path / "mine")
    descriptions = write_descriptions(tmp_path / "d.json")
    argv = ["train", "kmat", "--task", str(root), "--descriptions", str(descriptions), "--grid-anc", "0.5", "2",
            "--grid-fgw", "1"]
    steps = {"n": 0}
    step = engine._Run._step

    def step_then_sigterm(self, *args, **kwargs):
        steps["n"] += 1
        lr = step(self, *args, **kwargs)
        if steps["n"] == 1:
            os.kill(os.getpid(), signal.SIGTERM)  # the first signal: stop after the current step
        return lr

    monkeypatch.setattr(engine._Run, "_step", step_then_sigterm)
    out = tmp_path / "grid"
    assert medot(*argv, *common(model_dir, out)) == EXIT_CANCELLED
    assert steps["n"] == 1
    printed = capfd.readouterr()
    assert "stopped in point lambda_anc 0.5, lambda_fgw 1 after 1 step(s)" in printed.out
    assert "--resume" in printed.out and "SIGTERM received" in printed.err
    point = out / "grid" / "anc0.5_fgw1"
    state = load_checkpoint(point / "resume")
    assert state.meta["trainer"]["progress"]["global_step"] == 1  # medot.checkpoint.TRAINING_STATE_KEY
    assert not (out / "grid" / "anc2_fgw1").exists() and not (out / "model.json").exists()

    monkeypatch.setattr(engine._Run, "_step", step)
    from medot.jobs import protocol

    protocol._stop_requested.clear()
    assert medot(*argv, *common(model_dir, out), "--resume") == 0
    assert medot(*argv, *common(model_dir, tmp_path / "fresh")) == 0
    resumed, fresh = (json.loads((o / "grid.json").read_text()) for o in (out, tmp_path / "fresh"))
    for a, b in zip(resumed["points"], fresh["points"], strict=True):
        assert a["val_cross_entropy"] == pytest.approx(b["val_cross_entropy"], abs=1e-5)
    assert resumed["chosen"]["lambda_anchor"] == fresh["chosen"]["lambda_anchor"]


def test_every_kmat_job_argument_is_a_flag_of_train_kmat(tmp_path):
    """The app's training jobs reach the new options (descriptions, the baselines' weights)."""
    import argparse

    from medot.jobs.arguments import METHOD_ARGUMENTS, cli_flags, validate_arguments
    from medot.methods.kmat.cli import register

    root = write_tree(tmp_path / "mine")
    descriptions = write_descriptions(tmp_path / "d.json")
    arguments = {
        "dataset": str(root), "descriptions": str(descriptions), "method": "kgcoop", "kgcoop_lambda": 4.0,
        "biomedcoop_lambda1": 0.5, "biomedcoop_lambda2": 2.0, "biomedcoop_tau": 1.0, "cocoop_width": 8,
    }
    checked = validate_arguments("kmat", arguments, tmp_path, METHOD_ARGUMENTS)
    parser = argparse.ArgumentParser()
    commands = parser.add_subparsers(dest="command")
    register(commands, commands.add_parser("train").add_subparsers(dest="m"), commands.add_parser("b").add_subparsers())
    args = parser.parse_args(["train", "kmat", *cli_flags(checked)])
    assert (args.task, args.descriptions) == (str(root.resolve()), str(descriptions.resolve()))
    assert (args.kgcoop_lambda, args.biomedcoop_lambda1, args.biomedcoop_tau, args.cocoop_width) == (4.0, 0.5, 1.0, 8)


def test_the_chest_paper_task_on_two_class_data_names_the_missing_class(tmp_path, monkeypatch):
    """The issue's case: CC-CCII-style CT folders and an X-ray set with only two of the three classes."""
    data = tmp_path / "data" / "kmat" / "chest"
    write_tree(tmp_path / "tree")  # ct/{train,val,test}/{covid,normal}, xray/{val,test}/{covid,normal}
    shutil.copytree(tmp_path / "tree" / "ct", data / "ct")
    split = {s: [[f"{s}/{c}/{p.name}", i, c] for i, c in enumerate(CLASSES) for p in sorted((data / "ct" / s / c).iterdir())]
             for s in ("train", "val", "test")}
    (data / "ct" / "split_ct.json").write_text(json.dumps(split))
    shutil.copytree(tmp_path / "tree" / "xray" / "test", data / "xray")
    monkeypatch.setenv("MEDOT_DATA_ROOT", str(tmp_path / "data"))
    task = resolve_task("chest")
    assert task.classes == ("covid19", "normal", "pneumonia")
    with pytest.raises(TaskError, match=r"class 'pneumonia' has no image in the ct train split \(.*split_ct\.json\)"):
        task.high_end_data(2, seed=1)
    with pytest.raises(TaskError, match=r"class 'pneumonia' has no image in the xray test split"):
        task.low_end_test()


def test_sigterm_during_a_benchmark_exits_75_and_resume_finishes_it(model_dir, tmp_path, monkeypatch, capfd, signal_protocol):
    import signal

    from medot.jobs import protocol
    from medot.jobs.protocol import EXIT_CANCELLED
    from medot.train import engine

    root = write_tree(tmp_path / "mine")
    argv = ["benchmark", "kmat", "--task", str(root), "--methods", "zeroshot,coop", "--seeds", "1", "2"]
    step = engine._Run._step
    steps = {"n": 0}

    def step_then_sigterm(self, *args, **kwargs):
        steps["n"] += 1
        lr = step(self, *args, **kwargs)
        if steps["n"] == 3:  # seed 1 of coop has 2 epochs x 1 step; stop in seed 2
            os.kill(os.getpid(), signal.SIGTERM)
        return lr

    monkeypatch.setattr(engine._Run, "_step", step_then_sigterm)
    out = tmp_path / "bench"
    assert medot(*argv, *common(model_dir, out)) == EXIT_CANCELLED
    printed = capfd.readouterr().out
    assert "coop seed 1: accuracy" in printed and "coop seed 2" not in printed
    assert "continue the benchmark with --resume" in printed and not (out / "kmat_benchmark.json").exists()
    monkeypatch.setattr(engine._Run, "_step", step)
    protocol._stop_requested.clear()
    assert medot(*argv, *common(model_dir, out), "--resume") == 0
    assert medot(*argv, *common(model_dir, tmp_path / "fresh")) == 0
    resumed, fresh = (json.loads((o / "kmat_benchmark.json").read_text())["runs"] for o in (out, tmp_path / "fresh"))
    for a, b in zip(resumed, fresh, strict=True):
        assert (a["method"], a["seed"]) == (b["method"], b["seed"])
        assert a["metrics"] == pytest.approx(b["metrics"], abs=1e-6)


def test_a_kmat_job_accepts_a_task_folder_and_refuses_a_plain_class_folder(tmp_path):
    from medot.jobs import JobError
    from medot.jobs.datasets import check_job_dataset

    root = write_tree(tmp_path / "data" / "mine")
    check_job_dataset("kmat", str(root), tmp_path / "home", tmp_path / "data")  # accepted
    with pytest.raises(JobError, match=r"not on one folder .* is not a task folder"):
        check_job_dataset("kmat", str(root / "ct" / "train"), tmp_path / "home", tmp_path / "data")


def test_the_output_of_medot_synth_is_a_task_by_its_folder(tmp_path):
    """`medot synth --out DIR` then `--task DIR` (or DIR/kmat): the synthetic task read from DIR,
    not a refusal for lacking train/val/test folders (its splits are JSON files)."""
    from medot.data.synthetic import write_synthetic_benchmark

    root = write_synthetic_benchmark(tmp_path / "synth", n_per_class=3, size=32, progress=False).root
    for given in (root, root / "kmat"):
        task = resolve_task(str(given))
        assert task.name == "synthetic" and tuple(task.classes) == ("nodule", "normal", "opacity")
        assert Path(task.high.root).resolve() == (root / "kmat" / "ct").resolve()
        assert Path(task.low.root).resolve() == (root / "kmat" / "xray").resolve()
    with pytest.raises(DatasetLayoutError, match=f"fewer than --shots 2.*'medot synth --out {root} --n-per-class 6'"):
        task.high_end_data(shots=2, seed=1)  # 3 cases per class hold 1 training case; the hint asks for enough
    manifest = json.loads((root / "manifest.json").read_text())
    (root / "manifest.json").write_text(json.dumps({**manifest, "complete": False}))
    with pytest.raises(TaskError, match="not a task folder"):  # an interrupted output is not rewritten
        resolve_task(str(root))
