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
from medot.config import Settings, confine_path
from medot.errors import CheckpointError, PathNotAllowedError


def model_roots(settings: Settings) -> tuple[Path, Path]:
    return settings.models_dir, settings.home / "jobs"


#: the refusal's text after the quoted model, for a path that leaves ``$MEDOT_HOME``
OUTSIDE_HOME = ("does not name a model inside MEDOT_HOME (symlinks followed); choose a model from the list "
                "(an id such as models/<name>/model.safetensors or jobs/<id>/model.safetensors)")
#: longer model names are refused unread (no id or path of a listed model is this long)
MAX_MODEL_ID = 1024


def model_id(settings: Settings, path: Path) -> str:
    """The id users see and send for the checkpoint whose tensor file is ``path``: that file relative
    to ``$MEDOT_HOME``, e.g. ``models/kmat-123/model.safetensors``, ``jobs/3/model.safetensors``
    (never a server path)."""
    return path.relative_to(settings.home).as_posix()


def _confined(settings: Settings, path: Path) -> bool:
    """Whether the tensor file ``path`` and its sidecar both stay inside ``$MEDOT_HOME`` once
    symlinks are followed."""
    try:
        return all(confine_path(part, settings.home) for part in checkpoint_paths(path))
    except PathNotAllowedError:
        return False


def listed_checkpoints(settings: Settings, methods: Collection[str]) -> list[tuple[Path, dict]]:
    """``(tensor file, metadata)`` of the models of ``methods`` the app offers, newest first: the
    checkpoints under ``$MEDOT_HOME``'s models and jobs folders, less any whose tensor file or sidecar
    is a symlink leading out of ``$MEDOT_HOME`` (the one listing behind every dropdown and
    :func:`resolve_model`)."""
    return [(path, meta) for path, meta in list_checkpoints(*model_roots(settings))
            if meta["method"] in methods and _confined(settings, path)]


def model_choices(settings: Settings, methods: Collection[str]) -> list[tuple[str, str]]:
    """``(label, model id)`` of the checkpoints of ``methods``, newest first; the value is the
    :func:`model_id` (relative to ``$MEDOT_HOME``), which is also what the API's ``model`` takes."""
    choices = []
    for path, meta in listed_checkpoints(settings, methods):
        task = f" on {meta['task']}" if meta.get("task") else ""
        choices.append((f"{meta['method']}{task} [{meta['backbone']}] - {path.parent.relative_to(settings.home)}",
                        model_id(settings, path)))
    return choices


def resolve_model(settings: Settings, model: str | None, methods: Collection[str]) -> tuple[Path, dict]:
    """The tensor file and metadata of the model a request names, the app's only way from a request
    to a checkpoint file.

    ``model`` is a :func:`model_id` (relative to ``$MEDOT_HOME``) or, for API clients written when the
    dropdowns held server paths, an absolute path that lies inside ``$MEDOT_HOME``. Refused, before
    anything is opened, with a one-line message: a name containing ``..``, one that resolves
    (symlinks followed) outside ``$MEDOT_HOME`` (:class:`PathNotAllowedError`), and any file that is
    not a listed checkpoint of ``methods`` (:class:`CheckpointError`)."""
    text = (model or "").strip()
    if not text:
        raise CheckpointError("choose a model from the list")
    if len(text) > MAX_MODEL_ID or "\x00" in text:
        raise PathNotAllowedError(f"{text[:80]!r}... is not a model id; choose a model from the list")
    if ".." in Path(text).parts:
        raise PathNotAllowedError(f"model {text!r} is refused: a model id is relative to MEDOT_HOME and may not "
                                  "contain '..' (e.g. models/<name>/model.safetensors)")
    resolved = confine_path(text, settings.home, outside=OUTSIDE_HOME)
    named = Path(text) if Path(text).is_absolute() else settings.home / text
    for path, meta in listed_checkpoints(settings, methods):
        if path == named or path.resolve() == resolved:
            return path, meta
    raise CheckpointError(f"{text!r} is not a trained model of this tab; choose a model from the list (refresh it "
                          "if a model was removed or just trained)")


def listed_model(settings: Settings, model: str | None, methods: Collection[str]) -> dict:
    """The metadata of the model ``model`` names, checked as by :func:`resolve_model`."""
    return resolve_model(settings, model, methods)[1]


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
