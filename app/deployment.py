"""What a shared deployment of the app needs, kept out of the tabs: where it listens, who may use
it, how much of the machine it may take, and what a user sees when something breaks.

* **Address**: ``127.0.0.1`` (this machine only) unless ``--host`` or ``MEDOT_HOST`` names another;
  a Hugging Face Space (which sets ``SPACE_ID`` and ``GRADIO_SERVER_NAME``) and the Dockerfile
  bind ``0.0.0.0`` explicitly.
* **Access**: Gradio's login (``auth``) from ``MEDOT_AUTH`` (``user:password``, several separated by
  commas or newlines) and/or ``MEDOT_AUTH_FILE`` (one ``user:password`` a line, ``#`` comments) -
  never from the command line, which shell history and ``ps`` show to others.
* **Budget** (:class:`Limits`): one Gradio concurrency group, :data:`HEAVY`, shared by every
  endpoint that runs a model, so ``--concurrency`` bounds the whole app (not each endpoint);
  uploads are downscaled to :data:`app.feedback.MAX_SIDE` pixels right after decoding (the backbones see
  224 px) and refused above a pixel count sized to the memory the app is given
  (:func:`pixel_limit`); training jobs are capped per deployment and per session, epochs and shots
  by configured maxima; sessions expire (:class:`SessionReaper`) so memory does not grow with
  visitors, and Gradio's temporary files are deleted after :data:`CACHE_AGE_S`.
* **Errors** (:func:`guard_errors`): an unexpected exception reaches the user as one readable
  line with an error id, and the full traceback goes to the server log on a line with that id;
  raw internal text (paths, library messages) is never sent (``show_error`` stays off).
"""

from __future__ import annotations

import functools
import inspect
import logging
import os
import threading
import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import gradio as gr

from app.feedback import redact_paths
from medot.errors import MedotError

LOG = logging.getLogger("medot.app")

LOOPBACK = "127.0.0.1"
#: endpoints that run a backbone or solve OT: they share one concurrency group
HEAVY = "heavy"
HEAVY_ENDPOINTS = frozenset({
    "classify", "detect_anomalies", "zero_shot_anomalies", "madpot_assignment", "manifold", "coupling",
    "dense_correspondences", "view_upload", "view_window",  # the last two decode an upload
})
#: the tab functions that run a model or a solver: an event whose function calls one of them
#: (e.g. the coupling sliders' re-draw, the anomaly map's click-to-prototype) is heavy too
HEAVY_CALLS = frozenset({"classify", "detect", "zero_shot", "assignment", "manifold_plot", "coupling_plot",
                         "matched_prototype", "correspondences"})
#: peak bytes per decoded pixel while an upload is read and downscaled (measured in
#: ``benchmarks/app_bench.py``; generous: 16-bit DICOM through the float64 display pipeline)
BYTES_PER_PIXEL = 24
#: share of the app's memory that concurrent decodes may take
DECODE_SHARE = 0.5
CACHE_AGE_S = 3600


class DeploymentError(MedotError):
    """A deployment setting that cannot be used (bad credentials file, bad limit)."""


@dataclass(frozen=True)
class Limits:
    """The resource budget of one app process (all from the command line / environment)."""

    concurrency: int = 2
    max_queued_jobs: int = 8
    max_session_jobs: int = 2
    max_epochs: int = 1000
    max_shots: int = 128
    max_pixels: int = 64 * 1024 * 1024
    session_ttl_s: float = 1800.0
    max_sessions: int = 500

    def __post_init__(self) -> None:
        for name, value in vars(self).items():
            if not value > 0:
                raise DeploymentError(f"{name.replace('_', '-')} must be positive, got {value}")


def resolve_host(host: str | None, environ: dict[str, str] | None = None) -> str:
    """``host`` if given, else ``MEDOT_HOST``, else on a Hugging Face Space its
    ``GRADIO_SERVER_NAME``, else the loopback address."""
    environ = os.environ if environ is None else environ
    if host:
        return host
    if environ.get("MEDOT_HOST"):
        return environ["MEDOT_HOST"]
    if environ.get("SPACE_ID") and environ.get("GRADIO_SERVER_NAME"):
        return environ["GRADIO_SERVER_NAME"]
    return LOOPBACK


def read_credentials(environ: dict[str, str] | None = None) -> list[tuple[str, str]] | None:
    """``[(user, password), ...]`` from ``MEDOT_AUTH`` and ``MEDOT_AUTH_FILE``, or None (no login)."""
    environ = os.environ if environ is None else environ
    lines: list[tuple[str, str]] = []
    if environ.get("MEDOT_AUTH"):
        text = environ["MEDOT_AUTH"].replace(",", "\n")
        lines += [("MEDOT_AUTH", line) for line in text.splitlines()]
    if environ.get("MEDOT_AUTH_FILE"):
        path = Path(environ["MEDOT_AUTH_FILE"]).expanduser()
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as error:
            raise DeploymentError(f"MEDOT_AUTH_FILE {path} cannot be read: {error.__class__.__name__}") from None
        lines += [(str(path), line) for line in text.splitlines() if not line.lstrip().startswith("#")]
    credentials = []
    for source, line in lines:
        line = line.strip()
        if not line:
            continue
        user, colon, password = line.partition(":")
        if not colon or not user.strip() or not password:
            raise DeploymentError(f"{source}: each entry must be user:password (a non-empty user and password)")
        credentials.append((user.strip(), password))
    return credentials or None


