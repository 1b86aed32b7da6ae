"""``medot train madpot`` (few-shot, zero-shot, cross-dataset) and ``medot benchmark madpot`` end to end
on the synthetic organs with a tiny BiomedCLIP-shaped backbone, and their one-line errors."""

from __future__ import annotations

import csv
import json

import pytest
import torch

import medot.backbones
from medot.cli import main
from medot.data.io import read_image
from medot.data.synthetic import write_synthetic_benchmark
from medot.methods.madpot.detector import load_madpot

from tiny_open_clip import write_tiny_biomedclip

pytestmark = pytest.mark.usefixtures("one_torch_thread")
FAST = ["--layers", "block3", "block6", "--prompts", "2", "--views", "2", "--epochs", "2", "--batch-size", "4",
        "--ot-iterations", "30", "--device", "cpu", "--quiet"]


@pytest.fixture(scope="module")
def backbone(tmp_path_factory):
    from medot.backbones import create_backbone

    return create_backbone(f"local-dir:{write_tiny_biomedclip(tmp_path_factory.mktemp('tiny'))}", "cpu")


@pytest.fixture(autouse=True)
def _reuse_backbone(monkeypatch, backbone):
    monkeypatch.setattr(medot.backbones, "create_backbone", lambda name="auto", device=None, **_: backbone)


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    return write_synthetic_benchmark(tmp_path_factory.mktemp("synthetic"), size=64, n_per_class=4, progress=False)


def test_train_few_shot_saves_a_model_that_reproduces_its_metrics(synthetic, backbone, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", "madpot", "--data", str(synthetic.mvfa_root), "--object", "Retina", "--shots", "2",
                 "--seed", "1", "--out", str(out), *FAST]) == 0
    printed = capsys.readouterr().out
    assert "MVFA few-shot list" in printed and "image AUROC" in printed and "mass per prompt" in printed
    meta = json.loads((out / "model.json").read_text())
    assert meta["method"] == "madpot" and meta["objects"] == ["retinal OCT"] and meta["localised"] is True
    assert meta["training"]["selection"].startswith("last epoch")
    assert all("/valid/" in path for path in meta["training"]["support"]["Retina"]["images"])
    assert len(meta["training"]["history"]) == 2
    # the saved model scores the test set as the run did
    from medot.methods.pradot.data import AnomalySplits
    from medot.methods.pradot.evaluation import EvaluationSet
    from medot.data.datasets import load_mvfa

    detector = load_madpot(out / "model", backbone)
    splits = AnomalySplits("mvfa", "Retina", (), tuple(load_mvfa(synthetic.mvfa_root, "Retina", "test")))
    test_set = EvaluationSet.load(backbone, splits, detector.model.layers, progress=False)
    again = test_set.evaluate(lambda t: detector.model(t, detector.size), torch.device("cpu"))
    assert again["image_auroc"] == pytest.approx(meta["metrics"]["image_auroc"])
    assert again["pixel_auroc"] == pytest.approx(meta["metrics"]["pixel_auroc"])
    images = [read_image(r.path).rgb() for r in splits.test[:2]]
    assert detector.predict(images)[0].shape == (2, 64, 64)
    assert "without a calibrated scale" in printed and detector.calibration is None  # no normal left over
    one_shot = tmp_path / "one"
    assert main(["train", "madpot", "--data", str(synthetic.mvfa_root), "--object", "Retina", "--shots", "1",
                 "--out", str(one_shot), *FAST]) == 0
    calibrated = load_madpot(one_shot / "model", backbone)
    assert calibrated.calibration is not None and calibrated.calibration.count == 1
    assert json.loads((one_shot / "model.json").read_text())["training"]["held_out_normals"] == 1


def test_zero_shot_and_cross_dataset_train_on_other_objects_only(synthetic, tmp_path, capsys):
    out = tmp_path / "zs"
    assert main(["train", "madpot", "--data", str(synthetic.mvfa_root), "--object", "Histo", "--zero-shot",
                 "--shots", "2", "--out", str(out), *FAST]) == 0
    printed = capsys.readouterr().out
    assert "trained on Phantom, Retina, tested on Histo" in printed
    meta = json.loads((out / "model.json").read_text())
    assert sorted(meta["training"]["support"]) == ["Phantom", "Retina"]
    assert meta["objects"][-1] == "histopathology image"  # scored with the held-out object's prompts
    cross = tmp_path / "cross"
    assert main(["train", "madpot", "--data", str(synthetic.mvfa_root), "--train-on", "Retina", "--object", "Phantom",
                 "--shots", "2", "--out", str(cross), *FAST]) == 0
    assert list(json.loads((cross / "model.json").read_text())["training"]["support"]) == ["Retina"]


