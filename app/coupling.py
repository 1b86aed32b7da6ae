"""FGW-coupling tab: heatmaps of a K-MaT checkpoint's plan Γ between high- and low-end classes and
of M, D^H, D^L; the α and ε sliders re-solve Γ on the stored class embeddings."""

from __future__ import annotations

import gradio as gr

from app.feedback import user_errors
from app.models import listed_model, model_choices, refreshed, resolve_model
from medot.config import Settings
from medot.methods.kmat.runner import TRAINED_METHODS
from medot.viz.kmat_adapters import coupling_figure, load_kmat_artefacts

NOTE = (
    "Γ solves K-MaT's fused Gromov-Wasserstein problem between the high-end and low-end prompt "
    "manifolds. The sliders start at the trained α and ε; moving them re-solves Γ on the stored w_H, w_L."
)


def coupling_plot(settings: Settings, model: str | None, alpha: float, epsilon: float):
    if not model:
        raise gr.Error("Choose a trained K-MaT model first.", print_exception=False)
    with user_errors():
        path, _ = resolve_model(settings, model, TRAINED_METHODS)
        return coupling_figure(load_kmat_artefacts(path), alpha, epsilon)


def trained_settings(settings: Settings, model: str | None):
    """Slider values of the model's trained α and ε (unchanged when it records none)."""
    if not model:
        return gr.skip(), gr.skip()
    with user_errors():
        hyper = listed_model(settings, model, TRAINED_METHODS).get("hyper_parameters") or {}
    return hyper.get("fgw_alpha", gr.skip()), hyper.get("fgw_epsilon", gr.skip())


def build_coupling_tab(settings: Settings) -> gr.Dropdown:
    """Lay out the tab; returns its model dropdown (refreshed when training adds a model)."""
    choices = model_choices(settings, TRAINED_METHODS)
    gr.Markdown(NOTE)
    with gr.Row():
        model = gr.Dropdown(choices, value=choices[0][1] if choices else None, label="Model",
                            allow_custom_value=True, elem_id="coupling-model")
        refresh = gr.Button("↻ Refresh models", size="sm", elem_id="coupling-refresh")
        alpha = gr.Slider(0.0, 1.0, value=0.1, step=0.01, label="α (structure weight)")
        epsilon = gr.Slider(0.005, 1.0, value=0.1, step=0.005, label="ε (entropic temperature)")
    draw = gr.Button("Draw the coupling", variant="primary")
    plot = gr.Plot(label="Γ, M, D^H, D^L")
    inputs = [model, alpha, epsilon]
    draw.click(lambda m, a, e: coupling_plot(settings, m, a, e), inputs=inputs, outputs=[plot], api_name="coupling")
    model.change(lambda m: trained_settings(settings, m), inputs=[model], outputs=[alpha, epsilon])
    for slider in (alpha, epsilon):
        slider.release(lambda m, a, e: coupling_plot(settings, m, a, e), inputs=inputs, outputs=[plot], api_name=False)
    refresh.click(lambda current: refreshed(model_choices(settings, TRAINED_METHODS), current), inputs=[model],
                  outputs=[model], api_name="refresh_coupling_models")
    return model
