"""The app's K-MaT views through its HTTP API (gradio_client): Classify with a trained K-MaT model,
Prompt manifolds and FGW coupling, against a live ``python app.py`` whose MEDOT_HOME holds a tiny
trained K-MaT checkpoint (tiny BiomedCLIP-shaped backbone with random weights) and two
artefacts-only ones, all written before the server starts (the model lists are built at start)."""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("gradio_client")
from gradio_client import Client, handle_file  # noqa: E402

from app_server import AppServer  # noqa: E402
from kmat_checkpoint import train_tiny_kmat, write_artefacts_checkpoint  # noqa: E402
from medot.backbones.base import VisionLanguageBackbone  # noqa: E402
from medot.checkpoint import checkpoint_paths, load_checkpoint  # noqa: E402
from medot.data.modality import display_name  # noqa: E402
from test_kmat import write_tiny_task  # noqa: E402
from tiny_open_clip import write_tiny_biomedclip  # noqa: E402


@dataclass(frozen=True)
class KMaTViews:
    """The live app and the models it lists: ``trained`` (a real K-MaT run), ``stored`` (artefacts
    only, same embedding width) and ``removed`` (deleted by the error test)."""

    client: Client
    backbone: VisionLanguageBackbone
    trained: str
    stored: str
    removed: str
    home: Path

    def id(self, path: str) -> str:
        """The model id the app lists for ``path`` and its API takes: the file relative to MEDOT_HOME."""
        return Path(path).relative_to(self.home).as_posix()


@pytest.fixture(scope="module")
def views(tmp_path_factory):
    from medot.backbones import create_backbone

    previous = torch.get_num_threads()
    torch.set_num_threads(1)  # the tiny towers' small matmuls are fastest on one thread of a busy CPU
    try:
        home, data_root = tmp_path_factory.mktemp("kmat_home"), tmp_path_factory.mktemp("kmat_data")
        backbone = create_backbone(f"local-dir:{write_tiny_biomedclip(tmp_path_factory.mktemp('tiny_model'))}", "cpu")
        task_file = write_tiny_task(tmp_path_factory.mktemp("tiny_task"))
        run_dir = home / "models" / "kmat-tiny"
        trained, _ = checkpoint_paths(
            train_tiny_kmat(backbone, task_file, run_dir, tmp_path_factory.mktemp("cache"), evaluated=True)
        )
        dim = load_checkpoint(trained).tensors["artefacts.w_high"].shape[1]
        stored, removed = (
            write_artefacts_checkpoint(home / "models" / name / "model", dim=dim, seed=seed, backbone=backbone.name)
            for seed, name in enumerate(("kmat-stored", "kmat-removed"))
        )
        server = AppServer(home, data_root)
        try:
            yield KMaTViews(Client(server.url, verbose=False), backbone, str(trained), str(stored), str(removed),
                            home)
        finally:
            server.kill()
    finally:
        torch.set_num_threads(previous)


def _array(value) -> np.ndarray:
    """A plotly JSON array: a list, or a typed array ``{"dtype", "bdata"[, "shape"]}``."""
    if isinstance(value, dict) and "bdata" in value:
        flat = np.frombuffer(base64.b64decode(value["bdata"]), dtype=np.dtype(value["dtype"]))
        shape = value.get("shape")
        return flat.reshape([int(n) for n in str(shape).split(",")]) if shape else flat
    return np.asarray(value)


def _figure(output) -> dict:
    """The plotly figure (as JSON) of a ``gr.Plot`` output."""
    plot = output["plot"] if isinstance(output, dict) and "plot" in output else output
    return json.loads(plot) if isinstance(plot, str) else plot


def _error_text(call) -> str:
    with pytest.raises(Exception) as raised:
        call()
    return str(raised.value)


def _example(name: str) -> Path:
    from medot.data.examples import example_images

    return next(path for path in example_images() if path.name == name)


def _stored(path: str) -> tuple[list[str], dict[str, torch.Tensor], dict]:
    checkpoint = load_checkpoint(path)
    tensors = {name.removeprefix("artefacts."): t for name, t in checkpoint.tensors.items()}
    return list(checkpoint.meta["class_names"]), tensors, checkpoint.meta


def test_classify_with_the_trained_model_matches_its_predictor_on_the_low_end(views):
    from medot.data.io import read_image
    from medot.methods.kmat.predictor import load_kmat_predictor

    image = _example("xray_nodule.png")
    label, _, info = views.client.predict(
        handle_file(str(image)), "", "lite", views.id(views.trained), "low", api_name="/classify"
    )
    predictor = load_kmat_predictor(views.trained, views.backbone)
    expected = predictor.predict_proba([read_image(image)], "low")[0]
    confidences = {item["label"]: item["confidence"] for item in label["confidences"]}
    assert set(confidences) == set(predictor.class_names)
    assert sum(confidences.values()) == pytest.approx(1.0, abs=1e-5)
    for name, probability in zip(predictor.class_names, expected.tolist(), strict=True):
        assert confidences[name] == pytest.approx(probability, abs=1e-4)
    assert f"{display_name(predictor.modalities[1])} prompts" in info


def _points_per_class(figure: dict) -> dict[str, int]:
    counts: dict[str, int] = {}
    for trace in figure["data"]:
        if trace.get("meta") != "points":  # legend entries and prompt -> anchor links hold no point
            continue
        name = trace["name"].split(" · ")[0]
        hover = trace["hovertext"]
        assert all(f"class: {name}<br>" in text for text in hover), (name, hover)
        assert len(_array(trace["x"])) == len(hover)
        counts[name] = counts.get(name, 0) + len(hover)
    return counts