def memory_bytes() -> int | None:
    """Memory this process may use: its cgroup limit (containers, Spaces) or the machine's total."""
    for path in ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"):
        try:
            text = Path(path).read_text().strip()
        except OSError:
            continue
        if text.isdigit() and int(text) < 1 << 60:
            return int(text)
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return None


def pixel_limit(memory: int | None, concurrency: int, ceiling: int = 64 * 1024 * 1024) -> int:
    """Largest upload (pixels) such that ``concurrency`` decodes at once stay within
    :data:`DECODE_SHARE` of ``memory``, at most ``ceiling`` (medot's own default)."""
    if memory is None:
        return ceiling
    return max(1024 * 1024, min(ceiling, int(memory * DECODE_SHARE / (concurrency * BYTES_PER_PIXEL))))


def _is_heavy(block_fn) -> bool:
    if block_fn.api_name in HEAVY_ENDPOINTS:
        return True
    code = getattr(block_fn.fn, "__code__", None)
    return code is not None and not HEAVY_CALLS.isdisjoint(code.co_names)


def share_heavy_group(demo: gr.Blocks, concurrency: int) -> list[str]:
    """Put every heavy event (:data:`HEAVY_ENDPOINTS`, and the events whose function calls one of
    :data:`HEAVY_CALLS`) into one concurrency group of ``concurrency`` slots, so that limit holds
    for the app as a whole; returns the names of the functions grouped."""
    grouped = []
    for block_fn in demo.fns.values():
        if block_fn.fn is not None and _is_heavy(block_fn):
            block_fn.concurrency_id, block_fn.concurrency_limit = HEAVY, concurrency
            grouped.append(block_fn.api_name if isinstance(block_fn.api_name, str) else block_fn.name)
    return sorted(grouped)


def error_id() -> str:
    return uuid.uuid4().hex[:12]


def internal_error(where: str) -> gr.Error:
    """Log the exception being handled under a new id; the ``gr.Error`` the user sees instead."""
    ident = error_id()
    LOG.exception("medot app error %s in %s", ident, where)
    return gr.Error(
        f"Something went wrong inside the app (error id {ident}). Nothing you sent was changed; "
        "try again, and if it happens again give this id to whoever runs the app (the server log has "
        "the details under it).",
        print_exception=False,
    )


def _guarded(fn: Callable, where: str) -> Callable:
    @functools.wraps(fn)
    def call(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except gr.Error as error:
            shown = redact_paths(str(error.message))
            if shown == error.message:
                raise
            raise gr.Error(shown, duration=error.duration, visible=error.visible, title=error.title,
                           print_exception=False) from None
        except MedotError as error:  # a user error a handler did not translate
            raise gr.Error(redact_paths(str(error)), print_exception=False) from None
        except Exception:
            raise internal_error(where) from None

    return call


def guard_errors(demo: gr.Blocks) -> int:
    """Wrap every plain (non-generator, non-async) event function of ``demo`` so that unexpected
    exceptions become :func:`internal_error` s; returns how many were wrapped."""
    wrapped = 0
    for block_fn in demo.fns.values():
        fn = block_fn.fn
        if fn is None or inspect.isgeneratorfunction(fn) or inspect.iscoroutinefunction(fn):
            continue
        block_fn.fn = _guarded(fn, f"/{block_fn.api_name}" if isinstance(block_fn.api_name, str) else block_fn.name)
        wrapped += 1
    return wrapped


class SessionReaper:
    """Forget Gradio sessions idle for more than ``ttl_s`` (their per-session state and component
    copies), checking every ``every_s`` seconds, on a daemon thread."""

    def __init__(self, demo: gr.Blocks, ttl_s: float, every_s: float | None = None) -> None:
        self.demo, self.ttl_s = demo, ttl_s
        self.every_s = every_s if every_s is not None else max(1.0, min(60.0, ttl_s / 4))
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="medot-session-reaper", daemon=True)

    def start(self) -> SessionReaper:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()

    def _run(self) -> None:
        while not self._stop.wait(self.every_s):
            self.expire()

    def expire(self, now: float | None = None) -> int:
        """Drop the sessions idle for more than ``ttl_s``; returns how many."""
        holder = getattr(self.demo, "state_holder", None)
        if holder is None:
            return 0
        now = time.time() if now is None else now
        dropped = 0
        with holder.lock:
            for session, last in list(holder.time_last_used.items()):
                if now - last.timestamp() > self.ttl_s:
                    holder.session_data.pop(session, None)
                    holder.time_last_used.pop(session, None)
                    dropped += 1
        return dropped


def accept_listed_models(dropdowns: Iterable[gr.Dropdown]) -> None:
    """Let API calls name a model the dropdown did not list when the page was built (one trained
    since start-up); each handler still refuses a model id that is not a listed checkpoint
    (:func:`app.models.resolve_model`)."""
    for dropdown in dropdowns:
        dropdown.allow_custom_value = True
