"""Anomaly localisation tab: a trained PRADOT model's (or its PatchCore baseline's) anomaly map over
an uploaded image, its image score, a threshold outline, and, for PRADOT, the prototype a clicked
patch was matched to.

``medot train pradot`` saves both models of a run (``<out>/model``, ``<out>/patchcore``); the
Method radio picks which kind the model list offers, and a detection runs the chosen checkpoint's
own detector."""

from __future__ import annotations

from dataclasses import dataclass

import gradio as gr
import numpy as np

from app.backbones import BackboneCache, describe
from app.feedback import UPLOAD_KINDS, read_upload, user_errors
from app.models import ModelCache, listed_model, model_choices
from medot.config import Settings
from medot.data.examples import example_images
from medot.methods.pradot.data import view_image
from medot.methods.pradot.detector import METHOD, BackboneDetector, load_pradot
from medot.methods.pradot.patchcore_io import METHOD as PATCHCORE, load_patchcore
from medot.viz import anomaly_overlay

#: Method radio label -> checkpoint method
METHODS = {"PRADOT": METHOD, "PatchCore (baseline)": PATCHCORE}
LOADERS = {METHOD: load_pradot, PATCHCORE: load_patchcore}
PATCHCORE_NOTE = (
    "PatchCore, PRADOT's nearest-neighbour baseline, is saved beside every PRADOT model that "
    "`medot train pradot` writes; pick it with **Method** to compare the two maps. "
    "Prototype look-up on click is PRADOT-only."
)
NO_PROTOTYPES = (
    "Prototype look-up is PRADOT-only: PatchCore scores a patch by its distance to the nearest "
    "memory-bank patch and has no prototypes. Choose a PRADOT model to look one up."
)


@dataclass(frozen=True)
class Detection:
    """One prediction kept between events: the backbone's view ``[S, S, 3]`` in [0, 1], its anomaly
    map ``[S, S]``, the image score and the model it came from."""

    model: str
    view: np.ndarray
    anomaly_map: np.ndarray
    score: float

from gradio.events import Dependency

class MapThreshold(gr.Slider):
    """The threshold slider, whose range follows the last map drawn in the session. A value outside
    that range (an API call's default, a value from an earlier map) is passed on, not refused:
    :func:`detect` puts the threshold back at the new map's maximum, :func:`render` outlines nothing."""

    is_template = True  # drawn by Gradio's own slider

    def preprocess(self, payload: float | None) -> float | None:
        return None if payload is None else float(payload)
    from typing import Callable, Literal, Sequence, Any, TYPE_CHECKING
    from gradio.blocks import Block
    if TYPE_CHECKING:
        from gradio.components import Timer
        from gradio.components.base import Component


class DetectorCache:
    """PRADOT and PatchCore detectors, loaded once per checkpoint content (:class:`ModelCache`) on
    the shared backbones."""

    def __init__(self, backbones: BackboneCache) -> None:
        self._backbones = backbones
        self._loaded: ModelCache[BackboneDetector] = ModelCache()

    def get(self, path: str, backbone_name: str, method: str = METHOD) -> BackboneDetector:
        return self._loaded.get(path, lambda: LOADERS[method](path, self._backbones.get(backbone_name)),
                                variant=f"{method}:{backbone_name}")


def detect(detectors: DetectorCache, settings: Settings, file_path: str | None, model: str | None,
           opacity: float, threshold: float | None):
    """Returns (overlay, image score, summary line, threshold slider update, detection state)."""
    image = read_upload(file_path)
    with user_errors():
        meta = listed_model(settings, model, tuple(LOADERS))
        detector = detectors.get(model, meta["backbone"], meta["method"])
        view = view_image(detector.backbone, image.rgb())
        maps, scores = detector.predict([view])
    detection = Detection(model, view, maps[0].numpy(), float(scores[0]))
    low, high = float(detection.anomaly_map.min()), float(detection.anomaly_map.max())
    value = threshold if threshold is not None and low <= threshold <= high else high
    slider = gr.update(minimum=low, maximum=high, value=value, interactive=True)
    summary = (
        f"**Image anomaly score: {detection.score:.4f}** (maximum of the map; the map ranges over "
        f"[{low:.4f}, {high:.4f}]).  \n{_describe_model(meta)} {describe(detector.backbone)}"
    )
    return render(detection, opacity, value), detection.score, summary, slider, detection


def _describe_model(meta: dict) -> str:
    if meta["method"] == PATCHCORE:
        return (f"PatchCore baseline: {meta['memory_bank_size']} memory-bank patches of "
                f"{', '.join(meta['layers'])}.")
    return "PRADOT ensemble: " + ", ".join(f"{m['layer']} α={m['alpha']:g}" for m in meta["members"]) + "."


def render(detection: Detection | None, opacity: float, threshold: float | None) -> np.ndarray | None:
    """The map over the view, with the ``{map >= threshold}`` region outlined."""
    if detection is None:
        return None
    with user_errors():
        return anomaly_overlay(detection.view, detection.anomaly_map, opacity=opacity, threshold=threshold)


