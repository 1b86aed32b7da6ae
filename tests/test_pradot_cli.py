"""``medot train pradot``, ``medot benchmark pradot`` and ``medot predict-anomaly`` end to end on the
synthetic benchmark with the offline ``lite`` backbone, and PRADOT on real backbone features."""

from __future__ import annotations

import argparse
import csv
import json

import numpy as np
import pytest
import torch

import medot.backbones
from medot.data.synthetic import render_ct_case, write_synthetic_benchmark
from medot.errors import CheckpointError, DatasetLayoutError
from medot.methods.pradot import PradotConfig, build_model, load_pradot, train_pradot
from medot.methods.pradot.cli import register
from medot.methods.pradot.detector import PradotDetector

FAST = ["--layers", "stride16", "--n-prototypes", "2", "--sinkhorn-iterations", "20", "--device", "cpu", "--quiet"]


@pytest.fixture(scope="module")
def lite():
    return medot.backbones.create_backbone("lite", device="cpu")


@pytest.fixture(autouse=True)
def _reuse_lite(monkeypatch, lite):
    """Every command gets the already loaded lite backbone (loading it takes seconds)."""
    monkeypatch.setattr(medot.backbones, "create_backbone", lambda name="auto", device=None, **_: lite)


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    return write_synthetic_benchmark(tmp_path_factory.mktemp("synthetic"), size=64, n_per_class=4, progress=False)


def run(argv: list[str]) -> int:
    parser = argparse.ArgumentParser()
    commands = parser.add_subparsers(dest="command", required=True)
    train = commands.add_parser("train").add_subparsers(dest="method", required=True)
    benchmark = commands.add_parser("benchmark").add_subparsers(dest="method", required=True)
    register(commands, train, benchmark)
    args = parser.parse_args(argv)
    return args.run(args)


@pytest.fixture(scope="module")
def trained(synthetic, tmp_path_factory, lite):
    out = tmp_path_factory.mktemp("model")
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(medot.backbones, "create_backbone", lambda name="auto", device=None, **_: lite)
        code = run(["train", "pradot", "--data", str(synthetic.mvtec_root), "--alpha", "0", "0.3",
                    "--epochs", "2", "--out", str(out), *FAST])
    assert code == 0
    return out / "model"


def test_train_writes_one_checkpoint_with_every_member(trained, capsys) -> None:
    meta = json.loads(trained.with_suffix(".json").read_text())
    assert meta["method"] == "pradot" and meta["backbone"] == "lite"
    assert [m["name"] for m in meta["members"]] == ["stride16/alpha=0", "stride16/alpha=0.3"]
    assert all(m["grid"] == [14, 14] and m["channels"] == 112 and m["n_prototypes"] == 2 for m in meta["members"])
    assert meta["hyperparameters"]["epochs"] == 2
    assert meta["training"]["batch_size"] == 3  # 4 normals, 1 held out for calibration: 3 < the default batch of 64
    assert (meta["training"]["train_images"], meta["training"]["held_out_normals"]) == (3, 1)
    assert set(meta["metrics"]) >= {"image_auroc", "pixel_auroc", "au_pro@0.3", "au_pro@0.05"}
    assert all(0.0 <= meta["metrics"][key] <= 1.0 for key in ("image_auroc", "pixel_auroc", "au_pro@0.3"))


def test_train_saves_the_patchcore_baseline_beside_the_pradot_model(trained, synthetic, lite) -> None:
    from medot.methods.pradot import load_patchcore

    baseline = trained.with_name("patchcore")
    assert baseline.with_suffix(".safetensors").is_file()
    meta = json.loads(baseline.with_suffix(".json").read_text())
    assert meta["method"] == "patchcore" and meta["layers"] == ["stride16"] and meta["grids"] == {"stride16": [14, 14]}
    assert meta["memory_bank_size"] == round(0.1 * 3 * 14 * 14)  # 10 % coreset of the 3 training images' patches
    assert 0.0 <= meta["metrics"]["pixel_auroc"] <= 1.0
    from medot.methods.pradot import PatchCoreConfig, PatchCoreModel
    from medot.methods.pradot.data import hold_out_normals, load_anomaly_splits
    from medot.methods.pradot.training import encode_tokens

    # the same coreset as a PatchCore fitted (default config, seed 0) on the training normals' tokens
    # (those not held out for calibration)
    train, _ = hold_out_normals(load_anomaly_splits(synthetic.mvtec_root, "phantom").train, 0.2, seed=0)
    tokens, grids = encode_tokens(lite, train, ["stride16"], progress=False)
    refit = PatchCoreModel(["stride16"], grids, PatchCoreConfig(seed=0))
    refit.fit(tokens)
    assert torch.allclose(load_patchcore(baseline, lite).model.memory_bank, refit.memory_bank)


