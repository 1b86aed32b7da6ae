"""Anomaly scores on a normal-referenced scale (#11 item 2): :class:`NormalCalibration` by hand, its
round trip through a checkpoint, PatchCore's image score = the maximum of its map, and
``medot predict-anomaly`` printing the calibrated score and verdict for PRADOT and PatchCore."""

from __future__ import annotations

import argparse
import json

import numpy as np
import pytest
import torch

import medot.backbones
from medot.errors import CheckpointError
from medot.eval import MetricError, NormalCalibration
from medot.methods.pradot.config import PatchCoreConfig
from medot.methods.pradot.data import hold_out_normals
from medot.methods.pradot.patchcore import PatchCoreModel


# ---------------------------------------------------------------------------------- the scale
def test_percentile_threshold_and_pixel_scale_by_hand() -> None:
    maps = np.arange(40, dtype=np.float64).reshape(4, 2, 5) / 10.0  # pixels 0.0, 0.1, ..., 3.9
    calibration = NormalCalibration.fit([4.0, 1.0, 3.0, 2.0], maps)
    assert calibration.image_scores == (1.0, 2.0, 3.0, 4.0)
    # percentile among normals: share of normal scores <= s
    assert calibration.percentile(0.5) == 0.0
    assert calibration.percentile(2.0) == 50.0
    assert calibration.percentile(2.5) == 50.0
    assert calibration.percentile(4.0) == 100.0
    np.testing.assert_array_equal(calibration.percentile(np.array([1.0, 3.5])), [25.0, 75.0])
    # 99th percentile, linear between order statistics: position 0.99 * 3 = 2.97 -> 3 + 0.97 * (4 - 3)
    assert calibration.image_threshold == pytest.approx(3.97)
    # pixels: 40 values 0.0 .. 3.9, position 0.99 * 39 = 38.61 -> 3.8 + 0.61 * 0.1
    assert calibration.pixel_threshold == pytest.approx(3.861)
    np.testing.assert_allclose(calibration.pixel_scale(np.array([3.861, 0.0, 7.722])), [1.0, 0.0, 2.0], rtol=1e-6)


def test_verdict_flips_at_the_stated_threshold() -> None:
    calibration = NormalCalibration.fit([1.0, 2.0, 3.0, 4.0], np.zeros((4, 2, 2)) + 0.5)
    threshold = calibration.image_threshold
    assert threshold == pytest.approx(3.97)
    assert calibration.verdict(threshold) == "normal"
    assert calibration.verdict(float(np.nextafter(threshold, np.inf))) == "anomalous"
    assert calibration.verdict(3.96) == "normal" and calibration.verdict(3.98) == "anomalous"
    assert calibration.verdict(-10.0) == "normal"
    median = NormalCalibration.fit([1.0, 2.0, 3.0, 4.0], np.ones((4, 2, 2)), quantile=0.5)
    assert median.image_threshold == 2.5
    assert (median.verdict(2.5), median.verdict(2.51)) == ("normal", "anomalous")
    reading = calibration.describe(5.0)
    assert reading.startswith("Anomalous") and "100 % of 4 held-out normal images" in reading and "99th" in reading
    assert calibration.describe(2.0).startswith("Normal")


def test_round_trip_through_json_and_errors() -> None:
    rng = np.random.default_rng(0)
    pixels = rng.uniform(size=(7, 4, 4))
    calibration = NormalCalibration.fit(rng.normal(size=7), pixels, source="7 held-out normals")
    restored = NormalCalibration.from_meta(json.loads(json.dumps({"calibration": calibration.to_dict()})))
    assert restored == calibration
    assert restored.pixel_threshold == pytest.approx(float(np.quantile(pixels, 0.99)))
    assert restored.pixel_quantiles[restored.pixel_levels.index(0.5)] == pytest.approx(float(np.median(pixels)))
    assert NormalCalibration.from_meta({}) is None
    with pytest.raises(MetricError, match="at least one held-out normal"):
        NormalCalibration.fit([], np.zeros((0, 2, 2)))
    with pytest.raises(MetricError, match="finite"):
        NormalCalibration.fit([1.0, float("nan")], np.zeros((2, 2, 2)))
    with pytest.raises(MetricError, match="incomplete"):
        NormalCalibration.from_dict({"image_scores": [1.0]})


def test_held_out_normals_are_disjoint_from_training_and_seeded(tmp_path) -> None:
    paths = tuple(tmp_path / f"{i}.png" for i in range(10))
    train, held = hold_out_normals(paths, 0.2, seed=3)
    assert len(held) == 2 and len(train) == 8 and not set(train) & set(held) and set(train) | set(held) == set(paths)
    assert hold_out_normals(paths, 0.2, seed=3) == (train, held)
    assert hold_out_normals(paths[:1], 0.2) == (paths[:1], ())
    assert len(hold_out_normals(paths[:2], 0.9)[1]) == 1  # at most N - 1 held out
    assert hold_out_normals(paths, 0.0) == (paths, ())


# ---------------------------------------------------------------------------------- PatchCore score
@pytest.mark.parametrize("reweight", [False, True])
def test_patchcore_image_score_is_the_maximum_of_its_map(reweight: bool) -> None:
    generator = torch.Generator().manual_seed(0)
    train = {"layer": torch.randn(3, 16, 6, generator=generator)}
    test = {"layer": torch.randn(2, 16, 6, generator=generator)}
    model = PatchCoreModel(["layer"], {"layer": (4, 4)}, PatchCoreConfig(coreset_ratio=0.5, reweight=reweight))
    model.fit(train)
    maps, scores = model(test, (32, 32))
    top = maps.flatten(1).amax(1)
    if reweight:
        assert bool((scores < top).all()) and bool((scores > 0).all())  # Eq. 7's weight is in (0, 1)
    else:
        torch.testing.assert_close(scores, top, rtol=0, atol=0)