def matched_prototype(detectors: DetectorCache, settings: Settings, detection: Detection | None,
                      member: int, event: gr.SelectData) -> str:
    """Which prototype of ensemble ``member`` the clicked patch was matched to, and where on the grid
    (PRADOT models only)."""
    if detection is None:
        return "Run the detection first, then click a point of the map."
    with user_errors():
        meta = listed_model(settings, detection.model, tuple(LOADERS))
        if meta["method"] != METHOD:
            return NO_PROTOTYPES
        detector = detectors.get(detection.model, meta["backbone"])
        match = detector.matched_prototypes([detection.view], member)
    spec = meta["members"][member]
    rows, cols = spec["grid"]
    size = detection.anomaly_map.shape
    x, y = event.index
    row, col = min(int(y * rows / size[0]), rows - 1), min(int(x * cols / size[1]), cols - 1)
    patch = row * cols + col
    cell = int(match.cell[0, patch])
    position_row, position_col = (float(v) for v in match.position[0, patch])
    return (
        f"Pixel ({x}, {y}) lies in patch (row {row}, column {col}) of the {rows}×{cols} grid of member "
        f"{spec['layer']} α={spec['alpha']:g}. It was matched to prototype {int(match.index[0, patch])} "
        f"(copy {int(match.copy[0, patch])}, created at cell (row {cell // cols}, column {cell % cols})), "
        f"now at position (row {position_row:.3f}, column {position_col:.3f}) in [0, 1]²; "
        f"matched cost {float(match.cost[0, patch]):.4f}."
    )


def build_anomaly_tab(backbones: BackboneCache, settings: Settings) -> gr.Dropdown:
    """Lay out the tab; returns its model dropdown (refreshed when training adds a model)."""
    detectors = DetectorCache(backbones)
    choices = model_choices(settings, (METHOD,))
    detection = gr.State(None)
    gr.Markdown(PATCHCORE_NOTE)
    with gr.Row():
        with gr.Column():
            upload = gr.File(label=f"Image ({UPLOAD_KINDS})", type="filepath")
            gr.Examples([[str(path)] for path in example_images()], inputs=[upload], label="Bundled examples")
            method = gr.Radio(list(METHODS), value="PRADOT", label="Method")
            # the list follows the Method radio; any listed checkpoint of either method is accepted
            # (``listed_model`` refuses every other path), so API calls need not set the radio first
            model = gr.Dropdown(choices, value=choices[0][1] if choices else None, label="PRADOT model",
                                allow_custom_value=True)
            member = gr.Dropdown([("first ensemble member", 0)], value=0, label="Member for prototype look-up")
            opacity = gr.Slider(0.0, 1.0, value=0.5, step=0.05, label="Map opacity")
            threshold = MapThreshold(0.0, 1.0, value=1.0, label="Threshold (map units; region outlined)",
                                     interactive=False)
            run = gr.Button("Detect anomalies", variant="primary")
        with gr.Column():
            overlay = gr.Image(label="Anomaly map (click a point: its matched prototype)", type="numpy",
                               interactive=False)
            score = gr.Number(label="Image anomaly score", interactive=False, precision=4)
            summary = gr.Markdown()
            prototype = gr.Markdown()
    run.click(
        lambda f, m, o, t: detect(detectors, settings, f, m, o, t),
        inputs=[upload, model, opacity, threshold],
        outputs=[overlay, score, summary, threshold, detection],
        api_name="detect_anomalies",
    )
    method.change(lambda label: _model_list(settings, label), inputs=[method], outputs=[model], api_name=False)
    model.change(lambda path: _member_choices(settings, path), inputs=[model], outputs=[member])
    for slider in (opacity, threshold):
        slider.release(render, inputs=[detection, opacity, threshold], outputs=[overlay], api_name=False)

    def on_select(current: Detection | None, chosen_member: int, event: gr.SelectData) -> str:
        return matched_prototype(detectors, settings, current, chosen_member, event)

    overlay.select(on_select, inputs=[detection, member], outputs=[prototype], api_name=False)
    return model


def _model_list(settings: Settings, label: str):
    """The model dropdown for the Method radio's ``label``: that method's checkpoints, newest first."""
    choices = model_choices(settings, (METHODS[label],))
    return gr.update(choices=choices, value=choices[0][1] if choices else None, label=f"{label} model")


def _member_choices(settings: Settings, path: str | None):
    if not path:
        return gr.update(choices=[("first ensemble member", 0)], value=0)
    with user_errors():
        meta = listed_model(settings, path, tuple(LOADERS))
    if meta["method"] != METHOD:
        return gr.update(choices=[("PRADOT only", 0)], value=0)
    members = meta["members"]
    return gr.update(choices=[(f"{m['layer']} α={m['alpha']:g}", i) for i, m in enumerate(members)], value=0)