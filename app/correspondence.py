"""Dense correspondences tab: for an OPTiML (or VICReg / VICRegL) model, two augmented views of an
uploaded image side by side, the strongest OT matches between their patches, and the true
geometric correspondence of the same patches for comparison (all maths in
:mod:`medot.methods.optiml.correspondence`)."""

from __future__ import annotations

import gradio as gr

from app.feedback import UPLOAD_KINDS, read_upload, user_errors
from app.examples import build_example_gallery
from app.models import ModelCache, model_choices, refreshed, resolve_model
from medot.checkpoint import load_checkpoint
from medot.config import Settings
from medot.methods.optiml.config import METHODS

NOTE = (
    "Two augmented views of the image, drawn as pretraining draws them (the seed picks the crops). "
    "Green: the strongest entries of the OT plan between the views' patch tokens. Orange, dashed: "
    "where each of those patches truly lies in the other view (from the recorded crop boxes). The "
    "title gives the share of OT and nearest-neighbour mass that lands on truly overlapping patches."
)


class PretrainedModels:
    """Pretrained models, loaded once per checkpoint content (:class:`app.models.ModelCache`)."""

    def __init__(self, device: str | None = None) -> None:
        self._loaded = ModelCache()
        self._device = device or "cpu"

    def get(self, path: str):
        from medot.methods.optiml.task import load_task

        def load():
            checkpoint = load_checkpoint(path)
            return load_task(checkpoint.tensors, checkpoint.meta).model.to(self._device).eval()

        return self._loaded.get(path, load)


def correspondences(models: PretrainedModels, settings: Settings, file_path: str | None, model: str | None,
                    seed: float, top_k: float):
    """Returns (figure, summary line)."""
    from medot.methods.optiml.correspondence import correspondence_figure, dense_correspondences

    image = read_upload(file_path)
    with user_errors():
        path, meta = resolve_model(settings, model, METHODS)
        found = dense_correspondences(models.get(str(path)), image.pixels, seed=int(seed), top_k=int(top_k))
    summary = (
        f"**{meta['method']}** ({meta['optiml']['encoder']} encoder), token grid {found.grid[0]}×{found.grid[1]}: "
        f"{100 * found.true_match_rate:.0f} % of the shown OT matches land on the true patch; mass on "
        f"overlapping patches: OT {found.agree_ot:.3f}, nearest neighbour {found.agree_nn:.3f}."
    )
    return correspondence_figure(found), summary


def build_correspondence_tab(settings: Settings, device: str | None = None) -> gr.Dropdown:
    """Lay out the tab; returns its model dropdown (refreshed when training adds a model)."""
    models = PretrainedModels(device)
    choices = model_choices(settings, METHODS)
    gr.Markdown(NOTE)
    with gr.Row():
        with gr.Column():
            upload = gr.File(label=f"Image ({UPLOAD_KINDS})", type="filepath")
            build_example_gallery(upload)
            with gr.Row():
                model = gr.Dropdown(choices, value=choices[0][1] if choices else None, label="Pretrained model",
                                    allow_custom_value=True, scale=4, elem_id="correspondence-model")
                refresh = gr.Button("↻ Refresh models", scale=1, size="sm", elem_id="correspondence-refresh")
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
    refresh.click(lambda current: refreshed(model_choices(settings, METHODS), current), inputs=[model],
                  outputs=[model], api_name="refresh_correspondence_models")
    gr.Markdown("### Embeddings before vs after pretraining\n" + EMBEDDING_NOTE)
    with gr.Row():
        folder = gr.Textbox(label="Labelled folder under the data root (train/<class>/ images)")
        method = gr.Radio(["tsne", "umap"], value="tsne", label="Projection")
        show = gr.Button("Map embeddings")
    with gr.Row():
        before_plot = gr.Plot(label="Before pretraining")
        after_plot = gr.Plot(label="After pretraining")
    show.click(
        lambda m, f, p: embedding_maps(settings, m, f, p),
        inputs=[model, folder, method],
        outputs=[before_plot, after_plot],
        api_name="embedding_maps",
    )
    return model


EMBEDDING_NOTE = (
    "Pooled encoder features of a labelled folder's training images (colour = class), from the "
    "encoder the run started from (its seeded random init, or lite's ImageNet weights) and from the "
    "pretrained one. Each map is its own projection: the two feature spaces are unrelated."
)


def embedding_maps(settings: Settings, model: str | None, folder: str, method: str):
    """Returns (before figure, after figure)."""
    from medot.config import confine_path
    from medot.methods.optiml.embeddings import before_after_embeddings
    from medot.viz import manifold_figure

    with user_errors():
        path, _ = resolve_model(settings, model, METHODS)
        root = confine_path(folder, settings.data_root)
        before, after = before_after_embeddings(path, root)
        return tuple(
            manifold_figure(embeddings, method="umap" if method == "umap" else "tsne", title=f"{name} pretraining")
            for name, embeddings in (("Before", before), ("After", after))
        )