def test_benchmark_writes_the_table_rows_for_every_method_and_seed(synthetic, tmp_path, capsys):
    assert main(["benchmark", "madpot", "--data", str(synthetic.mvfa_root), "--objects", "Phantom", "Retina",
                 "--shots", "2", "--seeds", "1", "2", "--methods", "madpot,mvfa,patchcore", "--out", str(tmp_path),
                 *FAST]) == 0
    printed = capsys.readouterr().out
    assert "average" in printed and "img AUROC" in printed
    with (tmp_path / "results.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert sorted({(r["object"], r["method"], r["seed"]) for r in rows}) == sorted(
        (o, m, s) for o in ("Phantom", "Retina") for m in ("madpot", "mvfa", "patchcore") for s in ("1", "2")
    )
    assert all(0.0 <= float(r["image_auroc"]) <= 1.0 and 0.0 <= float(r["pixel_auroc"]) <= 1.0 for r in rows)
    table = json.loads((tmp_path / "results.json").read_text())["table"]
    average = [e for e in table if e["object"] == "average" and e["method"] == "madpot"][0]
    per_object = [e["image_auroc"] for e in table if e["object"] != "average" and e["method"] == "madpot"]
    assert average["image_auroc"] == pytest.approx(sum(per_object) / 2)


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--object", "Lung"], "has no object 'Lung'"),
        ([], "holds several objects"),
        (["--object", "Retina", "--no-pot", "--no-cl"], "needs at least one of its branches"),
        (["--object", "Retina", "--views", "17"], "1 <= views <= 16"),
        (["--object", "Retina", "--lr", "nan"], "finite lr > 0"),
        (["--object", "Retina", "--lambda-cl", "nan"], "must be finite and >= 0"),
        (["--object", "Retina", "--epsilon", "nan"], "epsilon"),
        (["--object", "Retina", "--device", "gpu0"], "not a torch device"),
        (["--object", "Retina", "--shots", "16"], "fewer than --shots 16"),
        (["--object", "Retina", "--train-on", "Retina"], "includes the test object Retina"),
        (["--object", "Retina", "--zero-shot", "--method", "mvfa"], "MVFA baseline trains on one object"),
    ],
)
def test_user_errors_are_one_line(synthetic, argv, message, tmp_path, capsys):
    base = ["train", "madpot", "--data", str(synthetic.mvfa_root), "--shots", "2", "--out", str(tmp_path), *FAST]
    assert main([*base, *argv]) == 2
    err = capsys.readouterr().err
    assert err.startswith("medot: error:") and message in err and "Traceback" not in err


def test_zeroshot_baseline_and_class_folders_are_refused_clearly(synthetic, tmp_path, capsys):
    assert main(["benchmark", "madpot", "--data", str(synthetic.mvfa_root), "--objects", "Retina", "--shots", "2",
                 "--seeds", "1", "--methods", "zeroshot", "--out", str(tmp_path), *FAST]) == 2
    assert "needs patch tokens in the joint space" in capsys.readouterr().err
    assert main(["train", "madpot", "--data", str(synthetic.kmat_high), *FAST]) == 2
    assert "MVFA layout" in capsys.readouterr().err


def test_a_madpot_job_becomes_a_command_the_cli_accepts(tmp_path):
    from medot.cli import build_parser
    from medot.jobs.arguments import METHOD_ARGUMENTS, validate_arguments
    from medot.jobs.registry import JobError
    from medot.jobs.runner import medot_train_command

    arguments = validate_arguments(
        "madpot", {"dataset": "synthetic", "object": "Retina", "shots": 2, "seed": 3, "method": "mvfa"}, tmp_path,
        METHOD_ARGUMENTS,
    )
    command = medot_train_command("madpot", arguments, tmp_path / "job", resume=True)
    args = build_parser().parse_args(command[3:])
    assert (args.object, args.shots, args.seed, args.method, args.data, args.resume) == (
        "Retina", 2, 3, "mvfa", "synthetic", True)
    for bad in ("../etc", "-rf", "a b"):
        with pytest.raises(JobError, match="object must be a folder name"):
            validate_arguments("madpot", {"object": bad}, tmp_path, METHOD_ARGUMENTS)


