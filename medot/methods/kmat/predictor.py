"""Rebuild a trained prompt learner from its checkpoint and classify images of either modality.

``load_kmat_predictor(path, backbone)`` reads a model checkpoint written by ``medot train kmat``
(K-MaT or one of its trained baselines: CoOp, CoCoOp, KgCoOp, BiomedCoOp), rebuilds the
:class:`~medot.methods.prompt_learning.prompts.PromptLearner` from the metadata, loads the learned
context (and meta-network) and returns a :class:`PromptPredictor`. Low-end images are scored
against the low-end prompts :math:`w_{i,L}`, high-end images against :math:`w_{i,H}`.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from medot.backbones.base import VisionLanguageBackbone
from medot.checkpoint import load_checkpoint
from medot.data.io import MedicalImage
from medot.data.modality import modality_side
from medot.errors import CheckpointError
from medot.methods.kmat.runner import TRAINED_METHODS
from medot.methods.prompt_learning.prompts import HIGH, LOW, PromptLearner

PROMPTS_PREFIX = "prompts."


class PromptPredictor:
    """Class probabilities from a trained prompt learner; ``modality`` is ``"high"`` / ``"low"`` or a
    modality name of the task (e.g. ``"ct"`` / ``"xray"``)."""

    def __init__(self, prompts: PromptLearner, meta: dict[str, Any]) -> None:
        self.prompts = prompts.eval()
        self.meta = meta
        self.method: str = meta["method"]
        self.class_names: tuple[str, ...] = tuple(meta["class_names"])
        modalities = meta["modalities"]
        self.modalities: tuple[str, str] = (modalities["high"], modalities["low"])
        self.logit_scale = float(meta["logit_scale"])

    @property
    def backbone(self) -> VisionLanguageBackbone:
        return self.prompts.backbone

    def modality_index(self, modality: str) -> int:
        side = modality_side(modality, self.modalities, f"this {self.method} model")
        return HIGH if side == "high" else LOW

    @torch.no_grad()
    def logits(self, image_embedding: Tensor, modality: str) -> Tensor:
        """``[B, C]`` logits of image embeddings against the prompts of ``modality``."""
        return self.prompts.logits(image_embedding, self.modality_index(modality), self.logit_scale)

    @torch.no_grad()
    def predict_proba(self, images: Sequence[MedicalImage | np.ndarray | Image.Image], modality: str) -> Tensor:
        """``[B, C]`` class probabilities (CPU, float32), columns in :attr:`class_names` order."""
        arrays = [image.rgb() if isinstance(image, MedicalImage) else image for image in images]
        pixels = self.backbone.transform_batch(arrays)
        embedding = self.backbone.encode_image(pixels, layers=()).embedding
        return self.logits(embedding, modality).softmax(-1).float().cpu()


def load_kmat_predictor(path: str | os.PathLike[str], backbone: VisionLanguageBackbone) -> PromptPredictor:
    """A :class:`PromptPredictor` from the model checkpoint at ``path`` on ``backbone`` (which must be
    the backbone it was trained with)."""
    checkpoint = load_checkpoint(path, device=backbone.device)
    meta = checkpoint.meta
    if meta.get("method") not in TRAINED_METHODS or "prompt_learner" not in meta:
        raise CheckpointError(
            f"{path} is a {meta.get('method')!r} checkpoint, not one of {', '.join(TRAINED_METHODS)} "
            "written by `medot train kmat`"
        )
    if meta["backbone"] != backbone.name:
        raise CheckpointError(
            f"{path} was trained on backbone {meta['backbone']!r}; load it with that backbone, not {backbone.name!r}"
        )
    prompts = PromptLearner(backbone, meta["class_names"], **meta["prompt_learner"])
    learned = {
        name[len(PROMPTS_PREFIX) :]: tensor
        for name, tensor in checkpoint.tensors.items()
        if name.startswith(PROMPTS_PREFIX)
    }
    expected = {name: parameter for name, parameter in prompts.named_parameters() if parameter.requires_grad}
    wrong = sorted(set(expected) ^ set(learned)) + sorted(
        name for name in expected.keys() & learned.keys() if expected[name].shape != learned[name].shape
    )
    if wrong:
        raise CheckpointError(f"{path} does not fit a {meta['method']} prompt learner: mismatched tensors {wrong}")
    with torch.no_grad():
        for name, parameter in expected.items():
            parameter.copy_(learned[name])
    return PromptPredictor(prompts, meta)

