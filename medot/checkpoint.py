"""Trained state on disk: a safetensors file of tensors plus a JSON sidecar describing it.

``<stem>.safetensors`` holds only tensors (no code, nothing is ever unpickled) and
``<stem>.json`` holds the metadata: method, backbone, class names, modality names,
hyper-parameters, metrics, medot version and the SHA-256 of the tensor file (so a sidecar that does
not belong to its tensors is caught).

Saving over an existing checkpoint is crash-safe as a pair, not only per file. Both new files are
first written completely under temporary names; then, when the current pair is complete (its
sidecar's hash matches its tensors), it is kept as the *previous* version
``.<stem>.previous.safetensors`` / ``.json`` (hard links, no copy); only then are the new tensors and
the new sidecar renamed into place. A kill at any instant therefore leaves at least one complete
pair: the current one, or (between the two final renames) the previous one.
``load_checkpoint(..., fallback=True)`` - what ``--resume`` uses - loads the previous version when
the current pair is incomplete or mismatched; hidden ``.``-files are never listed as models.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

from safetensors import SafetensorError

from medot import __version__
from medot.errors import CheckpointError

if TYPE_CHECKING:  # torch comes with the tensors (safetensors.torch), not with this module's import
    import torch

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


def _temporary(target: Path) -> Path:
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    os.close(fd)
    return Path(tmp)


def _fsync(path: Path) -> None:
    with path.open("rb") as handle:
        os.fsync(handle.fileno())


def atomic_write(target: Path, write) -> None:
    """Run ``write(tmp)`` on a temporary file beside ``target``, then rename it into place."""
    tmp = _temporary(target)
    try:
        write(tmp)
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def previous_paths(path: str | os.PathLike) -> tuple[Path, Path]:
    """(tensor file, sidecar) of the previous version that :func:`save_checkpoint` keeps."""
    tensor_path, _ = checkpoint_paths(path)
    stem = tensor_path.with_suffix("")
    return checkpoint_paths(stem.with_name(f".{stem.name}.previous"))


def _is_complete(tensor_path: Path, meta_path: Path) -> bool:
    """Both files exist and the sidecar's hash is the tensor file's."""
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
        return isinstance(meta, dict) and meta.get("tensors_sha256") == _sha256(tensor_path)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return False


def _keep_as(source: Path, target: Path) -> None:
    """Make ``target`` an atomic copy of ``source`` (a hard link where the filesystem allows)."""
    tmp = _temporary(target)
    tmp.unlink()
    try:
        try:
            os.link(source, tmp)
        except OSError:
            shutil.copy2(source, tmp)
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def save_checkpoint(path: str | os.PathLike, checkpoint: Checkpoint) -> Path:
    """Write ``checkpoint`` so that a crash at any point leaves a complete pair (see the module
    docstring); returns the tensor file's path."""
    missing = [key for key in REQUIRED_KEYS if key not in checkpoint.meta]
    if missing:
        raise CheckpointError(f"checkpoint metadata lacks {missing}")
    tensor_path, meta_path = checkpoint_paths(path)
    tensor_path.parent.mkdir(parents=True, exist_ok=True)
    # clone: safetensors refuses tensors that share storage (views of one parameter)
    tensors = {name: t.detach().to("cpu").clone().contiguous() for name, t in checkpoint.tensors.items()}
    new_tensors, new_meta = _temporary(tensor_path), _temporary(meta_path)
    from safetensors.torch import save_file

    try:
        save_file(tensors, str(new_tensors))
        _fsync(new_tensors)
        meta = {
            **checkpoint.meta,
            "medot_version": __version__,
            "saved_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "tensors_sha256": _sha256(new_tensors),
        }
        text = json.dumps(meta, indent=2, sort_keys=True, allow_nan=False)
        new_meta.write_text(text + "\n", encoding="utf-8")
        _fsync(new_meta)
        if _is_complete(tensor_path, meta_path):
            previous_tensors, previous_meta = previous_paths(tensor_path)
            _keep_as(tensor_path, previous_tensors)
            _keep_as(meta_path, previous_meta)
        os.replace(new_tensors, tensor_path)
        os.replace(new_meta, meta_path)
    except BaseException:
        new_tensors.unlink(missing_ok=True)
        new_meta.unlink(missing_ok=True)
        raise
    return tensor_path


def checkpoint_exists(path: str | os.PathLike) -> bool:
    """Whether ``path`` or its previous version has a sidecar (something to resume from)."""
    return checkpoint_paths(path)[1].is_file() or previous_paths(path)[1].is_file()


def load_checkpoint(
    path: str | os.PathLike, device: torch.device | str = "cpu", *, fallback: bool = False
) -> Checkpoint:
    """Read a checkpoint written by :func:`save_checkpoint`, checking that its two files match.

    With ``fallback=True`` a current pair that is missing or does not match (a writer killed
    between its renames) gives way to the previous version, when that one is complete; the
    loaded metadata then says so under ``"loaded_from"``.
    """
    try:
        return _load_pair(*checkpoint_paths(path), device)
    except CheckpointError as error:
        previous = previous_paths(path)
        if not fallback or not _is_complete(*previous):
            raise
        checkpoint = _load_pair(*previous, device)
        checkpoint.meta["loaded_from"] = f"{previous[0].name} (the current pair is incomplete: {error})"
        return checkpoint


def _load_pair(tensor_path: Path, meta_path: Path, device: torch.device | str) -> Checkpoint:
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
    from safetensors.torch import load_file

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
            if meta_path.name.startswith("."):  # previous versions and temporary files
                continue
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
