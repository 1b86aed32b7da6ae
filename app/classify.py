"""Classify tab: an uploaded image -> zero-shot class probabilities."""

from __future__ import annotations

import gradio as gr
import numpy as np

from app.backbones import BackboneCache, describe
from medot.data.io import read_image
from medot.errors import MedotError
from medot.zeroshot import parse_labels, zero_shot_probabilities

DEFAULT_LABELS = "normal, nodule, opacity"


def classify(cache: BackboneCache, file_path: str | None, labels_text: str, backbone_name: str):
    """Returns (probabilities for gr.Label, preprocessed preview, backbone line)."""
    if not file_path:
        raise gr.Error("Upload an image first (PNG, JPEG, BMP, TIFF, DICOM or .npy).")
    try:
        labels = parse_labels(labels_text)
        image = read_image(file_path)
        backbone = cache.get(backbone_name)
        probabilities = zero_shot_probabilities(backbone, [image], labels)[0]
    except (MedotError, ValueError) as error:
        raise gr.Error(str(error)) from None
    preview = (np.clip(image.rgb(), 0.0, 1.0) * 255).astype(np.uint8)
    return dict(zip(labels, probabilities.tolist(), strict=True)), preview, describe(backbone)


def build_classify_tab(cache: BackboneCache, backbone_choices: list[str], default_backbone: str) -> None:
    with gr.Row():
        with gr.Column():
            upload = gr.File(label="Image (PNG/JPEG/BMP/TIFF/DICOM/.npy)", type="filepath")
            labels = gr.Textbox(label="Class labels (comma-separated)", value=DEFAULT_LABELS)
            backbone = gr.Dropdown(backbone_choices, value=default_backbone, label="Backbone")
            run = gr.Button("Classify", variant="primary")
        with gr.Column():
            probabilities = gr.Label(label="Class probabilities", elem_id="probabilities")
            preview = gr.Image(label="Image as read (before resizing)", type="numpy", interactive=False)
            info = gr.Markdown()
    run.click(
        lambda f, text, name: classify(cache, f, text, name),
        inputs=[upload, labels, backbone],
        outputs=[probabilities, preview, info],
        api_name="classify",
    )
