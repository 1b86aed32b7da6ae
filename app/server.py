"""Build and serve the medot app (``python app.py --help``).

One module per tab (:mod:`app.classify`, :mod:`app.manifolds`, :mod:`app.coupling`,
:mod:`app.anomaly`, :mod:`app.correspondence`, :mod:`app.train`); each only calls :mod:`medot`. Settings come from the
environment (:class:`medot.config.Settings`: ``MEDOT_HOME``, ``MEDOT_DATA_ROOT``,
``MEDOT_BACKBONE``; ``MEDOT_HOST`` / ``MEDOT_PORT`` for the address, loopback by default;
``MEDOT_AUTH`` / ``MEDOT_AUTH_FILE`` for a login). The endpoints that run models share one queue
group with at most ``--concurrency`` computed at once; uploads above ``--max-upload`` bytes or the
pixel limit are refused, larger images downscaled after decoding; jobs, epochs, shots and sessions
are bounded (:mod:`app.deployment`).
"""

from __future__ import annotations

import argparse
import logging
import os
from collections.abc import Sequence

import gradio as gr

from app.about import build_about_tab, build_header
from app.anomaly import build_anomaly_tab
from app.backbones import BackboneCache
from app.classify import build_classify_tab, classifier_choices
from app.correspondence import build_correspondence_tab
from app.coupling import build_coupling_tab
from app.deployment import (
    CACHE_AGE_S,
    Limits,
    SessionReaper,
    accept_listed_models,
    guard_errors,
    memory_bytes,
    pixel_limit,
    read_credentials,
    resolve_host,
    share_heavy_group,
)
from app.feedback import set_private_paths, set_upload_limits
from app.manifolds import NONE, build_manifold_tab
from app.models import fill_on_load, model_choices
from app.train import build_train_tab
from medot.backbones import available_backbones, resolve_auto
from medot.config import Settings
from medot.errors import MedotError
from medot.jobs import JobManager, capped_arguments
from medot.methods.kmat.runner import TRAINED_METHODS
from medot.methods.optiml.config import METHODS as OPTIML_METHODS
from medot.methods.pradot.detector import METHOD as PRADOT

MAX_UPLOAD = "50mb"


def build_app(settings: Settings, device: str | None = None, max_parallel_jobs: int = 1,
              limits: Limits | None = None) -> gr.Blocks:
    """The app on ``settings``; models run on ``device`` (default: cuda if available, else cpu), at
    most ``max_parallel_jobs`` training jobs run at once (others wait, queued), within ``limits``."""
    limits = limits or Limits()
    set_upload_limits(limits.max_pixels)
    set_private_paths(settings.home, settings.data_root)
    backbones = BackboneCache(device=device)
    jobs = JobManager(settings.home, settings.data_root, max_parallel=max_parallel_jobs,
                      methods=capped_arguments(epochs=limits.max_epochs, shots=limits.max_shots),
                      max_active=limits.max_queued_jobs, max_active_per_owner=limits.max_session_jobs)
    statuses = available_backbones()
    choices = [status.name for status in statuses if status.available]
    default = resolve_auto(settings.backbone)
    if default not in choices:
        choices.append(default)
    with gr.Blocks(title="medot", delete_cache=(CACHE_AGE_S, CACHE_AGE_S)) as demo:
        build_header(default, statuses, settings.home)
        with gr.Tab("Classify"):
            classify_model = build_classify_tab(backbones, settings, choices, default)
        with gr.Tab("Prompt manifolds"):
            manifold_first, manifold_second = build_manifold_tab(settings)
        with gr.Tab("FGW coupling"):
            coupling_model = build_coupling_tab(settings)
        with gr.Tab("Anomaly localisation"):
            anomaly_model = build_anomaly_tab(backbones, settings)
        with gr.Tab("Dense correspondences"):
            correspondence_model = build_correspondence_tab(settings, device)
        prompt_models = lambda: model_choices(settings, TRAINED_METHODS)  # noqa: E731
        model_lists = [
            (classify_model, lambda: classifier_choices(settings)),
            (manifold_first, prompt_models),
            (manifold_second, lambda: [("none", NONE), *prompt_models()]),
            (coupling_model, prompt_models),
            (anomaly_model, lambda: model_choices(settings, (PRADOT,))),
            (correspondence_model, lambda: model_choices(settings, OPTIML_METHODS)),
        ]
        with gr.Tab("Train"):
            build_train_tab(jobs, settings, model_lists)
        with gr.Tab("About"):
            build_about_tab()
        fill_on_load(demo, model_lists)
    accept_listed_models([classify_model, manifold_first, manifold_second, coupling_model, correspondence_model])
    share_heavy_group(demo, limits.concurrency)
    guard_errors(demo)
    return demo


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python app.py",
        description="Serve the medot app. Settings also come from MEDOT_HOME (caches, jobs, models), "
        "MEDOT_DATA_ROOT (the only folder tree users may point jobs at) and MEDOT_BACKBONE.",
    )
    parser.add_argument("--host", default=None, help="bind address (default: $MEDOT_HOST, else 127.0.0.1 - this "
                        "machine only; the Dockerfile and a Space bind 0.0.0.0). Login: set MEDOT_AUTH=user:password "
                        "or MEDOT_AUTH_FILE (lines user:password), never on the command line")
    parser.add_argument("--port", type=int, default=int(os.environ.get("MEDOT_PORT", "7860")), help="port (default 7860, env MEDOT_PORT)")
    parser.add_argument("--backbone", default=None, help="default backbone (default: $MEDOT_BACKBONE or auto)")
    parser.add_argument("--device", default=None, help="torch device (default: cuda if available, else cpu)")
    parser.add_argument("--concurrency", type=int, default=_env_int("MEDOT_CONCURRENCY", 2),
                        help="model requests (classify, anomaly, manifold, coupling together) computed at once "
                        "(default 2, env MEDOT_CONCURRENCY)")
    parser.add_argument("--max-jobs", type=int, default=1, help="training jobs run at once; others wait queued (default 1)")
    parser.add_argument("--max-upload", default=MAX_UPLOAD, help=f"largest accepted upload (default {MAX_UPLOAD})")
    defaults = Limits()
    for flag, env, default, what in (
        ("--max-queued-jobs", "MEDOT_MAX_QUEUED_JOBS", defaults.max_queued_jobs, "queued + running jobs in all"),
        ("--max-session-jobs", "MEDOT_MAX_SESSION_JOBS", defaults.max_session_jobs, "queued + running jobs per session"),
        ("--max-epochs", "MEDOT_MAX_EPOCHS", defaults.max_epochs, "epochs a job may ask for"),
        ("--max-shots", "MEDOT_MAX_SHOTS", defaults.max_shots, "shots per class a job may ask for"),
        ("--max-pixels", "MEDOT_MAX_PIXELS", None, "largest upload in pixels (default: sized to memory, at most 64 Mpx)"),
        ("--max-sessions", "MEDOT_MAX_SESSIONS", defaults.max_sessions, "browser/API sessions kept in memory"),
        ("--session-ttl", "MEDOT_SESSION_TTL", int(defaults.session_ttl_s), "seconds an idle session is kept"),
    ):
        shown = f"default {default}, " if default is not None else ""
        parser.add_argument(flag, type=int, default=_env_int(env, default), help=f"{what} ({shown}env {env})")
    parser.add_argument("--share", action="store_true",
                        help="also serve through a temporary public gradio.live link (for local users; see docs/space.md)")
    return parser.parse_args(argv)


