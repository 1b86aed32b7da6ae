"""Classify tab: an image -> class probabilities, zero-shot (typed labels), from a trained K-MaT /
prompt-learning checkpoint (its classes, the prompts of the image's modality), or from a
linear-probe / fine-tuned classifier saved by ``medot eval ... --save-models`` (its classes), with
their evidence (:func:`medot.eval.evidence.prediction_evidence`: what the scores are, chance level,
the model's held-out figures, a DICOM modality mismatch).

Only the inputs the chosen model uses are shown: labels and backbone for zero-shot, the modality
(named as the model names it, pre-selected from a DICOM Modality tag) for a trained K-MaT /
prompt-learning model, neither for a probe classifier (it has its own encoder and one input)."""

from __future__ import annotations

import gradio as gr
import numpy as np

from app.backbones import BackboneCache, describe
from app.examples import build_example_gallery
from app.feedback import UPLOAD_KINDS, read_upload, user_errors
from app.models import ModelCache, listed_model, model_choices, refreshed, resolve_model
from app.viewer import DEIDENTIFY, build_viewer, chosen_image
from medot.config import Settings
from medot.data.modality import display_name, match_modality
from medot.eval.evidence import prediction_evidence
from medot.methods.kmat.predictor import PromptPredictor, load_kmat_predictor
from medot.methods.kmat.runner import TRAINED_METHODS
from medot.methods.optiml.classifier import CLASSIFIER_METHODS, ProbeClassifier
from medot.methods.pradot.data import view_image
from medot.zeroshot import parse_labels, zero_shot_probabilities

DEFAULT_LABELS = "normal, nodule, opacity"
ZERO_SHOT = "zero-shot"
SIDES = ("high", "low")


class PredictorCache:
    """Trained prompt predictors, loaded once per checkpoint content (:class:`ModelCache`) and backbone."""

    def __init__(self, backbones: BackboneCache) -> None:
        self._backbones = backbones
        self._loaded: ModelCache[PromptPredictor] = ModelCache()
        self._probes: ModelCache[ProbeClassifier] = ModelCache()

    def get(self, path: str, backbone_name: str) -> PromptPredictor:
        return self._loaded.get(path, lambda: load_kmat_predictor(path, self._backbones.get(backbone_name)),
                                variant=backbone_name)

    def get_probe(self, path: str) -> ProbeClassifier:
        """A linear-probe / fine-tuned classifier (its own encoder: no shared backbone)."""
        return self._probes.get(path, lambda: ProbeClassifier(path))


def classifier_choices(settings: Settings) -> list[tuple[str, str]]:
    return [
        ("zero-shot (the labels typed below)", ZERO_SHOT),
        *model_choices(settings, TRAINED_METHODS),
        *model_choices(settings, CLASSIFIER_METHODS),
    ]


def modality_choices(meta: dict | None) -> list[tuple[str, str]]:
    """The radio's choices: the model's own modality names in plain words, values ``high`` / ``low``."""
    modalities = (meta or {}).get("modalities") or {"high": "high-end", "low": "low-end"}
    return [(display_name(str(modalities[side])), side) for side in SIDES]


def dicom_tag(file_path: str | None) -> str | None:
    """The upload's DICOM Modality tag, or ``None`` (no upload, not DICOM, unreadable: the
    classification itself reports a bad upload)."""
    if not file_path:
        return None
    try:
        return read_upload(file_path).metadata.get("modality") or None
    except gr.Error:
        return None


def shown_inputs(settings: Settings, model: str | None, file_path: str | None, current_side: str | None):
    """Updates for (labels, backbone, modality radio): zero-shot shows labels and backbone and hides
    the radio; a trained model hides them and shows its modalities, pre-selected from the DICOM tag."""
    if model in (None, "", ZERO_SHOT):
        return gr.update(visible=True), gr.update(visible=True), gr.update(visible=False)
    try:
        meta = listed_model(settings, model, (*TRAINED_METHODS, *CLASSIFIER_METHODS))
    except Exception:  # a model removed since the list was drawn: the classification says so
        return gr.update(visible=False), gr.update(visible=False), gr.update(visible=True)
    if meta["method"] in CLASSIFIER_METHODS:  # its own encoder, one input: nothing to choose
        return gr.update(visible=False), gr.update(visible=False), gr.update(visible=False)
    modalities = meta.get("modalities") or {}
    side = match_modality(dicom_tag(file_path), (modalities.get("high", ""), modalities.get("low", "")))
    value = side or (current_side if current_side in SIDES else "high")
    radio = gr.update(choices=modality_choices(meta), value=value, visible=True)
    return gr.update(visible=False), gr.update(visible=False), radio