@pytest.mark.parametrize(("method", "shown_as", "descriptions"), [("tsne", "t-SNE", True), ("umap", "UMAP", False)])
def test_manifold_draws_every_prompt_anchor_and_description(views, method, shown_as, descriptions):
    classes, tensors, _ = _stored(views.trained)
    figure = _figure(views.client.predict(views.id(views.trained), "", method, descriptions, api_name="/manifold"))
    counts = _points_per_class(figure)
    assert set(counts) == set(classes)
    described = tensors["description_embeddings"].shape[0] if descriptions else 0
    assert sum(counts.values()) == 2 * len(classes) + 2 * len(classes) + described  # w_H, w_L, anchors, descriptions
    assert shown_as in figure["layout"]["title"]["text"]
    (links,) = [t for t in figure["data"] if t.get("meta") == "links"]
    assert len(_array(links["x"])) == 3 * 2 * len(classes)  # one prompt -> anchor segment per class and modality


def test_manifold_compares_two_checkpoints_side_by_side(views):
    figure = _figure(views.client.predict(views.id(views.trained), views.id(views.stored), "tsne", True,
                                          api_name="/manifold"))
    panels: dict[str, int] = {}
    for trace in (t for t in figure["data"] if t.get("meta") == "points"):
        panels[trace.get("xaxis", "x")] = panels.get(trace.get("xaxis", "x"), 0) + len(trace["hovertext"])
    (trained_classes, trained, _), (_, stored, _) = _stored(views.trained), _stored(views.stored)
    expected = [4 * len(trained_classes) + trained["description_embeddings"].shape[0],
                4 * len(stored["w_high"]) + stored["description_embeddings"].shape[0]]
    assert [panels[axis] for axis in ("x", "x2")] == expected
    assert len(panels) == 2


def _plan(views, alpha: float, epsilon: float) -> tuple[np.ndarray, dict]:
    figure = _figure(views.client.predict(views.id(views.trained), alpha, epsilon, api_name="/coupling"))
    gamma = figure["data"][0]
    return _array(gamma["z"]).astype(np.float64), gamma


def test_coupling_at_the_trained_settings_is_the_stored_plan_and_moves_with_alpha_and_epsilon(views):
    from medot.viz.kmat_adapters import kmat_coupling, load_kmat_artefacts

    classes, tensors, meta = _stored(views.trained)
    alpha, epsilon = meta["hyper_parameters"]["fgw_alpha"], meta["hyper_parameters"]["fgw_epsilon"]
    trained, gamma = _plan(views, alpha, epsilon)
    assert list(gamma["y"]) == list(gamma["x"]) == classes
    np.testing.assert_allclose(trained, tensors["fgw_plan"].double().numpy(), atol=1e-5)
    artefacts = load_kmat_artefacts(views.trained)
    for moved_alpha, moved_epsilon in ((1.0 - alpha, epsilon), (alpha, epsilon / 4)):
        moved, _ = _plan(views, moved_alpha, moved_epsilon)
        resolved = kmat_coupling(artefacts, moved_alpha, moved_epsilon).plan.double().numpy()
        np.testing.assert_allclose(moved, resolved, atol=1e-5)
        assert np.abs(moved - trained).max() > 1e-4  # ten times the agreement above: Γ really moved
        np.testing.assert_allclose(moved.sum(axis=1), np.full(len(classes), 1 / len(classes)), atol=1e-5)
        np.testing.assert_allclose(moved.sum(axis=0), np.full(len(classes), 1 / len(classes)), atol=1e-5)


def test_a_deleted_model_gives_a_readable_message_and_the_app_keeps_serving(views):
    Path(views.removed).unlink()
    requests = {
        "/classify": lambda: views.client.predict(
            handle_file(str(_example("ct_normal.png"))), "", "lite", views.id(views.removed),
            "high", api_name="/classify"),
        "/manifold": lambda: views.client.predict(views.id(views.removed), "", "tsne", True, api_name="/manifold"),
        "/coupling": lambda: views.client.predict(views.id(views.removed), 0.5, 0.1, api_name="/coupling"),
    }
    for endpoint, call in requests.items():
        message = _error_text(call)
        assert "choose a model from the list" in message, (endpoint, message)
        assert "Traceback" not in message
    trained, _ = _plan(views, 0.5, 0.1)
    assert trained.shape == (3, 3)


def test_classify_shows_the_evidence_behind_the_scores_and_warns_on_another_modality(views):
    meta = load_checkpoint(views.trained).meta
    n, metrics = len(meta["class_names"]), meta["metrics"]
    dicom = _example("CT_small.dcm")  # its Modality tag is CT: the model's high-end modality
    label, _, info = views.client.predict(handle_file(str(dicom)), "", "lite", views.id(views.trained), "low",
                                          api_name="/classify")
    confidences = {item["label"]: item["confidence"] for item in label["confidences"]}
    top = max(confidences, key=confidences.get)
    assert f"Highest of the {n} given labels: {top} ({confidences[top]:.0%})" in info
    assert f"softmax over the {n} labels given" in info and "not a diagnosis" in info
    assert f"Chance level: {1 / n:.1%}" in info
    assert (f"held-out X-ray test images: accuracy {metrics['acc_lo']:.1%} and macro-F1 {metrics['f1_lo']:.2f}"
            in info)
    assert "**Warning:** the image's DICOM Modality is CT (CT), but the scores use this model's X-ray prompts" in info
    _, _, info = views.client.predict(handle_file(str(dicom)), "", "lite", views.id(views.trained), "high",
                                      api_name="/classify")
    assert f"held-out CT test images: accuracy {metrics['acc_hi']:.1%}" in info
    assert "Warning" not in info