def _env_int(name: str, default: int | None) -> int | None:
    text = os.environ.get(name, "").strip()
    if not text:
        return default
    try:
        return int(text)
    except ValueError:
        raise SystemExit(f"medot app: error: {name}={text!r} is not a whole number") from None


def limits_from_args(args: argparse.Namespace) -> Limits:
    pixels = args.max_pixels or pixel_limit(memory_bytes(), args.concurrency)
    return Limits(concurrency=args.concurrency, max_queued_jobs=args.max_queued_jobs,
                  max_session_jobs=args.max_session_jobs, max_epochs=args.max_epochs, max_shots=args.max_shots,
                  max_pixels=pixels, session_ttl_s=args.session_ttl, max_sessions=args.max_sessions)


def main(argv: Sequence[str] | None = None, *, block: bool = True) -> gr.Blocks:
    """Serve the app; with ``block=False`` return the running app (tests close it)."""
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("medot").setLevel(logging.INFO)  # the app's own lines; libraries' only from WARNING
    args = parse_args(argv)
    try:
        limits = limits_from_args(args)
        credentials = read_credentials()
    except MedotError as error:
        raise SystemExit(f"medot app: error: {error}") from None
    settings = Settings.from_env()
    if args.backbone:
        settings = Settings(home=settings.home, data_root=settings.data_root, backbone=args.backbone)
    demo = build_app(settings, device=args.device, max_parallel_jobs=args.max_jobs, limits=limits)
    demo.queue(default_concurrency_limit=args.concurrency)
    host = resolve_host(args.host)
    if args.share and not credentials:
        logging.getLogger("medot.app").warning(
            "--share without a login: anyone with the gradio.live link can use the app and queue jobs; "
            "set MEDOT_AUTH or MEDOT_AUTH_FILE (docs/deployment.md)")
    logging.getLogger("medot.app").info(
        "serving on %s:%s, %s; %s", host, args.port, "login required" if credentials else "no login",
        limits)
    demo.launch(server_name=host, server_port=args.port, max_file_size=args.max_upload, show_error=False,
                auth=credentials, state_session_capacity=limits.max_sessions, prevent_thread_lock=True,
                share=args.share)
    demo.medot_reaper = SessionReaper(demo, limits.session_ttl_s).start()
    if block:
        demo.block_thread()
    return demo