def test_predict_anomaly_writes_the_map_and_overlay_and_prints_the_score(trained, synthetic, tmp_path, capsys) -> None:
    images = [synthetic.mvtec_root / "phantom/test/nodule/000.png", synthetic.mvtec_root / "phantom/test/good/000.png"]
    capsys.readouterr()
    assert run(["predict-anomaly", *map(str, images), "--model", str(trained), "--out", str(tmp_path), "--json"]) == 0
    results = json.loads(capsys.readouterr().out)["results"]
    assert [r["map"] for r in results] == [str(tmp_path / "000-1_pradot.npy"), str(tmp_path / "000-2_pradot.npy")]

    detector = load_pradot(trained)
    from medot.data.io import read_image

    maps, scores = detector.predict([read_image(path).rgb() for path in images])
    for result, expected_map, expected_score in zip(results, maps.numpy(), scores.tolist()):
        saved = np.load(result["map"])
        np.testing.assert_array_equal(saved, expected_map)
        assert result["score"] == pytest.approx(expected_score) == pytest.approx(float(saved.max()))
        with open(result["overlay"], "rb") as handle:
            assert handle.read(8) == b"\x89PNG\r\n\x1a\n"


def test_benchmark_prints_and_writes_pradot_and_patchcore_rows(synthetic, tmp_path, capsys) -> None:
    assert run(["benchmark", "pradot", "--data", str(synthetic.mvfa_root), "--object", "Phantom", "--alpha", "0.3",
                "--epochs", "1", "--out", str(tmp_path), *FAST]) == 0
    printed = capsys.readouterr().out
    assert "img AUROC" in printed and "AU-PRO@0.05" in printed and "normalised by L" in printed
    with (tmp_path / "results.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert [(r["class"], r["method"]) for r in rows] == [("Phantom", "PRADOT"), ("Phantom", "PatchCore")]
    assert all(0.0 <= float(r["pixel_auroc"]) <= 1.0 for r in rows)
    summary = json.loads((tmp_path / "results.json").read_text())
    assert summary["fpr_limits"] == [0.3, 0.05] and summary["rows"][0]["method"] == "PRADOT"


def test_user_errors_are_medot_errors(synthetic, trained, tmp_path) -> None:
    with pytest.raises(DatasetLayoutError, match="class-folder dataset"):
        run(["train", "pradot", "--data", str(synthetic.kmat_high), *FAST])
    with pytest.raises(DatasetLayoutError, match="no class 'brain'"):
        run(["train", "pradot", "--data", str(synthetic.mvtec_root), "--category", "brain", *FAST])

    class Other:
        name = "biomedclip"

    with pytest.raises(CheckpointError, match="trained on backbone 'lite'"):
        load_pradot(trained, Other())


def _ct(seed) -> np.ndarray:
    return np.repeat(render_ct_case("normal", seed, 64)[0][..., None] / 255.0, 3, axis=2).astype(np.float32)


def test_an_injected_lesion_scores_above_normal_regions(lite) -> None:
    normals = [_ct((7, index)) for index in range(4)]
    with torch.inference_mode():
        features = lite.encode_image(lite.transform_batch(normals), ["stride16"])
    tokens = {"stride16": features.patch_tokens["stride16"].float().clone()}
    config = PradotConfig(layers=("stride16",), alphas=(0.3,), n_prototypes=2, epochs=6, sinkhorn_iterations=20)
    model = build_model(config, tokens, features.grids)
    train_pradot(model, tokens, config, progress=False)
    detector = PradotDetector(model, lite, {"image_size": 224})

    image = _ct((8, 0))
    rows, cols = np.mgrid[:64, :64]
    lesion = (rows - 28) ** 2 + (cols - 36) ** 2 < 8**2
    with_lesion = image.copy()
    with_lesion[lesion] = 1.0
    maps, scores = detector.predict([image, with_lesion])
    inside = torch.nn.functional.interpolate(torch.tensor(lesion[None, None], dtype=torch.float32), size=(224, 224))
    inside = inside[0, 0].bool()
    assert maps[1][inside].mean() > maps[1][~inside].mean()
    assert maps[1][inside].mean() > maps[0][inside].mean()
    assert scores[1] > scores[0]