def classify(
    backbones: BackboneCache,
    predictors: PredictorCache,
    settings: Settings,
    file_path: str | None,
    labels_text: str,
    backbone_name: str,
    model: str,
    modality: str,
    preset: str | None = None,
    frame: float | None = None,
):
    """Returns (probabilities for gr.Label, the backbone's view of the image, evidence and backbone
    lines). ``preset`` / ``frame``: the viewer's window and frame (default: the file's own window,
    the middle frame)."""
    image = chosen_image(file_path, preset, frame)
    side = modality if modality in SIDES else "high"
    with user_errors():
        path, listed = ((None, None) if model in (None, "", ZERO_SHOT)
                        else resolve_model(settings, model, (*TRAINED_METHODS, *CLASSIFIER_METHODS)))
        if listed is None:
            labels = parse_labels(labels_text)
            backbone = backbones.get(backbone_name)
            probabilities = zero_shot_probabilities(backbone, [image], labels)[0]
            meta = None
            source = "zero-shot on the typed labels"
        elif listed["method"] in CLASSIFIER_METHODS:
            classifier = predictors.get_probe(str(path))
            probabilities = classifier.predict_proba([image.pixels])[0]
            labels = list(classifier.class_names)
            meta = classifier.meta
            source = (f"{meta['method']} classifier on encoder {meta['backbone']} ({meta['arch']}), "
                      f"{meta['fraction']:g} % of the labels, seed {meta['seed']}")
            view = (np.repeat(image.pixels[..., None], 3, axis=2) if image.pixels.ndim == 2 else image.pixels)
            evidence = prediction_evidence(labels, probabilities.tolist(), meta=meta)
            info = "  \n".join([f"**{evidence.heading()}**", *evidence.lines(),
                                "Not a clinical model unless trained on clinical data.", f"Model: {source}."])
            return dict(zip(labels, probabilities.tolist(), strict=True)), (view * 255).round().astype(np.uint8), info
        else:
            meta = listed
            trained_on = meta["backbone"]
            predictor = predictors.get(str(path), trained_on)
            backbone = predictor.backbone
            probabilities = predictor.predict_proba([image], side)[0]
            labels = list(predictor.class_names)
            used = predictor.modalities[SIDES.index(side)]
            source = f"{predictor.method} checkpoint, {display_name(used)} prompts (trained on backbone {trained_on})"
        view = (view_image(backbone, image.rgb()) * 255).round().astype(np.uint8)
        evidence = prediction_evidence(
            labels, probabilities.tolist(), meta=meta, side=side, dicom_tag=image.metadata.get("modality")
        )
    info = "  \n".join([f"**{evidence.heading()}**", *evidence.lines(), describe(backbone), f"Model: {source}."])
    return dict(zip(labels, probabilities.tolist(), strict=True)), view, info


def build_classify_tab(
    backbones: BackboneCache, settings: Settings, backbone_choices: list[str], default_backbone: str
) -> gr.Dropdown:
    """Lay out the tab; returns its model dropdown (refreshed when training adds a model)."""
    predictors = PredictorCache(backbones)
    with gr.Row():
        with gr.Column():
            upload = gr.File(label=f"Image ({UPLOAD_KINDS})", type="filepath", elem_id="classify-upload")
            gr.Markdown(DEIDENTIFY)
            build_example_gallery(upload)
            with gr.Row():
                model = gr.Dropdown(classifier_choices(settings), value=ZERO_SHOT, label="Model", scale=4,
                                    allow_custom_value=True, elem_id="classify-model")
                refresh = gr.Button("↻ Refresh models", scale=1, size="sm", elem_id="classify-refresh")
            labels = gr.Textbox(label="Class labels for zero-shot (comma-separated)", value=DEFAULT_LABELS)
            modality = gr.Radio(modality_choices(None), value="high", visible=False, elem_id="classify-modality",
                                label="Image modality (the model's prompts for it are used)")
            backbone = gr.Dropdown(backbone_choices, value=default_backbone, label="Backbone (zero-shot)")
            run = gr.Button("Classify", variant="primary", elem_id="classify-button")
        with gr.Column():
            probabilities = gr.Label(label="Scores over the given labels (softmax, sums to 100 %)",
                                     show_heading=False, elem_id="probabilities")
            info = gr.Markdown(elem_id="classify-info")
            preview = gr.Image(label="What the backbone sees (resized, centre-cropped)", type="numpy", interactive=False)
    preset, frame = build_viewer(upload)
    run.click(
        lambda *inputs: classify(backbones, predictors, settings, *inputs),
        inputs=[upload, labels, backbone, model, modality, preset, frame],
        outputs=[probabilities, preview, info],
        api_name="classify",
    )
    for trigger in (model.change, upload.change):
        trigger(lambda m, f, side: shown_inputs(settings, m, f, side), inputs=[model, upload, modality],
                outputs=[labels, backbone, modality], api_name=False)
    refresh.click(lambda current: refreshed(classifier_choices(settings), current, keep=ZERO_SHOT), inputs=[model],
                  outputs=[model], api_name="refresh_classify_models")
    return model
