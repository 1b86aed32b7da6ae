"""medot.eval.evidence and medot.data.modality: the words beside a classification's scores."""

import pytest

from medot.data.modality import dicom_modality, display_name, match_modality
from medot.eval.evidence import chance_level, held_out_metrics, modality_warning, prediction_evidence

META = {
    "method": "kmat", "class_names": ["benign", "malignant"], "modalities": {"high": "mammography", "low": "ultrasound"},
    "metrics": {"acc_hi": 0.8125, "acc_lo": 0.625, "f1_hi": 0.8, "f1_lo": 0.5714}, "task": "breast", "shots": 16,
    "seed": 2,
}


@pytest.mark.parametrize(("tag", "key"), [("CT", "ct"), ("dx ", "xray"), ("CR", "xray"), ("MG", "mammography"),
                                          ("US", "ultrasound"), ("OT", None), ("", None), (None, None)])
def test_dicom_modality_terms_map_to_task_modalities(tag, key):
    assert dicom_modality(tag) == key


def test_match_modality_picks_the_side_the_tag_names_or_none():
    assert match_modality("CT", ("ct", "xray")) == "high"
    assert match_modality("DX", ("ct", "xray")) == "low"
    assert match_modality("MR", ("ct", "xray")) is None
    assert match_modality(None, ("ct", "xray")) is None
    assert [display_name(k) for k in ("ct", "xray", "clinical", "something")] == [
        "CT", "X-ray", "Clinical photograph", "something"]


def test_held_out_metrics_read_the_side_of_the_modality_used():
    low = held_out_metrics(META, "low")
    assert (low.modality, low.accuracy, low.macro_f1, low.task, low.shots, low.seed) == (
        "ultrasound", 0.625, 0.5714, "breast", 16, 2)
    assert held_out_metrics(META, "high").accuracy == 0.8125
    assert held_out_metrics({"modalities": META["modalities"]}, "high") is None
    with pytest.raises(ValueError, match="'high' or 'low'"):
        held_out_metrics(META, "ct")


def test_evidence_of_a_trained_model_on_a_mismatched_image():
    evidence = prediction_evidence(["benign", "malignant"], [0.3, 0.7], meta=META, side="low", dicom_tag="MG")
    assert evidence.chance == 0.5 == chance_level(2)
    assert evidence.heading() == "Highest of the 2 given labels: malignant (70%)"
    text = "\n".join(evidence.lines())
    assert "softmax over the 2 labels given" in text and "Chance level: 50.0%" in text
    assert "held-out Ultrasound test images: accuracy 62.5% and macro-F1 0.57 (task breast, 16 shots, seed 2)." in text
    assert ("**Warning:** the image's DICOM Modality is MG (Mammography), but the scores use this model's "
            "Ultrasound prompts") in text


def test_evidence_without_a_mismatch_and_for_zero_shot():
    assert modality_warning("US", "ultrasound") is None
    assert modality_warning(None, "ultrasound") is None
    assert "DICOM Modality is OT," in modality_warning("OT", "ultrasound")
    zero_shot = prediction_evidence(["a", "b", "c"], [0.2, 0.5, 0.3], dicom_tag="CT")
    assert zero_shot.warning is None and zero_shot.held_out is None
    assert "Chance level: 33.3%" in "\n".join(zero_shot.lines())
    assert "no held-out test figures exist" in "\n".join(zero_shot.lines())
    unmeasured = prediction_evidence(["a", "b"], [0.5, 0.5], meta={"modalities": META["modalities"]}, side="high")
    assert "records no held-out test figures" in "\n".join(unmeasured.lines())
    with pytest.raises(ValueError, match="one probability per label"):
        prediction_evidence(["a"], [0.5, 0.5])


def test_result_rows_of_a_prompt_classifier_and_of_an_anomaly_detector():
    from medot.eval.evidence import result_rows

    rows = [(r.metric, r.value, r.chance) for r in result_rows(META)]
    assert rows == [("accuracy, Mammography", 0.8125, 0.5), ("macro-F1, Mammography", 0.8, 0.5),
                    ("accuracy, Ultrasound", 0.625, 0.5), ("macro-F1, Ultrasound", 0.5714, 0.5)]
    pradot = {"metrics": {"class": "bottle", "image_auroc": 0.9, "pixel_auroc": None, "au_pro@0.3": 0.6,
                          "au_pro@0.05": 0.2, "ms_per_image": 12.0}}
    rows = [(r.metric, r.value, r.chance) for r in result_rows(pradot)]
    assert rows == [("image AUROC", 0.9, 0.5), ("AU-PRO up to FPR 0.3", 0.6, 0.15),
                    ("AU-PRO up to FPR 0.05", 0.2, 0.025)]
    assert result_rows({}) == []


def test_the_result_card_writes_accuracy_in_percent_as_the_classify_tab_and_auroc_as_a_fraction(tmp_path):
    """The Train tab's card showed "accuracy, CT | 0.000 | 0.333" where the Classify tab and the CLI
    write percentages; AUROC / AU-PRO stay in [0, 1]."""
    import json
    from types import SimpleNamespace

    from app.train import result_card

    model = tmp_path / "model.safetensors"
    model.with_suffix(".json").write_text(json.dumps(META))
    card = result_card(SimpleNamespace(id=3, method="kmat", checkpoint_path=str(model)))
    assert "| macro-F1, Mammography | 80.0 % | 50.0 % |" in card
    assert "| accuracy, Ultrasound | 62.5 % | 50.0 % |" in card
    model.with_suffix(".json").write_text(json.dumps({"method": "pradot", "metrics": {"image_auroc": 0.9}}))
    card = result_card(SimpleNamespace(id=4, method="pradot", checkpoint_path=str(model)))
    assert "| image AUROC | 0.900 | 0.500 |" in card
