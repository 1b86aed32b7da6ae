"""``medot predict --model``: a trained K-MaT checkpoint from the command line, as the app's
Classify tab uses it (modality from the DICOM tag or --modality, the same evidence)."""

from __future__ import annotations

import json

import pydicom
import pytest
from pydicom.data import get_testdata_file

from kmat_checkpoint import train_tiny_kmat
from medot.backbones import create_backbone
from medot.cli import main
from medot.data.io import read_image
from medot.methods.kmat.predictor import load_kmat_predictor
from test_kmat import write_tiny_task
from tiny_open_clip import write_tiny_biomedclip

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    backbone = create_backbone(f"local-dir:{write_tiny_biomedclip(tmp_path_factory.mktemp('tiny_model'))}", "cpu")
    task = write_tiny_task(tmp_path_factory.mktemp("task"))
    model = train_tiny_kmat(backbone, task, tmp_path_factory.mktemp("run"), tmp_path_factory.mktemp("cache"),
                            evaluated=True)
    return model, load_kmat_predictor(model, backbone)


def _dicom(path, modality: str) -> str:
    dataset = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    dataset.Modality = modality
    dataset.save_as(path)
    return str(path)


def test_predict_with_a_trained_model_scores_each_image_with_its_modalitys_prompts(trained, tmp_path, capsys):
    model, predictor = trained
    ct, dx = _dicom(tmp_path / "ct.dcm", "CT"), _dicom(tmp_path / "dx.dcm", "DX")
    assert main(["predict", ct, dx, "--model", str(model), "--json"]) == 0
    results = json.loads(capsys.readouterr().out)["results"]
    assert [r["modality"] for r in results] == ["ct", "xray"]  # from each file's Modality tag
    for result, path, side in zip(results, (ct, dx), ("high", "low"), strict=True):
        expected = predictor.predict_proba([read_image(path)], side)[0].tolist()
        assert list(result["probabilities"]) == list(predictor.class_names)
        assert list(result["probabilities"].values()) == pytest.approx(expected, abs=1e-5)
        assert result["chance"] == pytest.approx(1 / 3)
        key = "acc_hi" if side == "high" else "acc_lo"
        assert result["held_out"]["accuracy"] == pytest.approx(predictor.meta["metrics"][key])
        assert result["warning"] is None
    assert main(["predict", ct, "--model", str(model), "--modality", "xray"]) == 0  # forced: a warning
    out = capsys.readouterr().out
    assert "(xray prompts)" in out and "Warning: the image's DICOM Modality is CT (CT)" in out
    assert "Chance level: 33.3%" in out and "not a diagnosis" in out


@pytest.mark.parametrize(("argv", "message"), [
    (["--labels", "a,b", "--model", "{model}"], "give --labels"),
    ([], "give --labels"),
    (["--labels", "a,b", "--modality", "ct"], "zero-shot (--labels) has none"),
    (["--model", "{model}", "--modality", "mri"], "unknown modality 'mri'"),
    (["--model", "{model}", "--window", "brain"], "unknown window preset 'brain'"),
    (["--model", "{model}", "--frame", "4"], "frame 4 does not exist"),
])
def test_predict_refuses_contradictory_options_in_one_line(trained, tmp_path, capsys, argv, message):
    model, _ = trained
    image = _dicom(tmp_path / "ct.dcm", "CT")
    assert main(["predict", image, *[a.replace("{model}", str(model)) for a in argv]]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