def test_benchmark_zero_shot_leaves_each_object_out(synthetic, tmp_path, capsys):
    assert main(["benchmark", "madpot", "--data", str(synthetic.mvfa_root), "--objects", "Histo", "--zero-shot",
                 "--shots", "1", "--seeds", "1", "--methods", "madpot,mvfa", "--out", str(tmp_path), *FAST]) == 0
    printed = capsys.readouterr().out
    assert "zero-shot (leave one object out)" in printed
    assert "Phantom: 1 normal + 1 abnormal" in printed and "Retina: 1 normal + 1 abnormal" in printed
    assert "Histo: 1 normal" not in printed  # no shot of the held-out object
    with (tmp_path / "results.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert [(r["object"], r["method"], r["protocol"]) for r in rows] == [("Histo", "madpot", "zero-shot")]


def test_predict_anomaly_reads_a_madpot_model(synthetic, backbone, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", "madpot", "--data", str(synthetic.mvfa_root), "--object", "Retina", "--shots", "1",
                 "--out", str(out), *FAST]) == 0
    capsys.readouterr()
    image = sorted((synthetic.mvfa_root / "Retina_AD" / "test" / "Ungood" / "img").glob("*.png"))[0]
    assert main(["predict-anomaly", str(image), "--model", str(out / "model"), "--out", str(tmp_path / "maps"),
                 "--json"]) == 0
    printed = json.loads(capsys.readouterr().out)
    detector = load_madpot(out / "model", backbone)
    _, scores = detector.predict([read_image(image).rgb()])
    assert printed["method"] == "madpot" and printed["calibrated"] is True
    assert printed["results"][0]["score"] == pytest.approx(float(scores[0]), rel=1e-5)


# ---------------------------------------------------------------------------------- MVTec AD (normal-only training)
def _abnormal_folder(folder, count=2, size=64):
    """Abnormal CT cases rendered outside the synthetic set (a user's folder of abnormal shots), with masks."""
    from PIL import Image

    from medot.data.synthetic import render_ct_case

    (folder / "masks").mkdir(parents=True)
    for index in range(count):
        image, mask = render_ct_case("nodule", (99, index), size)
        Image.fromarray(image).save(folder / f"shot{index}.png")
        Image.fromarray((mask * 255).astype("uint8")).save(folder / "masks" / f"shot{index}_mask.png")
    return folder


def test_mvtec_without_abnormal_shots_runs_patchcore_and_says_what_else_is_possible(synthetic, tmp_path, capsys):
    mvtec = str(synthetic.mvtec_root)
    assert main(["train", "madpot", "--data", mvtec, "--shots", "2", "--out", str(tmp_path / "m"), *FAST]) == 2
    err = capsys.readouterr().err
    assert "MVTec AD dataset" in err and "--abnormal-shots DIR" in err and "--methods zeroshot,patchcore" in err
    assert main(["benchmark", "madpot", "--data", mvtec, "--shots", "2", "--seeds", "1", "--methods", "patchcore,mvfa",
                 "--out", str(tmp_path), *FAST]) == 2
    assert "MVFA needs k abnormal support images" in capsys.readouterr().err
    assert main(["benchmark", "madpot", "--data", mvtec, "--shots", "2", "--seeds", "1", "--methods", "patchcore",
                 "--out", str(tmp_path), *FAST]) == 0
    with (tmp_path / "results.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert [(r["object"], r["method"]) for r in rows] == [("phantom", "patchcore")]
    assert 0.0 <= float(rows[0]["image_auroc"]) <= 1.0 and 0.0 <= float(rows[0]["pixel_auroc"]) <= 1.0


def test_mvtec_with_a_folder_of_abnormal_shots_trains_madpot_and_never_takes_them_from_test(synthetic, tmp_path, capsys):
    mvtec = synthetic.mvtec_root
    test_defects = mvtec / "phantom" / "test" / "nodule"
    assert main(["train", "madpot", "--data", str(mvtec), "--shots", "2", "--abnormal-shots", str(test_defects),
                 "--out", str(tmp_path / "leak"), *FAST]) == 2
    assert "inside the test split" in capsys.readouterr().err
    shots = _abnormal_folder(tmp_path / "shots")
    out = tmp_path / "run"
    assert main(["train", "madpot", "--data", str(mvtec), "--shots", "2", "--abnormal-shots", str(shots),
                 "--out", str(out), *FAST]) == 0
    printed = capsys.readouterr().out
    assert "2 normal images drawn from phantom/train/good and 2 abnormal ones from" in printed
    meta = json.loads((out / "model.json").read_text())
    images = meta["training"]["support"]["phantom"]["images"]
    assert sum("/train/good/" in path for path in images) == 2 and sum(path.startswith(str(shots)) for path in images) == 2
    assert not any("/test/" in path for path in images)
    assert meta["localised"] is True  # the shots' masks were read: the segmentation loss was on
    assert 0.0 <= meta["metrics"]["image_auroc"] <= 1.0 and meta["metrics"]["pixel_auroc"] is not None
    assert main(["train", "madpot", "--data", str(synthetic.mvfa_root), "--object", "Retina", "--shots", "2",
                 "--abnormal-shots", str(shots), "--out", str(tmp_path / "mvfa"), *FAST]) == 2
    assert "for MVTec AD folders" in capsys.readouterr().err
