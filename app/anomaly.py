"""Anomaly localisation tab: a trained PRADOT model's (or its PatchCore baseline's) anomaly map over
an uploaded image beside the image itself with a colour bar, the region above the calibrated pixel
threshold outlined, the image score read against held-out normal images (percentile and a
normal / anomalous verdict at their 99th percentile, :mod:`medot.eval.calibration`), the model's
training domain, and, for PRADOT, the prototype a clicked patch was matched to.

``medot train pradot`` saves both models of a run (``<out>/model``, ``<out>/patchcore``); the
Method radio picks which kind the model list offers, and a detection runs the chosen checkpoint's
own detector."""

from __future__ import annotations

from dataclasses import dataclass

import gradio as gr
import numpy as np

from app.backbones import BackboneCache, describe
from app.examples import build_example_gallery
from app.feedback import UPLOAD_KINDS, read_upload, user_errors
from app.models import ModelCache, listed_model, model_choices, refreshed, resolve_model
from medot.config import Settings
from medot.methods.madpot.config import MADPOT, MVFA_BASELINE
from medot.methods.madpot.detector import load_madpot, zero_shot_detector
from medot.methods.madpot.viz import assignment_image, assignment_summary
from medot.methods.pradot.data import view_image
from medot.methods.pradot.detector import METHOD, BackboneDetector, load_pradot
from medot.methods.pradot.patchcore_io import METHOD as PATCHCORE, load_patchcore
from medot.eval.calibration import NormalCalibration
from medot.viz.anomaly_panel import GAP, anomaly_panel

#: Method radio label -> checkpoint method
METHODS = {"PRADOT": METHOD, "PatchCore (baseline)": PATCHCORE, "MADPOT": MADPOT, "MVFA (baseline)": MVFA_BASELINE}
LOADERS = {METHOD: load_pradot, PATCHCORE: load_patchcore, MADPOT: load_madpot, MVFA_BASELINE: load_madpot}
NO_ASSIGNMENT = "The partial-OT assignment exists only for MADPOT models: choose one with **Method**."
PATCHCORE_NOTE = (
    "PatchCore, PRADOT's nearest-neighbour baseline, is saved beside every PRADOT model that "
    "`medot train pradot` writes; pick it with **Method** to compare the two maps. "
    "Prototype look-up on click is PRADOT-only."
)
DISPLAY_MAX = 2.0
"""Top of the colour scale, in display units (2 = twice the normals' 99th pixel percentile)."""
NO_PROTOTYPES = (
    "Prototype look-up is PRADOT-only: PatchCore scores a patch by its distance to the nearest "
    "memory-bank patch and has no prototypes. Choose a PRADOT model to look one up."
)


@dataclass(frozen=True)
class Detection:
    """One prediction kept between events: the backbone's view ``[S, S, 3]`` in [0, 1], its anomaly
    map ``[S, S]``, the image score, the model it came from, and the pixel unit of the display:
    ``unit`` (the normals' 99th pixel percentile of a calibrated model, else the map's maximum)."""

    model: str
    view: np.ndarray
    anomaly_map: np.ndarray
    score: float
    unit: float = 0.0
    calibrated: bool = False

    @property
    def scaled_map(self) -> np.ndarray:
        """The map in display units (1 = :attr:`unit`)."""
        unit = self.unit or float(self.anomaly_map.max()) or 1.0
        return self.anomaly_map / np.float32(unit)


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
    """Returns (image | overlay | colour bar, raw image score, verdict, model summary, cleared
    prototype text, detection state). ``threshold`` is in display units (1 = the calibrated pixel
    threshold); the verdict comes from the calibration stored with the model."""
    image = read_upload(file_path)
    with user_errors():
        path, meta = resolve_model(settings, model, tuple(LOADERS))
        detector = detectors.get(str(path), meta["backbone"], meta["method"])
        view = view_image(detector.backbone, image.rgb())
        maps, scores = detector.predict([view])
    calibration = detector.calibration
    anomaly_map, score = maps[0].numpy(), float(scores[0])
    unit = calibration.pixel_threshold if calibration is not None else float(anomaly_map.max())
    detection = Detection(model, view, anomaly_map, score, unit, calibration is not None)
    return (render(detection, opacity, threshold), score, verdict_text(detection, calibration),
            f"{_describe_model(meta)} {describe(detector.backbone)}", "", detection)


def verdict_text(detection: Detection, calibration: NormalCalibration | None) -> str:
    """The verdict and calibrated score in plain words (or why there is none)."""
    region = float((detection.scaled_map >= 1.0).mean())
    if calibration is None:
        return (
            f"**Image anomaly score {detection.score:.4f}** (maximum of the map). This model was saved without "
            "held-out normal images, so there is **no verdict** and the colours are relative to this image's "
            "maximum: retrain it with `medot train pradot` to get a calibrated scale."
        )
    level = f"{100 * calibration.quantile:g}th"
    return (
        f"### {calibration.verdict(detection.score).capitalize()}\n"
        f"{calibration.describe(detection.score)}  \n"
        f"**Calibrated score: {calibration.percentile(detection.score):.0f}th percentile among normal images** "
        f"(raw {detection.score:.4f}, the maximum of the map). Colours: × the normals' {level} pixel percentile; "
        f"the outlined region (≥ 1 by default) covers {100 * region:.1f} % of the image. "
        f"Reference: {calibration.source or f'{calibration.count} held-out normal images'}."
    )