# ---------------------------------------------------------------------------------- CLI
@pytest.fixture(scope="module")
def lite():
    return medot.backbones.create_backbone("lite", device="cpu")


@pytest.fixture(scope="module")
def trained(tmp_path_factory, lite):
    from medot.data.synthetic import write_synthetic_benchmark
    from medot.methods.pradot.cli import register

    synthetic = write_synthetic_benchmark(tmp_path_factory.mktemp("synthetic"), size=64, n_per_class=8,
                                          progress=False)
    out = tmp_path_factory.mktemp("model")
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(medot.backbones, "create_backbone", lambda name="auto", device=None, **_: lite)
        assert run(register, ["train", "pradot", "--data", str(synthetic.mvtec_root), "--epochs", "1", "--out",
                              str(out), "--layers", "stride16", "--n-prototypes", "2", "--device", "cpu",
                              "--quiet"]) == 0
    return synthetic, out


def run(register, argv: list[str]) -> int:
    parser = argparse.ArgumentParser()
    commands = parser.add_subparsers(dest="command", required=True)
    train = commands.add_parser("train").add_subparsers(dest="method", required=True)
    benchmark = commands.add_parser("benchmark").add_subparsers(dest="method", required=True)
    register(commands, train, benchmark)
    args = parser.parse_args(argv)
    return args.run(args)


def _expected(path, images, lite):
    from medot.data.io import read_image
    from medot.methods.pradot.patchcore_io import load_anomaly_detector

    detector = load_anomaly_detector(path, lite)
    maps, scores = detector.predict([read_image(image).rgb() for image in images])
    return detector, maps, scores


@pytest.mark.parametrize("stem", ["model", "patchcore"])
def test_checkpoints_store_a_calibration_from_held_out_normals_only(trained, lite, stem) -> None:
    synthetic, out = trained
    from medot.methods.pradot.data import load_anomaly_splits

    normals = load_anomaly_splits(synthetic.mvtec_root, "phantom").train
    _, held = hold_out_normals(normals, 0.2, seed=0)
    meta = json.loads((out / f"{stem}.json").read_text())
    assert meta["training"]["held_out_normals"] == len(held) >= 1
    assert meta["training"]["train_images"] == len(normals) - len(held)
    # the stored normal scores are the model's own scores of the held-out normals, recomputed here
    _, _, scores = _expected(out / stem, held, lite)
    np.testing.assert_allclose(meta["calibration"]["image_scores"], np.sort(scores.numpy()), rtol=1e-5)


@pytest.mark.parametrize("stem", ["model", "patchcore"])
def test_predict_anomaly_prints_the_calibrated_score_and_verdict(trained, lite, tmp_path, capsys, stem,
                                                                 monkeypatch) -> None:
    from medot.methods.pradot.cli import register

    monkeypatch.setattr(medot.backbones, "create_backbone", lambda name="auto", device=None, **_: lite)
    synthetic, out = trained
    images = [synthetic.mvtec_root / "phantom/test/nodule/000.png", synthetic.mvtec_root / "phantom/test/good/000.png"]
    detector, maps, scores = _expected(out / stem, images, lite)
    calibration = detector.calibration
    assert calibration is not None
    capsys.readouterr()
    assert run(register, ["predict-anomaly", *map(str, images), "--model", str(out / stem), "--out", str(tmp_path),
                          "--json"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["calibrated"] and printed["method"] == detector.meta["method"]
    for result, anomaly_map, score in zip(printed["results"], maps.numpy(), scores.tolist()):
        assert result["score"] == pytest.approx(score, rel=1e-5) == pytest.approx(float(anomaly_map.max()), rel=1e-5)
        assert result["percentile_among_normals"] == calibration.percentile(score)
        assert result["verdict"] == calibration.verdict(score)
        assert result["image_threshold"] == pytest.approx(calibration.image_threshold)
        assert result["region_fraction"] == pytest.approx(float((calibration.pixel_scale(anomaly_map) >= 1).mean()))
        np.testing.assert_array_equal(np.load(result["map"]), anomaly_map)
    assert run(register, ["predict-anomaly", str(images[0]), "--model", str(out / stem), "--out", str(tmp_path)]) == 0
    line = capsys.readouterr().out
    verdict = calibration.verdict(float(scores[0])).upper()
    assert f"anomaly score {float(scores[0]):.4f}, {verdict} (" in line
    assert f"among {calibration.count} held-out normals" in line and "99th percentile" in line


def test_predict_anomaly_refuses_other_checkpoints(tmp_path, lite) -> None:
    from medot.checkpoint import Checkpoint, save_checkpoint
    from medot.methods.pradot.patchcore_io import load_anomaly_detector

    save_checkpoint(tmp_path / "kmat", Checkpoint({"w": torch.zeros(1)}, {"method": "kmat", "backbone": "lite"}))
    with pytest.raises(CheckpointError, match="reads PRADOT and PatchCore checkpoints"):
        load_anomaly_detector(tmp_path / "kmat", lite)
