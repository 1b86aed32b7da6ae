"""A trained PRADOT ensemble on disk and in use: :func:`save_pradot`, :func:`load_pradot`,
:class:`PradotDetector` (images in, anomaly maps and scores out).

The checkpoint (:mod:`medot.checkpoint`: safetensors + JSON sidecar, never pickle) holds, for
ensemble member ``i``, the tensors ``member.<i>.features`` ``[P, C]`` and ``member.<i>.positions``
``[P, 2]``, and in its metadata ``method = "pradot"``, the backbone name, the input size, each
member's ``layer``, ``alpha``, ``grid``, ``channels`` and ``n_prototypes``, the
:class:`~medot.methods.pradot.config.PradotConfig`, whatever ``metrics`` / ``training``
records the caller adds, and optionally the ``calibration`` on held-out normals
(:class:`~medot.eval.calibration.NormalCalibration`, read back as ``detector.calibration``).

:class:`BackboneDetector` and :func:`checkpoint_backbone` are shared with the PatchCore baseline's
checkpoints (:mod:`.patchcore_io`): both encode raw images with the backbone's layers and hand the
patch tokens to a model ``(tokens, size) -> (maps, scores)``.
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
from medot.eval.calibration import NormalCalibration
from medot.methods.pradot.config import PradotConfig
from medot.methods.pradot.torch_model import PradotModel, PrototypeBank, PrototypeMatch

METHOD = "pradot"


def save_pradot(
    path: str | os.PathLike,
    model: PradotModel,
    *,
    backbone: str,
    image_size: int,
    config: PradotConfig,
    metrics: dict[str, Any] | None = None,
    training: dict[str, Any] | None = None,
    calibration: NormalCalibration | None = None,
) -> Path:
    """Write ``model`` as a medot checkpoint at ``path``; returns the tensor file's path."""
    tensors: dict[str, torch.Tensor] = {}
    members = []
    for index, member in enumerate(model.members):
        tensors[f"member.{index}.features"] = member.features
        tensors[f"member.{index}.positions"] = member.positions
        members.append(
            {
                "name": member.name,
                "layer": member.layer,
                "alpha": member.alpha,
                "grid": list(member.grid),
                "channels": member.channels,
                "n_prototypes": member.n_prototypes,
            }
        )
    meta = {
        "method": METHOD,
        "backbone": backbone,
        "image_size": int(image_size),
        "layers": list(model.layers),
        "alphas": sorted({member.alpha for member in model.members}),
        "members": members,
        "hyperparameters": config.to_dict(),
        "metrics": metrics or {},
        "training": training or {},
    }
    if calibration is not None:
        meta["calibration"] = calibration.to_dict()
    return save_checkpoint(path, Checkpoint(tensors, meta))


def model_from_checkpoint(checkpoint: Checkpoint) -> tuple[PradotModel, PradotConfig]:
    """Rebuild the ensemble stored in ``checkpoint`` (raises :class:`CheckpointError` if it is not one)."""
    meta = checkpoint.meta
    if meta.get("method") != METHOD:
        raise CheckpointError(f"this checkpoint was written by method {meta.get('method')!r}, not {METHOD!r}")
    try:
        config = PradotConfig.from_dict(meta["hyperparameters"])
        members = []
        for index, spec in enumerate(meta["members"]):
            bank = PrototypeBank(
                spec["layer"],
                int(spec["channels"]),
                (int(spec["grid"][0]), int(spec["grid"][1])),
                n_prototypes=int(spec["n_prototypes"]),
                alpha=float(spec["alpha"]),
                epsilon=config.epsilon,
                ema=config.ema,
                sinkhorn_iterations=config.sinkhorn_iterations,
                update_positions=config.update_positions,
            )
            state = {
                "features": checkpoint.tensors[f"member.{index}.features"],
                "positions": checkpoint.tensors[f"member.{index}.positions"],
            }
            bank.load_state_dict(state, strict=True)
            members.append(bank)
        return PradotModel(members), config
    except (KeyError, TypeError, ValueError, RuntimeError) as error:
        raise CheckpointError(f"the PRADOT checkpoint is incomplete or inconsistent: {error}") from None


