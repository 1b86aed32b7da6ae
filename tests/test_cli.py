"""The `medot` console script as a user runs it."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from skimage import data

from medot.cli import main

ROOT = Path(__file__).resolve().parents[1]


def _run(*args):
    executable = shutil.which("medot")
    command = [executable] if executable else [sys.executable, "-m", "medot"]
    return subprocess.run([*command, *args], capture_output=True, text=True, timeout=600)


def test_help_lists_every_command():
    result = _run("--help")
    assert result.returncode == 0
    for command in ("backbones", "synth", "predict"):
        assert command in result.stdout
    assert "not a clinical model" in result.stdout.lower()


def test_backbones_reports_lite_available_and_why_biomedclip_is_not(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.delenv("MEDOT_BIOMEDCLIP_DIR", raising=False)
    assert main(["backbones", "--json"]) == 0
    statuses = {s["name"]: s for s in json.loads(capsys.readouterr().out)}
    assert statuses["lite"]["available"] is True
    assert statuses["biomedclip"]["available"] is False
    assert statuses["biomedclip"]["detail"]


def test_predict_zero_shot_on_photographs(tmp_path, capsys):
    cat, coffee = tmp_path / "cat.png", tmp_path / "coffee.jpg"
    Image.fromarray(data.chelsea()).save(cat)
    Image.fromarray(data.coffee()).save(coffee, quality=95)
    assert main(["predict", str(cat), str(coffee), "--labels", "cat, cup of coffee", "--backbone", "lite", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["backbone"] == "lite"
    first, second = (r["probabilities"] for r in out["results"])
    assert first["cat"] > first["cup of coffee"]
    assert second["cup of coffee"] > second["cat"]
    assert sum(first.values()) == pytest.approx(1.0, abs=1e-5)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["predict", "{missing}", "--labels", "a,b"], "not found"),
        (["predict", "{text}", "--labels", "a,b"], "not an image"),
        (["predict", "{image}", "--labels", "only-one"], "at least two"),
        (["predict", "{image}", "--labels", "a,b", "--backbone", "nonsense"], "unknown backbone"),
        (["predict", "{image}", "--labels", "a,b", "--backbone", "lite", "--device", "gpu0"], "not a torch device"),
        (["predict", "{image}", "--labels", "a,b", "--backbone", "lite", "--device", "cuda:99"], "--device cuda:99"),
        (["synth", "--out", "{image}/sub"], "{image}/sub"),  # a folder that cannot be created
    ],
)
def test_user_errors_are_one_plain_line(tmp_path, capsys, args, message):
    (tmp_path / "notes.png").write_text("this is not an image")
    Image.fromarray((np.random.default_rng(0).random((32, 32)) * 255).astype(np.uint8)).save(tmp_path / "ok.png")
    paths = {"missing": str(tmp_path / "nope.png"), "text": str(tmp_path / "notes.png"), "image": str(tmp_path / "ok.png")}
    assert main([a.format(**paths) for a in args]) == 2
    err = capsys.readouterr().err
    assert err.startswith("medot: error: ") and message.format(**paths).lower() in err.lower()
    assert err.count("\n") == 1
    assert "Traceback" not in err


HEAVY_MODULES = ("torch", "torchvision", "timm", "transformers", "open_clip")
#: runs medot's main() on argv (JSON list in sys.argv[1]) and reports the exit status and which heavy
#: model libraries the process imported
_IMPORTS_SCRIPT = """
import json, sys
from medot.cli import main
status = main(json.loads(sys.argv[1]))
print(json.dumps({"status": status, "imported": [m for m in %r if m in sys.modules]}))
""" % (HEAVY_MODULES,)


def _imports_of(argv, tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "MEDOT_BIOMEDCLIP_DIR"}
    env.update(HF_HOME=str(tmp_path / "hf"), HF_HUB_OFFLINE="1", PYTHONPATH=str(ROOT))
    result = subprocess.run([sys.executable, "-c", _IMPORTS_SCRIPT, json.dumps(argv)], cwd=ROOT, env=env,
                            capture_output=True, text=True, timeout=600)
    return json.loads(result.stdout.strip().splitlines()[-1]), result


def test_backbones_lists_the_backbones_without_importing_torch(tmp_path):
    """`medot backbones` only checks files: no model library is imported (their imports were most of
    its start-up, benchmarks/cli_startup.py)."""
    report, result = _imports_of(["backbones"], tmp_path)
    assert report["status"] == 0, result.stderr
    assert report["imported"] == []
    assert "lite" in result.stdout and "available" in result.stdout and "'auto' resolves to: lite" in result.stdout


def test_predict_refuses_bad_arguments_before_importing_torch(tmp_path):
    image = tmp_path / "ok.png"
    Image.fromarray((np.random.default_rng(0).random((32, 32)) * 255).astype(np.uint8)).save(image)
    model = tmp_path / "model"
    model.with_suffix(".json").write_text(json.dumps(
        {"method": "kmat", "backbone": "lite", "modalities": {"high": "ct", "low": "xray"}}))
    for argv, message in (
        (["predict", str(image), "--labels", "only-one"], "at least two"),
        (["predict", str(image), "--labels", "a,b", "--backbone", "nonsense"], "unknown backbone"),
        (["predict", str(tmp_path / "nope.png"), "--labels", "a,b"], "not found"),
        (["predict", str(image), "--labels", "a,b", "--window", "brain"], "window"),
        (["predict", str(image), "--model", str(tmp_path / "absent")], "not a medot model checkpoint"),
        (["predict", str(image), "--model", str(model), "--modality", "mri"], "unknown modality 'mri'"),
    ):
        report, result = _imports_of(argv, tmp_path)
        assert report["status"] == 2 and message in result.stderr.lower(), (argv, result.stderr)
        assert report["imported"] == [], argv


def test_synth_writes_the_benchmark(tmp_path):
    result = _run("synth", "--out", str(tmp_path / "synth"), "--n-per-class", "3", "--size", "64", "--quiet")
    assert result.returncode == 0, result.stderr
    manifest = json.loads((tmp_path / "synth" / "manifest.json").read_text())
    assert manifest["complete"] is True and manifest["seed"] == 0
    # 3 classes x 3 cases x 2 modalities in the K-MaT pair
    assert len(list((tmp_path / "synth" / "kmat").rglob("*.png"))) == 18
    again = _run("synth", "--out", str(tmp_path / "synth"), "--n-per-class", "2", "--size", "64", "--quiet")
    assert again.returncode == 2 and again.stderr.startswith("medot: error: ") and "at least" in again.stderr


def test_synth_refuses_a_bad_pretraining_pool_before_writing_anything(tmp_path, capsys):
    assert main(["synth", "--out", str(tmp_path / "s"), "--size", "32", "--n-per-class", "3", "--quiet",
                 "--pretraining-pool", "-1"]) == 2
    assert "--pretraining-pool -1" in capsys.readouterr().err
    assert not (tmp_path / "s").exists()


def test_sub_command_help_says_what_the_command_does_and_what_it_reads(capsys):
    """`medot synth --help` and `medot backbones --help` printed only their options; `predict-anomaly
    --help` named PRADOT / PatchCore checkpoints only, though it reads MADPOT / MVFA ones too."""
    for argv, words in ((["synth", "--help"], ("not clinical data", "--task OUT", "smallest set: --size 32")),
                        (["backbones", "--help"], ("what 'auto' resolves to",)),
                        (["predict-anomaly", "--help"], ("MADPOT / MVFA one",))):
        with pytest.raises(SystemExit) as exited:
            main(argv)
        assert exited.value.code == 0
        text = " ".join(capsys.readouterr().out.split())  # argparse wraps lines
        assert all(word in text for word in words), (argv, text)


@pytest.mark.parametrize("argv", [
    ["benchmark", "kmat", "--task", "synthetic", "--seeds", "1", "-1"],
    ["benchmark", "madpot", "--data", "synthetic", "--seeds", "-1"],
    ["eval", "linear", "--encoder", "lite", "--data", "synthetic", "--seeds", "-1"],
    ["eval", "finetune", "--encoder", "lite", "--data", "synthetic", "--seeds", "2", "-3"],
    ["train", "madpot", "--data", "synthetic", "--seed", "-1"],
    ["train", "kmat", "--task", "synthetic", "--seed", "-1"],
    ["train", "pradot", "--data", "synthetic", "--seed", "-1"],
    ["train", "optiml", "--data", "synthetic", "--seed", "-1"],
    ["synth", "--out", "never-written", "--seed", "-1"],
    ["benchmark", "kmat", "--task", "synthetic", "--seeds", "4294967296"],
    ["benchmark", "madpot", "--data", "synthetic", "--seeds", "1.5"],
])
def test_negative_or_fractional_seeds_are_refused_as_argparse_refuses_a_bad_value(argv, capsys):
    """`medot benchmark kmat --seeds -1` ran with seed -1; every --seed / --seeds takes a whole number
    in [0, 2^32 - 1] and refuses anything else with one error line and exit status 2."""
    with pytest.raises(SystemExit) as exited:
        main(argv)
    assert exited.value.code == 2
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if "error:" in line]
    assert len(errors) == 1 and "is not a seed: give a whole number from 0 to 4294967295" in errors[0], err
    assert "--seed" in errors[0] and "Traceback" not in err


def test_a_negative_seed_is_refused_by_the_console_script(tmp_path):
    result = _run("benchmark", "kmat", "--task", "synthetic", "--seeds", "-1", "--out", str(tmp_path / "out"))
    assert result.returncode == 2 and "argument --seeds: '-1' is not a seed" in result.stderr
    assert "Traceback" not in result.stderr and not (tmp_path / "out").exists()
    assert main_parses_seeds(["benchmark", "kmat", "--task", "synthetic", "--seeds", "0", str(2**32 - 1)]) == [0, 2**32 - 1]


def main_parses_seeds(argv):
    from medot.cli import build_parser

    return build_parser().parse_args(argv).seeds
