"""Build and serve the medot app (``python app.py --help``).

One module per tab (:mod:`app.classify`, :mod:`app.manifolds`, :mod:`app.coupling`,
:mod:`app.anomaly`, :mod:`app.train`); each only calls :mod:`medot`. Settings come from the
environment (:class:`medot.config.Settings`: ``MEDOT_HOME``, ``MEDOT_DATA_ROOT``,
``MEDOT_BACKBONE``; ``MEDOT_HOST`` / ``MEDOT_PORT`` for the address). Requests go through Gradio's
queue with at most ``--concurrency`` computed at once; uploads above ``--max-upload`` are refused.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Sequence

import gradio as gr

from app.about import build_about_tab, build_header
from app.anomaly import build_anomaly_tab
from app.backbones import BackboneCache
from app.classify import build_classify_tab, classifier_choices
from app.coupling import build_coupling_tab
from app.manifolds import NONE, build_manifold_tab
from app.models import fill_on_load, model_choices
from app.train import build_train_tab
from medot.backbones import available_backbones, resolve_auto
from medot.config import Settings
from medot.jobs import JobManager
from medot.methods.kmat.runner import TRAINED_METHODS
from medot.methods.pradot.detector import METHOD as PRADOT

MAX_UPLOAD = "50mb"


def build_app(settings: Settings, device: str | None = None, max_parallel_jobs: int = 1) -> gr.Blocks:
    """The app on ``settings``; models run on ``device`` (default: cuda if available, else cpu), at
    most ``max_parallel_jobs`` training jobs run at once (others wait, queued)."""
    backbones = BackboneCache(device=device)
    jobs = JobManager(settings.home, settings.data_root, max_parallel=max_parallel_jobs)
    statuses = available_backbones()
    choices = [status.name for status in statuses if status.available]
    default = resolve_auto(settings.backbone)
    if default not in choices:
        choices.append(default)
    with gr.Blocks(title="medot") as demo:
        build_header(default, statuses, settings.home)
        with gr.Tab("Classify"):
            classify_model = build_classify_tab(backbones, settings, choices, default)
        with gr.Tab("Prompt manifolds"):
            manifold_first, manifold_second = build_manifold_tab(settings)
        with gr.Tab("FGW coupling"):
            coupling_model = build_coupling_tab(settings)
        with gr.Tab("Anomaly localisation"):
            anomaly_model = build_anomaly_tab(backbones, settings)
        prompt_models = lambda: model_choices(settings, TRAINED_METHODS)  # noqa: E731
        model_lists = [
            (classify_model, lambda: classifier_choices(settings)),
            (manifold_first, prompt_models),
            (manifold_second, lambda: [("none", NONE), *prompt_models()]),
            (coupling_model, prompt_models),
            (anomaly_model, lambda: model_choices(settings, (PRADOT,))),
        ]
        with gr.Tab("Train"):
            build_train_tab(jobs, settings, model_lists)
        with gr.Tab("About"):
            build_about_tab()
        fill_on_load(demo, model_lists)
    return demo


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python app.py",
        description="Serve the medot app. Settings also come from MEDOT_HOME (caches, jobs, models), "
        "MEDOT_DATA_ROOT (the only folder tree users may point jobs at) and MEDOT_BACKBONE.",
    )
    parser.add_argument("--host", default=os.environ.get("MEDOT_HOST", "0.0.0.0"), help="bind address (default 0.0.0.0, env MEDOT_HOST)")
    parser.add_argument("--port", type=int, default=int(os.environ.get("MEDOT_PORT", "7860")), help="port (default 7860, env MEDOT_PORT)")
    parser.add_argument("--backbone", default=None, help="default backbone (default: $MEDOT_BACKBONE or auto)")
    parser.add_argument("--device", default=None, help="torch device (default: cuda if available, else cpu)")
    parser.add_argument("--concurrency", type=int, default=2, help="requests computed at once (default 2)")
    parser.add_argument("--max-jobs", type=int, default=1, help="training jobs run at once; others wait queued (default 1)")
    parser.add_argument("--max-upload", default=MAX_UPLOAD, help=f"largest accepted upload (default {MAX_UPLOAD})")
    parser.add_argument("--share", action="store_true",
                        help="also serve through a temporary public gradio.live link (for local users; see docs/space.md)")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> None:
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    args = parse_args(argv)
    settings = Settings.from_env()
    if args.backbone:
        settings = Settings(home=settings.home, data_root=settings.data_root, backbone=args.backbone)
    demo = build_app(settings, device=args.device, max_parallel_jobs=args.max_jobs)
    demo.queue(default_concurrency_limit=args.concurrency)
    demo.launch(server_name=args.host, server_port=args.port, max_file_size=args.max_upload, show_error=True,
                share=args.share)