class BackboneDetector:
    """A scoring model over the patch tokens of a frozen backbone: raw images in, anomaly maps and
    scores out. ``model`` is an ``nn.Module`` with a ``layers`` attribute and
    ``model(tokens, size) -> (maps [B, *size], scores [B])``.

    Maps are ``[B, S, S]`` at the backbone's input size ``S``; they cover the view the backbone
    sees (short side resized to ``S``, centre crop), which is the whole image for square inputs.
    """

    def __init__(self, model: torch.nn.Module, backbone: VisionLanguageBackbone, meta: dict[str, Any]) -> None:
        self.backbone = backbone
        self.model = model.to(backbone.device).eval()
        self.meta = meta
        self.image_size = int(meta.get("image_size", backbone.preprocess.image_size))
        self.calibration = NormalCalibration.from_meta(meta)
        """Scores of held-out normals (:mod:`medot.eval.calibration`), or None if saved without."""

    @property
    def size(self) -> tuple[int, int]:
        return (self.image_size, self.image_size)

    def tokens(self, images: Sequence[Image.Image | np.ndarray]) -> dict[str, torch.Tensor]:
        """Patch tokens ``{layer: [B, HW, C]}`` of the model's layers for raw ``images``."""
        with torch.inference_mode():
            features = self.backbone.encode_image(self.backbone.transform_batch(list(images)), self.model.layers)
        return {layer: features.patch_tokens[layer].float() for layer in self.model.layers}

    def predict(self, images: Sequence[Image.Image | np.ndarray]) -> tuple[torch.Tensor, torch.Tensor]:
        """``(maps [B, S, S], image scores [B])`` on the CPU, as the model computes them."""
        maps, scores = self.model(self.tokens(images), self.size)
        return maps.cpu(), scores.cpu()


class PradotDetector(BackboneDetector):
    """A trained PRADOT ensemble and its frozen backbone. :meth:`predict` gives each patch's minimum
    cost to the prototypes, upsampled and averaged over the ensemble; image score = map maximum."""

    model: PradotModel

    def transport_scores(self, images: Sequence[Image.Image | np.ndarray]) -> torch.Tensor:
        """Alternative image scores ``[B]``: mean per-image OT cost to each member's prototypes."""
        return self.model.transport_scores(self.tokens(images)).cpu()

    def matched_prototypes(
        self, images: Sequence[Image.Image | np.ndarray], member: str | int = 0
    ) -> PrototypeMatch:
        """For every patch, the index and grid position of its nearest prototype in ``member``."""
        return self.model.matched_prototypes(self.tokens(images), member)


def checkpoint_backbone(
    meta: dict[str, Any],
    backbone: VisionLanguageBackbone | str | None,
    device: torch.device | str | None,
    label: str,
) -> VisionLanguageBackbone:
    """The backbone a checkpoint of ``label`` models was trained on: the one named in ``meta`` when
    ``backbone`` is None or a name; a given backbone must be that one (else :class:`CheckpointError`)."""
    trained_on = meta["backbone"]
    if backbone is None or isinstance(backbone, str):
        from medot.backbones import create_backbone

        backbone = create_backbone(backbone or trained_on, device=device, image_only=True)
    if backbone.name != trained_on:
        raise CheckpointError(
            f"this {label} model was trained on backbone {trained_on!r}, not {backbone.name!r}: "
            f"load it with backbone {trained_on!r}"
        )
    return backbone


def load_pradot(
    path: str | os.PathLike,
    backbone: VisionLanguageBackbone | str | None = None,
    *,
    device: torch.device | str | None = None,
) -> PradotDetector:
    """Load a PRADOT checkpoint with its backbone (the one named in it when ``backbone`` is None or a
    name; a given backbone must be the one it was trained on)."""
    checkpoint = load_checkpoint(path)
    model, _ = model_from_checkpoint(checkpoint)
    return PradotDetector(model, checkpoint_backbone(checkpoint.meta, backbone, device, "PRADOT"), checkpoint.meta)