def _score_rule(meta: dict) -> str:
    if meta["method"] in (MADPOT, MVFA_BASELINE) and not meta.get("localised", True):
        return ("mean over layers of the POT and CL abnormal probabilities" if meta["method"] == MADPOT
                else "MVFA's text detection probability fused with the memory-bank score")
    return "maximum of the map"


def zero_shot(backbones: BackboneCache, settings: Settings, file_path: str | None, object_name: str,
              opacity: float, threshold: float | None):
    """A text-only map for a typed object name, no training (MADPOT's zero-shot baseline); returns
    what :func:`detect` returns."""
    image = read_upload(file_path)
    name = " ".join((object_name or "").split())
    if not name:
        raise gr.Error("Type the object name first, e.g. 'chest X-ray'.", print_exception=False)
    with user_errors():
        detector = zero_shot_detector(backbones.get(settings.backbone), name)
        view = view_image(detector.backbone, image.rgb())
        maps, scores = detector.predict([view])
    anomaly_map, score = maps[0].numpy(), float(scores[0])
    detection = Detection("", view, anomaly_map, score, float(anomaly_map.max()), False)
    summary = (f"**Zero-shot image anomaly score for '{name}': {score:.4f}** (maximum of the map; fixed prompt "
               f"ensembles on the joint-space patch tokens, no training, no calibration: colours are relative to "
               f"this image's maximum).  \n{describe(detector.backbone)}")
    return render(detection, opacity, threshold), score, "", summary, "", detection


def assignment(detectors: DetectorCache, settings: Settings, detection: Detection | None, layer: str | None):
    """For a MADPOT detection: the image of which prompt took each patch's mass and a summary line."""
    if detection is None or not detection.model:
        return None, "Run a detection with a MADPOT model first."
    with user_errors():
        path, meta = resolve_model(settings, detection.model, tuple(LOADERS))
        if meta["method"] != MADPOT:
            return None, NO_ASSIGNMENT
        detector = detectors.get(str(path), meta["backbone"], meta["method"])
        found = detector.assignments([detection.view], layer or None)
    k = int(meta["hyperparameters"]["n_prompts"])
    picture = assignment_image(found["prompt"][0], found["mass"][0], found["grid"], k, detection.view.shape[0])
    return picture, f"Layer {found['layer']}: " + assignment_summary(found["prompt"][0], found["mass"][0], k)


def _describe_model(meta: dict) -> str:
    domain = meta.get("training") or {}
    trained = ""
    if domain.get("class"):
        trained = (f" Trained on {domain.get('train_images', '?')} normal images of **{domain['class']}** "
                   f"(`{domain.get('dataset', '?')}`); not for other anatomies or devices.")
    if meta["method"] == PATCHCORE:
        return (f"PatchCore baseline: {meta['memory_bank_size']} memory-bank patches of "
                f"{', '.join(meta['layers'])}.{trained}")
    if meta["method"] in (MADPOT, MVFA_BASELINE):
        what = "MADPOT" if meta["method"] == MADPOT else "MVFA baseline (no write-back into the tower)"
        return (f"{what} for {', '.join(meta['objects'])}, layers {', '.join(meta['layers'])}; image score: "
                f"{_score_rule(meta)}.")
    members = ", ".join(f"{m['layer']} α={m['alpha']:g}" for m in meta["members"])
    return f"PRADOT ensemble: {members}.{trained}"


def render(detection: Detection | None, opacity: float, threshold: float | None) -> np.ndarray | None:
    """The view, the map over it (display units on ``[0, 2]``, ``{map >= threshold}`` outlined) and a
    colour bar with its unit."""
    if detection is None:
        return None
    unit = "x normal\np99" if detection.calibrated else "x image\nmax"
    with user_errors():
        return anomaly_panel(detection.view, detection.scaled_map, vmax=DISPLAY_MAX, opacity=opacity,
                             threshold=threshold, unit=unit)


def _map_pixel(detection: Detection, x: int, y: int) -> tuple[int, int]:
    """A click on the panel (image | overlay | bar) -> the map pixel under it."""
    width = detection.anomaly_map.shape[1]
    if x >= width + GAP:
        x -= width + GAP
    return min(max(int(x), 0), width - 1), min(max(int(y), 0), detection.anomaly_map.shape[0] - 1)


