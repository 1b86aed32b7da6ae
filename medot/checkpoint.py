"""Trained state on disk: a safetensors file of tensors plus a JSON sidecar describing it.

``<stem>.safetensors`` holds only tensors (no code, nothing is ever unpickled) and
``<stem>.json`` holds the metadata: method, backbone, class names, modality names,
hyper-parameters, metrics, medot version and the SHA-256 of the tensor file (so a sidecar that does
not belong to its tensors is caught). Both files are written to temporary names and renamed into
place, tensors first, so a crash never leaves a half-written checkpoint that looks complete.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from medot import __version__
from medot.errors import CheckpointError

REQUIRED_KEYS = ("method", "backbone")
#: metadata key of the training-state checkpoints :class:`medot.train.Trainer` writes for resuming
TRAINING_STATE_KEY = "trainer"


@dataclass
class Checkpoint:
    """Tensors and metadata of one trained model."""

    tensors: dict[str, torch.Tensor]
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def method(self) -> str:
        return self.meta["method"]

    @property
    def backbone(self) -> str:
        return self.meta["backbone"]


def checkpoint_paths(path: str | os.PathLike) -> tuple[Path, Path]:
    """``model``, ``model.safetensors`` or ``model.json`` -> (tensor file, sidecar)."""
    path = Path(path)
    stem = path.with_suffix("") if path.suffix in (".safetensors", ".json") else path
    return stem.with_name(stem.name + ".safetensors"), stem.with_name(stem.name + ".json")


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def atomic_write(target: Path, write) -> None:
    """Run ``write(tmp)`` on a temporary file beside ``target``, then rename it into place."""
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(Path(tmp))
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def save_checkpoint(path: str | os.PathLike, checkpoint: Checkpoint) -> Path:
    """Write ``checkpoint`` atomically; returns the tensor file's path."""
    missing = [key for key in REQUIRED_KEYS if key not in checkpoint.meta]
    if missing:
        raise CheckpointError(f"checkpoint metadata lacks {missing}")
    tensor_path, meta_path = checkpoint_paths(path)
    tensor_path.parent.mkdir(parents=True, exist_ok=True)
    # clone: safetensors refuses tensors that share storage (views of one parameter)
    tensors = {name: t.detach().to("cpu").clone().contiguous() for name, t in checkpoint.tensors.items()}
    atomic_write(tensor_path, lambda tmp: save_file(tensors, str(tmp)))
    meta = {
        **checkpoint.meta,
        "medot_version": __version__,
        "saved_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "tensors_sha256": _sha256(tensor_path),
    }
    text = json.dumps(meta, indent=2, sort_keys=True, allow_nan=False)
    atomic_write(meta_path, lambda tmp: tmp.write_text(text + "\n", encoding="utf-8"))
    return tensor_path


def load_checkpoint(path: str | os.PathLike, device: torch.device | str = "cpu") -> Checkpoint:
    """Read a checkpoint written by :func:`save_checkpoint`, checking that its two files match."""
    tensor_path, meta_path = checkpoint_paths(path)
    for required in (tensor_path, meta_path):
        if not required.is_file():
            raise CheckpointError(f"checkpoint file {required} is missing")
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise CheckpointError(f"{meta_path} is not valid JSON: {error}") from None
    if not isinstance(meta, dict) or any(key not in meta for key in REQUIRED_KEYS):
        raise CheckpointError(f"{meta_path} lacks the keys {list(REQUIRED_KEYS)}")
    if meta.get("tensors_sha256") != _sha256(tensor_path):
        raise CheckpointError(f"{tensor_path.name} does not match its sidecar {meta_path.name} (hash differs)")
    try:
        tensors = load_file(str(tensor_path), device=str(device))
    except (SafetensorError, OSError) as error:
        raise CheckpointError(f"{tensor_path} is not a readable safetensors file: {error}") from None
    return Checkpoint(tensors=tensors, meta=meta)


def list_checkpoints(*roots: str | os.PathLike, method: str | None = None) -> list[tuple[Path, dict[str, Any]]]:
    """``(tensor file, metadata)`` of every checkpoint under ``roots`` (recursively), newest first.

    Only the sidecars are read (tensors are not loaded or hashed); files that are not medot
    sidecars, whose tensor file is missing, or that hold a training state for ``--resume``
    (metadata key :data:`TRAINING_STATE_KEY`) rather than a model, are skipped. ``method`` keeps one
    method's models.
    """
    found = []
    for root in roots:
        for meta_path in Path(root).rglob("*.json") if Path(root).is_dir() else ():
            tensor_path, _ = checkpoint_paths(meta_path)
            if not tensor_path.is_file():
                continue
            try:
                meta = json.loads(meta_path.read_text(encoding="utf-8"))
            except (OSError, UnicodeDecodeError, json.JSONDecodeError):
                continue
            if isinstance(meta, dict) and all(key in meta for key in REQUIRED_KEYS) and TRAINING_STATE_KEY not in meta:
                if method is None or meta["method"] == method:
                    found.append((tensor_path, meta))
    return sorted(found, key=lambda item: item[0].stat().st_mtime, reverse=True)
