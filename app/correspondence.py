"""Dense correspondences tab: for an OPTiML (or VICReg / VICRegL) model, two augmented views of an
uploaded image side by side, the strongest OT matches between their patches, and the true
geometric correspondence of the same patches for comparison (all maths in
:mod:`medot.methods.optiml.correspondence`)."""

from __future__ import annotations

import threading

import gradio as gr

from app.feedback import UPLOAD_KINDS, read_upload, user_errors
from app.models import listed_model, model_choices
from medot.checkpoint import load_checkpoint
from medot.config import Settings
from medot.data.examples import example_images
from medot.methods.optiml.config import METHODS

NOTE = (
    "Two augmented views of the image, drawn as pretraining draws them (the seed picks the crops). "
    "Green: the strongest entries of the OT plan between the views' patch tokens. Orange, dashed: "
    "where each of those patches truly lies in the other view (from the recorded crop boxes). The "
    "title gives the share of OT and nearest-neighbour mass that lands on truly overlapping patches."
)


class ModelCache:
    """Pretrained models, loaded once per checkpoint file."""

    def __init__(self, device: str | None = None) -> None:
        self._loaded: dict[str, object] = {}
        self._lock = threading.Lock()
        self._device = device or "cpu"

    def get(self, path: str):
        from medot.methods.optiml.task import load_task

        with self._lock:
            if path not in self._loaded:
                checkpoint = load_checkpoint(path)
                self._loaded[path] = load_task(checkpoint.tensors, checkpoint.meta).model.to(self._device).eval()
            return self._loaded[path]


def correspondences(models: ModelCache, settings: Settings, file_path: str | None, model: str | None,
                    seed: float, top_k: float):
    """Returns (figure, summary line)."""
    from medot.methods.optiml.correspondence import correspondence_figure, dense_correspondences

    image = read_upload(file_path)
    with user_errors():
        meta = listed_model(settings, model, METHODS)
        found = dense_correspondences(models.get(model), image.pixels, seed=int(seed), top_k=int(top_k))
    summary = (
        f"**{meta['method']}** ({meta['optiml']['encoder']} encoder), token grid {found.grid[0]}×{found.grid[1]}: "
        f"{100 * found.true_match_rate:.0f} % of the shown OT matches land on the true patch; mass on "
        f"overlapping patches: OT {found.agree_ot:.3f}, nearest neighbour {found.agree_nn:.3f}."
    )
    return correspondence_figure(found), summary


def build_correspondence_tab(settings: Settings, device: str | None = None) -> gr.Dropdown:
    """Lay out the tab; returns its model dropdown (refreshed when training adds a model)."""
    models = ModelCache(device)
    choices = model_choices(settings, METHODS)
    gr.Markdown(NOTE)
    with gr.Row():
        with gr.Column():
            upload = gr.File(label=f"Image ({UPLOAD_KINDS})", type="filepath")
            gr.Examples([[str(path)] for path in example_images()], inputs=[upload], label="Bundled examples")
            model = gr.Dropdown(choices, value=choices[0][1] if choices else None, label="Pretrained model",
                                allow_custom_value=True)
            seed = gr.Number(value=0, precision=0, label="View seed")
            top_k = gr.Slider(1, 50, value=12, step=1, label="Matches shown")
            run = gr.Button("Show correspondences", variant="primary")
        with gr.Column():
            plot = gr.Plot(label="Views and matches")
            summary = gr.Markdown()
    run.click(
        lambda f, m, s, k: correspondences(models, settings, f, m, s, k),
        inputs=[upload, model, seed, top_k],
        outputs=[plot, summary],
        api_name="dense_correspondences",
    )
    return model