def matched_prototype(detectors: DetectorCache, settings: Settings, detection: Detection | None,
                      member: int, event: gr.SelectData) -> str:
    """Which prototype of ensemble ``member`` the clicked patch was matched to, and where on the grid
    (PRADOT models only)."""
    if detection is None:
        return "Run the detection first, then click a point of the map."
    with user_errors():
        path, meta = resolve_model(settings, detection.model, tuple(LOADERS))
        if meta["method"] != METHOD:
            return NO_PROTOTYPES
        detector = detectors.get(str(path), meta["backbone"])
        match = detector.matched_prototypes([detection.view], member)
    spec = meta["members"][member]
    rows, cols = spec["grid"]
    size = detection.anomaly_map.shape
    x, y = _map_pixel(detection, *event.index)
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
    # controls left, results right; both buttons right under the image and model choice, level with
    # the map and score they fill (the zero-shot button sat in an accordion at the page's foot, far
    # below its map); sliders, prototype member and the examples gallery under them
    with gr.Row():
        with gr.Column():
            upload = gr.File(label=f"Image ({UPLOAD_KINDS})", type="filepath")
            method = gr.Radio(list(METHODS), value="PRADOT", label="Method")
            # the list follows the Method radio; any listed checkpoint of either method is accepted
            # (``resolve_model`` refuses every other name), so API calls need not set the radio first
            with gr.Row():
                model = gr.Dropdown(choices, value=choices[0][1] if choices else None, label="PRADOT model",
                                    allow_custom_value=True, scale=4, elem_id="anomaly-model")
                refresh = gr.Button("↻ Refresh models", scale=1, size="sm", elem_id="anomaly-refresh")
            run = gr.Button("Detect anomalies", variant="primary", elem_id="anomaly-detect")
            with gr.Group():
                with gr.Row(equal_height=True):
                    object_name = gr.Textbox(label="…or no model: MADPOT's zero-shot map for a typed object name",
                                             placeholder="e.g. chest X-ray, retinal OCT, brain MRI", scale=3)
                    zero = gr.Button("Zero-shot map", scale=1, elem_id="anomaly-zero-shot")
            opacity = gr.Slider(0.0, 1.0, value=0.5, step=0.05, label="Map opacity")
            threshold = gr.Slider(0.0, DISPLAY_MAX, value=1.0, step=0.05,
                                  label="Outline threshold (× the normals' 99th pixel percentile; 1 = calibrated)")
            member = gr.Dropdown([("first ensemble member", 0)], value=0, label="Member for prototype look-up")
            build_example_gallery(upload)
        with gr.Column():
            # a figure's label is drawn over its top edge in one line: kept short (the long one was cut
            # and hid the colour bar's top value); the reading guide is the line below
            # one corner button only: the share and full-screen buttons sat over the colour bar's top value
            overlay = gr.Image(label="Image | anomaly map | colour scale", type="numpy", format="png",
                               interactive=False, buttons=["download"], elem_id="anomaly-panel")
            gr.Markdown("The predicted region is outlined on the map (threshold slider); click the map to see "
                        "the PRADOT prototype its patch was matched to.")
            verdict = gr.Markdown()
            score = gr.Number(label="Raw image anomaly score (maximum of the map)", interactive=False, precision=4)
            summary = gr.Markdown()
            prototype = gr.Markdown()
    run.click(
        lambda f, m, o, t: detect(detectors, settings, f, m, o, t),
        inputs=[upload, model, opacity, threshold],
        outputs=[overlay, score, verdict, summary, prototype, detection],
        api_name="detect_anomalies",
    )
    method.change(lambda label: _model_list(settings, label), inputs=[method], outputs=[model], api_name=False)
    refresh.click(lambda label, current: refreshed(model_choices(settings, (METHODS[label],)), current),
                  inputs=[method, model], outputs=[model], api_name="refresh_anomaly_models")
    model.change(lambda path: _member_choices(settings, path), inputs=[model], outputs=[member])
    for slider in (opacity, threshold):
        slider.release(render, inputs=[detection, opacity, threshold], outputs=[overlay], api_name=False)

    def on_select(current: Detection | None, chosen_member: int, event: gr.SelectData) -> str:
        return matched_prototype(detectors, settings, current, chosen_member, event)

    overlay.select(on_select, inputs=[detection, member], outputs=[prototype], api_name=False)

    with gr.Accordion("MADPOT: partial-OT assignment of the last detection", open=False):
        with gr.Row():
            with gr.Column():
                layer = gr.Textbox(label="Layer for the assignment (empty: the model's first)", value="")
                show = gr.Button("Show the partial-OT assignment of the last MADPOT detection")
            with gr.Column():
                assigned = gr.Image(label="Prompt that took each patch's mass (grey: untransported)", type="numpy",
                                    interactive=False, format="png")
                assigned_summary = gr.Markdown()
    zero.click(
        lambda f, n, o, t: zero_shot(backbones, settings, f, n, o, t),
        inputs=[upload, object_name, opacity, threshold],
        outputs=[overlay, score, verdict, summary, prototype, detection],
        api_name="zero_shot_anomalies",
    )
    show.click(lambda d, l: assignment(detectors, settings, d, l), inputs=[detection, layer],
               outputs=[assigned, assigned_summary], api_name="madpot_assignment")
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
