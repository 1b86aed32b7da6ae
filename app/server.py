"""Build and serve the medot app (``python app.py --help``)."""

from __future__ import annotations

import argparse
import os
from collections.abc import Sequence

import gradio as gr

from app.backbones import BackboneCache
from app.classify import build_classify_tab
from medot import __version__
from medot.backbones import available_backbones, resolve_auto
from medot.config import Settings

MAX_UPLOAD = "50mb"


def build_app(settings: Settings, device: str | None = None) -> gr.Blocks:
    cache = BackboneCache(device=device)
    statuses = available_backbones()
    choices = [status.name for status in statuses if status.available]
    default = resolve_auto(settings.backbone)
    if default not in choices:
        choices.append(default)
    unavailable = "; ".join(f"{s.name}: {s.detail}" for s in statuses if not s.available)
    with gr.Blocks(title="medot") as demo:
        gr.Markdown(
            f"# medot {__version__}\nOptimal-transport methods for medical imaging on frozen "
            f"vision-language backbones. Default backbone: **{default}**"
            + (" (not a clinical model)." if default == "lite" else ".")
            + (f"\n\nUnavailable here: {unavailable}" if unavailable else "")
        )
        with gr.Tab("Classify"):
            build_classify_tab(cache, choices, default)
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
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> None:
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    args = parse_args(argv)
    settings = Settings.from_env()
    if args.backbone:
        settings = Settings(home=settings.home, data_root=settings.data_root, backbone=args.backbone)
    demo = build_app(settings, device=args.device)
    demo.queue(default_concurrency_limit=args.concurrency)
    demo.launch(server_name=args.host, server_port=args.port, max_file_size=MAX_UPLOAD, show_error=True)
