"""Trained models the app can offer: every medot checkpoint under ``$MEDOT_HOME`` (the models
folder, where ``medot train`` writes by default, and the job folders)."""

from __future__ import annotations

import json
import threading
from collections import OrderedDict
from collections.abc import Callable, Collection, Sequence
from pathlib import Path
from typing import Generic, TypeVar

import gradio as gr

from medot.checkpoint import checkpoint_paths, list_checkpoints
from medot.config import Settings
from medot.errors import CheckpointError


def model_roots(settings: Settings) -> tuple[Path, Path]:
    return settings.models_dir, settings.home / "jobs"


def model_choices(settings: Settings, methods: Collection[str]) -> list[tuple[str, str]]:
    """``(label, tensor-file path)`` of the checkpoints of ``methods``, newest first."""
    choices = []
    for path, meta in list_checkpoints(*model_roots(settings)):
        if meta["method"] not in methods:
            continue
        where = path.parent.relative_to(settings.home) if settings.home in path.parents else path.parent
        task = f" on {meta['task']}" if meta.get("task") else ""
        choices.append((f"{meta['method']}{task} [{meta['backbone']}] - {where}", str(path)))
    return choices


def listed_model(settings: Settings, path: str | None, methods: Collection[str]) -> dict:
    """The metadata of ``path`` if it is one of the listed checkpoints of ``methods`` (a request
    can name no other file); raises ``CheckpointError`` otherwise."""
    for found, meta in list_checkpoints(*model_roots(settings)):
        if str(found) == path and meta["method"] in methods:
            return meta
    raise CheckpointError("choose a model from the list (refresh it if a model was removed or just trained)")


def refreshed(choices: list[tuple[str, str]], current: str | None, keep: str | None = None):
    """A dropdown update to ``choices`` that keeps ``current`` when it is still listed (or is
    ``keep``, e.g. the zero-shot entry), else selects the newest model (or nothing)."""
    values = [value for _, value in choices]
    value = current if current in values or (keep is not None and current == keep) else (values[0] if values else None)
    return gr.update(choices=choices, value=value)


ModelList = tuple[gr.Dropdown, Callable[[], list[tuple[str, str]]]]


def fill_on_load(demo: gr.Blocks, lists: Sequence[ModelList]) -> None:
    """Fill every model dropdown from ``$MEDOT_HOME`` each time a page loads (the lists drawn when
    the app was built miss every model trained since), keeping a still-listed selection."""
    dropdowns = [dropdown for dropdown, _ in lists]

    def fill(*current):
        return [refreshed(choices(), value) for (_, choices), value in zip(lists, current, strict=True)]

    demo.load(fill, inputs=dropdowns, outputs=dropdowns, api_name="model_lists", show_progress="hidden")


Model = TypeVar("Model")
#: loaded models kept per cache (a PRADOT detector or prompt predictor is a few MB to a few 100 MB)
CACHED_MODELS = 4


def content_hash(path: str | Path) -> str | None:
    """The SHA-256 of the checkpoint's tensors, as its sidecar records it (None if unreadable)."""
    try:
        meta = json.loads(checkpoint_paths(path)[1].read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None
    return meta.get("tensors_sha256") if isinstance(meta, dict) else None


class ModelCache(Generic[Model]):
    """Models loaded from checkpoint files, keyed by path *and* content hash: a checkpoint saved
    over (a job resumed, a model retrained into the same folder) is loaded afresh, never served
    stale. At most ``size`` models are kept, the least recently used dropped first."""

    def __init__(self, size: int = CACHED_MODELS) -> None:
        self.size = size
        self._loaded: OrderedDict[tuple[str, str | None, str], Model] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, path: str | Path, load: Callable[[], Model], variant: str = "") -> Model:
        """The model at ``path`` (``variant`` tells apart models built from one file differently),
        calling ``load()`` unless the same content is cached."""
        key = (str(path), content_hash(path), variant)
        with self._lock:
            if key in self._loaded:
                self._loaded.move_to_end(key)
                return self._loaded[key]
            model = load()
            for stale in [k for k in self._loaded if k[0] == key[0] and k[2] == variant]:
                del self._loaded[stale]
            self._loaded[key] = model
            while len(self._loaded) > self.size:
                self._loaded.popitem(last=False)
            return model
