"""Trained models the app can offer: every medot checkpoint under ``$MEDOT_HOME`` (the models
folder, where ``medot train`` writes by default, and the job folders)."""

from __future__ import annotations

from collections.abc import Callable, Collection, Sequence
from pathlib import Path

import gradio as gr

from medot.checkpoint import list_checkpoints
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
