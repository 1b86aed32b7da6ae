r"""A fitted PatchCore baseline on disk and in use: :func:`save_patchcore`, :func:`load_patchcore`,
:class:`PatchCoreDetector` (images in, anomaly maps and scores out, as :class:`PradotDetector`).

The checkpoint (:mod:`medot.checkpoint`: safetensors + JSON sidecar, never pickle) holds the
coreset memory bank :math:`\mathcal{M}_C` as the tensor ``memory_bank`` ``[|M_C|, D]`` and in its
metadata ``method = "patchcore"``, the backbone name, the input size, the ``layers`` with their
patch ``grids``, the :class:`~medot.methods.pradot.config.PatchCoreConfig` and optional ``metrics``.
"""

from __future__ import annotations

import os
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch

from medot.backbones.base import VisionLanguageBackbone
from medot.checkpoint import Checkpoint, load_checkpoint, save_checkpoint
from medot.errors import CheckpointError
from medot.eval.calibration import NormalCalibration
from medot.methods.pradot.config import PatchCoreConfig
from medot.methods.pradot.detector import BackboneDetector, checkpoint_backbone
from medot.methods.pradot.patchcore import PatchCoreModel

METHOD = "patchcore"


def save_patchcore(
    path: str | os.PathLike,
    model: PatchCoreModel,
    *,
    backbone: str,
    image_size: int,
    metrics: dict[str, Any] | None = None,
    calibration: NormalCalibration | None = None,
    training: dict[str, Any] | None = None,
) -> Path:
    """Write the fitted ``model`` as a medot checkpoint at ``path``; returns the tensor file's path."""
    if model.memory_bank.numel() == 0:
        raise CheckpointError("this PatchCore model has an empty memory bank: fit it before saving")
    meta = {
        "method": METHOD,
        "backbone": backbone,
        "image_size": int(image_size),
        "layers": list(model.layers),
        "grids": {layer: list(grid) for layer, grid in model.grids.items()},
        "memory_bank_size": int(model.memory_bank.shape[0]),
        "hyperparameters": asdict(model.config),
        "metrics": metrics or {},
        "training": training or {},
    }
    if calibration is not None:
        meta["calibration"] = calibration.to_dict()
    return save_checkpoint(path, Checkpoint({"memory_bank": model.memory_bank}, meta))


def patchcore_from_checkpoint(checkpoint: Checkpoint) -> PatchCoreModel:
    """Rebuild the memory bank stored in ``checkpoint`` (raises :class:`CheckpointError` if it is not one)."""
    meta = checkpoint.meta
    if meta.get("method") != METHOD:
        raise CheckpointError(f"this checkpoint was written by method {meta.get('method')!r}, not {METHOD!r}")
    try:
        known = {name: value for name, value in meta["hyperparameters"].items()
                 if name in PatchCoreConfig.__dataclass_fields__}
        grids = {layer: (int(grid[0]), int(grid[1])) for layer, grid in meta["grids"].items()}
        model = PatchCoreModel(meta["layers"], grids, PatchCoreConfig(**known))
        bank = checkpoint.tensors["memory_bank"]
        if bank.ndim != 2 or bank.shape[0] == 0:
            raise ValueError(f"memory_bank has shape {tuple(bank.shape)}, expected a non-empty [N, D]")
        model.memory_bank = bank.float()
        return model
    except (KeyError, TypeError, ValueError) as error:
        raise CheckpointError(f"the PatchCore checkpoint is incomplete or inconsistent: {error}") from None


class PatchCoreDetector(BackboneDetector):
    """A fitted PatchCore memory bank and its frozen backbone. :meth:`predict` gives each patch's
    distance to its nearest memory item, upsampled and smoothed; image score = largest patch score
    (:mod:`.patchcore`, step 3)."""

    model: PatchCoreModel


def load_patchcore(
    path: str | os.PathLike,
    backbone: VisionLanguageBackbone | str | None = None,
    *,
    device: torch.device | str | None = "cpu",
) -> PatchCoreDetector:
    """Load a PatchCore checkpoint with its backbone (the one named in it when ``backbone`` is None
    or a name; a given backbone must be the one it was fitted on)."""
    checkpoint = load_checkpoint(path)
    model = patchcore_from_checkpoint(checkpoint)
    backbone = checkpoint_backbone(checkpoint.meta, backbone, device, "PatchCore")
    return PatchCoreDetector(model, backbone, checkpoint.meta)


def load_anomaly_detector(
    path: str | os.PathLike,
    backbone: VisionLanguageBackbone | str | None = None,
    *,
    device: torch.device | str | None = None,
) -> BackboneDetector:
    """A PRADOT, PatchCore, MADPOT or MVFA-baseline checkpoint, whichever ``path`` holds, as its detector."""
    from medot.methods.pradot.detector import METHOD as PRADOT
    from medot.methods.pradot.detector import PradotDetector, model_from_checkpoint

    checkpoint = load_checkpoint(path)
    method = checkpoint.meta.get("method")
    if method == PRADOT:
        model, _ = model_from_checkpoint(checkpoint)
        return PradotDetector(model, checkpoint_backbone(checkpoint.meta, backbone, device, "PRADOT"), checkpoint.meta)
    if method == METHOD:
        model = patchcore_from_checkpoint(checkpoint)
        return PatchCoreDetector(model, checkpoint_backbone(checkpoint.meta, backbone, device, "PatchCore"),
                                 checkpoint.meta)
    if method in ("madpot", "mvfa"):
        from medot.methods.madpot.detector import MadpotDetector, checkpoint_text_backbone
        from medot.methods.madpot.detector import model_from_checkpoint as madpot_from_checkpoint

        owner = checkpoint_text_backbone(checkpoint.meta, backbone, device)
        return MadpotDetector(madpot_from_checkpoint(checkpoint, owner), owner, checkpoint.meta)
    raise CheckpointError(
        f"{path} holds a {method!r} model; predict-anomaly reads PRADOT and PatchCore checkpoints "
        "(<out>/model and <out>/patchcore of `medot train pradot`) and MADPOT / MVFA ones (`medot train madpot`)"
    )
