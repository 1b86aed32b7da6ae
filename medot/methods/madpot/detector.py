"""Trained MADPOT / MVFA-baseline models on disk and in use; the zero-shot detector.

A checkpoint (:mod:`medot.checkpoint`: safetensors + JSON sidecar, never pickle) holds the learned
tensors (MADPOT: ``adapters.*`` and ``prompts.context``; MVFA: ``seg_adapters.*``,
``det_adapters.*`` and the memory bank ``memory.<layer>``) and in its metadata ``method``
(``madpot`` or ``mvfa``), the backbone, the input size, the layers with their channels and grids,
the object names the prompts were trained with, whether the image score is the map maximum
(``localised``), the :class:`MadpotConfig`, and the caller's ``metrics`` / ``training`` records.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from medot.backbones.base import VisionLanguageBackbone
from medot.checkpoint import Checkpoint, load_checkpoint, save_checkpoint
from medot.errors import CheckpointError
from medot.methods.madpot.baselines import MvfaModel, ZeroShotModel, require_joint_space_layers
from medot.methods.madpot.config import MADPOT, MVFA_BASELINE, MadpotConfig
from medot.methods.madpot.model import MadpotModel
from medot.methods.pradot.detector import BackboneDetector, checkpoint_backbone


def save_madpot(
    path: str | os.PathLike,
    model: MadpotModel | MvfaModel,
    *,
    backbone: str,
    image_size: int,
    metrics: dict[str, Any] | None = None,
    training: dict[str, Any] | None = None,
    calibration: Any | None = None,
) -> Path:
    """Write ``model`` as a medot checkpoint at ``path``; returns the tensor file's path.
    ``calibration``: a :class:`~medot.eval.calibration.NormalCalibration` on held-out normals."""
    method = MADPOT if isinstance(model, MadpotModel) else MVFA_BASELINE
    objects = list(model.object_names) if isinstance(model, MadpotModel) else [model.object_name]
    meta = {
        "method": method,
        "backbone": backbone,
        "image_size": int(image_size),
        "layers": list(model.layers),
        "channels": dict(model.channels),
        "grids": {layer: list(grid) for layer, grid in model.grids.items()},
        "objects": objects,
        "localised": bool(model.localised),
        "hyperparameters": model.config.to_dict(),
        "metrics": metrics or {},
        "training": training or {},
    }
    if calibration is not None:
        meta["calibration"] = calibration.to_dict()
    return save_checkpoint(path, Checkpoint(model.learned_state(), meta))


def model_from_checkpoint(checkpoint: Checkpoint, backbone: VisionLanguageBackbone) -> MadpotModel | MvfaModel:
    """Rebuild the model in ``checkpoint`` on ``backbone`` (raises :class:`CheckpointError`)."""
    meta = checkpoint.meta
    if meta.get("method") not in (MADPOT, MVFA_BASELINE):
        raise CheckpointError(f"this checkpoint was written by method {meta.get('method')!r}, not madpot or mvfa")
    try:
        config = MadpotConfig.from_dict(meta["hyperparameters"])
        grids = {layer: tuple(grid) for layer, grid in meta["grids"].items()}
        args = (backbone, config, meta["layers"], meta["channels"], grids)
        if meta["method"] == MADPOT:
            model: MadpotModel | MvfaModel = MadpotModel(*args, meta["objects"], localised=meta["localised"])
        else:
            model = MvfaModel(*args, meta["objects"][0], localised=meta["localised"])
        model.load_learned_state({k: v.to(backbone.device) for k, v in checkpoint.tensors.items()})
    except (KeyError, TypeError, ValueError, RuntimeError) as error:
        raise CheckpointError(f"the {meta.get('method')} checkpoint is incomplete or inconsistent: {error}") from None
    return model


class MadpotDetector(BackboneDetector):
    """A trained MADPOT or MVFA model with its frozen backbone: images in, maps and scores out."""

    def predict(
        self, images: Sequence[Image.Image | np.ndarray], object_name: str | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``(maps [B, S, S], scores [B])``; MADPOT may score as another object (zero-shot transfer)."""
        if object_name is not None:
            if not isinstance(self.model, MadpotModel):
                raise CheckpointError("only a MADPOT model can score images as another object")
            self.model.set_object(object_name)
        return super().predict(images)

    def assignments(self, images: Sequence[Image.Image | np.ndarray], layer: str | None = None) -> dict[str, Any]:
        """For each patch of ``layer`` (default: the first) which prompt took its mass and how much."""
        if not isinstance(self.model, MadpotModel):
            raise CheckpointError("the partial-OT assignment exists only for MADPOT models")
        layer = layer or self.model.layers[0]
        found = self.model.assignments(self.tokens(images), layer)
        return {**{k: v.cpu() for k, v in found.items()}, "grid": self.model.grids[layer], "layer": layer}


def load_madpot(
    path: str | os.PathLike,
    backbone: VisionLanguageBackbone | str | None = None,
    *,
    device: torch.device | str | None = None,
) -> MadpotDetector:
    """Load a MADPOT / MVFA checkpoint with its backbone (the one named in it by default)."""
    checkpoint = load_checkpoint(path)
    if checkpoint.meta.get("method") not in (MADPOT, MVFA_BASELINE):
        raise CheckpointError(
            f"this checkpoint was written by method {checkpoint.meta.get('method')!r}, not madpot or mvfa"
        )
    backbone = checkpoint_text_backbone(checkpoint.meta, backbone, device)
    return MadpotDetector(model_from_checkpoint(checkpoint, backbone), backbone, checkpoint.meta)


def checkpoint_text_backbone(
    meta: dict[str, Any], backbone: VisionLanguageBackbone | str | None, device: torch.device | str | None
) -> VisionLanguageBackbone:
    """The backbone a MADPOT / MVFA checkpoint was trained on, **with** its text tower (the prompts
    and the fixed ensembles run through it); a given backbone must be that one."""
    if backbone is None or isinstance(backbone, str):
        from medot.backbones import create_backbone

        backbone = create_backbone(backbone or meta["backbone"], device=device)
    return checkpoint_backbone(meta, backbone, device, "MADPOT")


def layer_geometry(backbone: VisionLanguageBackbone) -> tuple[dict[str, int], dict[str, tuple[int, int]]]:
    """Channels and grid of every feature layer (one forward pass of a blank image)."""
    size = backbone.preprocess.image_size
    with torch.inference_mode():
        features = backbone.encode_image(
            backbone.transform_batch([np.zeros((size, size, 3), dtype=np.float32)]), backbone.feature_layers
        )
    channels = {layer: int(t.shape[-1]) for layer, t in features.patch_tokens.items()}
    return channels, dict(features.grids)


def zero_shot_detector(backbone: VisionLanguageBackbone, object_name: str) -> BackboneDetector:
    """Text-only anomaly maps for ``object_name`` on the backbone's joint-space tokens (no training)."""
    channels, grids = layer_geometry(backbone)
    layers = require_joint_space_layers(backbone, channels)
    model = ZeroShotModel(backbone, layers, grids, object_name, localised=True)
    meta = {"method": "zeroshot", "backbone": backbone.name, "image_size": backbone.preprocess.image_size,
            "objects": [object_name]}
    return BackboneDetector(model, backbone, meta)
