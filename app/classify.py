"""Classify tab: an image -> class probabilities, zero-shot (typed labels) or from a trained K-MaT /
prompt-learning checkpoint (its classes, high-end or low-end prompts)."""

from __future__ import annotations

import gradio as gr
import numpy as np

from app.backbones import BackboneCache, describe
from app.feedback import UPLOAD_KINDS, read_upload, user_errors
from app.models import ModelCache, listed_model, model_choices
from medot.config import Settings
from medot.data.examples import example_images
from medot.methods.kmat.predictor import PromptPredictor, load_kmat_predictor
from medot.methods.kmat.runner import TRAINED_METHODS
from medot.methods.pradot.data import view_image
from medot.zeroshot import parse_labels, zero_shot_probabilities

DEFAULT_LABELS = "normal, nodule, opacity"
ZERO_SHOT = "zero-shot"
MODALITIES = {"high-end prompts (w_H)": "high", "low-end prompts (w_L)": "low"}


class PredictorCache:
    """Trained prompt predictors, loaded once per checkpoint content (:class:`ModelCache`) and backbone."""

    def __init__(self, backbones: BackboneCache) -> None:
        self._backbones = backbones
        self._loaded: ModelCache[PromptPredictor] = ModelCache()

    def get(self, path: str, backbone_name: str) -> PromptPredictor:
        return self._loaded.get(path, lambda: load_kmat_predictor(path, self._backbones.get(backbone_name)),
                                variant=backbone_name)


def classifier_choices(settings: Settings) -> list[tuple[str, str]]:
    return [("zero-shot (the labels typed below)", ZERO_SHOT), *model_choices(settings, TRAINED_METHODS)]


def classify(
    backbones: BackboneCache,
    predictors: PredictorCache,
    settings: Settings,
    file_path: str | None,
    labels_text: str,
    backbone_name: str,
    model: str,
    modality: str,
):
    """Returns (probabilities for gr.Label, the backbone's view of the image, info line)."""
    image = read_upload(file_path)
    with user_errors():
        if model in (None, "", ZERO_SHOT):
            labels = parse_labels(labels_text)
            backbone = backbones.get(backbone_name)
            probabilities = zero_shot_probabilities(backbone, [image], labels)[0]
            source = "zero-shot on the typed labels"
        else:
            trained_on = listed_model(settings, model, TRAINED_METHODS)["backbone"]
            predictor = predictors.get(model, trained_on)
            backbone = predictor.backbone
            probabilities = predictor.predict_proba([image], MODALITIES.get(modality, "high"))[0]
            labels = list(predictor.class_names)
            high, low = predictor.modalities
            used = high if MODALITIES.get(modality, "high") == "high" else low
            source = f"{predictor.method} checkpoint, {used} prompts (trained on backbone {trained_on})"
        view = (view_image(backbone, image.rgb()) * 255).round().astype(np.uint8)
    info = f"{describe(backbone)}  \nModel: {source}."
    return dict(zip(labels, probabilities.tolist(), strict=True)), view, info


def build_classify_tab(
    backbones: BackboneCache, settings: Settings, backbone_choices: list[str], default_backbone: str
) -> gr.Dropdown:
    """Lay out the tab; returns its model dropdown (refreshed when training adds a model)."""
    predictors = PredictorCache(backbones)
    with gr.Row():
        with gr.Column():
            upload = gr.File(label=f"Image ({UPLOAD_KINDS})", type="filepath", elem_id="classify-upload")
            gr.Examples([[str(path)] for path in example_images()], inputs=[upload], label="Bundled examples")
            model = gr.Dropdown(classifier_choices(settings), value=ZERO_SHOT, label="Model")
            labels = gr.Textbox(label="Class labels for zero-shot (comma-separated)", value=DEFAULT_LABELS)
            modality = gr.Radio(list(MODALITIES), value=next(iter(MODALITIES)), label="Prompts (trained models)")
            backbone = gr.Dropdown(backbone_choices, value=default_backbone, label="Backbone (zero-shot)")
            run = gr.Button("Classify", variant="primary", elem_id="classify-button")
        with gr.Column():
            probabilities = gr.Label(label="Class probabilities", elem_id="probabilities")
            preview = gr.Image(label="What the backbone sees (resized, centre-cropped)", type="numpy", interactive=False)
            info = gr.Markdown(elem_id="classify-info")
    run.click(
        lambda *inputs: classify(backbones, predictors, settings, *inputs),
        inputs=[upload, labels, backbone, model, modality],
        outputs=[probabilities, preview, info],
        api_name="classify",
    )
    return model
