"""Prompt-manifolds tab: a 2-D t-SNE / UMAP map of a prompt-learning checkpoint's class embeddings
w_{i,H}, w_{i,L}, anchors and description embeddings, optionally beside a second checkpoint (e.g.
trained with and without L_fgw) in one joint projection."""

from __future__ import annotations

import logging
import os
import threading

import gradio as gr

from app.feedback import user_errors
from app.models import model_choices, refreshed, resolve_model
from medot.config import Settings
from medot.methods.kmat.runner import TRAINED_METHODS
from medot.viz import manifold_figure
from medot.viz.kmat_adapters import ANCHOR, PROMPT, load_kmat_artefacts, prompt_embedding_set
from medot.viz.manifold import warm_up_umap

NONE = ""
NOTE = (
    "Colour: class; marker: kind (prompt w, anchor p̄, description; click a kind in the legend to hide "
    "it); filled / open: high-end / low-end modality; a grey line joins each prompt to its class anchor. "
    "Descriptions are drawn faint. Checkpoints store no image features, so none are drawn."
)
WARM_UMAP_ENV = "MEDOT_WARM_UMAP"


def start_umap_warm_up(settings: Settings) -> threading.Thread | None:
    """Compile UMAP's numba code in a background thread at start-up (the first UMAP otherwise takes
    minutes), caching it under ``$MEDOT_HOME/cache/numba`` for later starts. ``MEDOT_WARM_UMAP=0``
    turns it off."""
    if os.environ.get(WARM_UMAP_ENV, "1") == "0":
        return None
    os.environ.setdefault("NUMBA_CACHE_DIR", str(settings.cache_dir / "numba"))

    def warm() -> None:
        try:
            warm_up_umap()
        except Exception:  # a failed warm-up only means the first map compiles, as before
            logging.getLogger(__name__).warning("UMAP warm-up failed", exc_info=True)

    thread = threading.Thread(target=warm, name="umap-warm-up", daemon=True)
    thread.start()
    return thread


def manifold_plot(settings: Settings, first: str | None, second: str | None, method: str, descriptions: bool):
    if not first:
        raise gr.Error("Choose a trained K-MaT (or prompt-learning) model first.", print_exception=False)
    paths = [first] + ([second] if second and second != first else [])
    with user_errors():
        sets, titles = [], []
        for model in paths:
            path, meta = resolve_model(settings, model, TRAINED_METHODS)
            sets.append(prompt_embedding_set(load_kmat_artefacts(path), descriptions=descriptions))
            fgw = (meta.get("hyper_parameters") or {}).get("transport")
            titles.append(f"{meta['method']}" + ("" if fgw is None else " with L_fgw" if fgw else " without L_fgw"))
        return manifold_figure(sets, titles=titles if len(sets) > 1 else None, method=method,
                               links=[(PROMPT, ANCHOR)])


def build_manifold_tab(settings: Settings) -> list[gr.Dropdown]:
    """Lay out the tab; returns its two model dropdowns (refreshed when training adds a model)."""
    choices = model_choices(settings, TRAINED_METHODS)
    start_umap_warm_up(settings)
    gr.Markdown(NOTE)
    with gr.Row():
        first = gr.Dropdown(choices, value=choices[0][1] if choices else None, label="Model",
                            allow_custom_value=True, elem_id="manifold-model")
        second = gr.Dropdown([("none", NONE), *choices], value=NONE, label="Compare with", allow_custom_value=True,
                             elem_id="manifold-second")
        refresh = gr.Button("↻ Refresh models", size="sm", elem_id="manifold-refresh")
        method = gr.Radio(["tsne", "umap"], value="tsne", label="Projection")
        descriptions = gr.Checkbox(value=True, label="Show description embeddings")
    draw = gr.Button("Draw the manifold", variant="primary")
    plot = gr.Plot(label="Prompt manifold")
    draw.click(
        lambda a, b, m, d: manifold_plot(settings, a, b, m, d),
        inputs=[first, second, method, descriptions],
        outputs=[plot],
        api_name="manifold",
    )

    def refresh_lists(current_first, current_second):
        listed = model_choices(settings, TRAINED_METHODS)
        return refreshed(listed, current_first), refreshed([("none", NONE), *listed], current_second)

    refresh.click(refresh_lists, inputs=[first, second], outputs=[first, second], api_name="refresh_manifold_models")
    return [first, second]
