"""Tiny K-MaT checkpoints for the tests: one holding only the stored display artefacts (instant),
and one trained by :func:`medot.methods.kmat.runner.fit_method` on a tiny task (loadable by
:func:`medot.methods.kmat.predictor.load_kmat_predictor`)."""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F

from medot.backbones.base import VisionLanguageBackbone
from medot.checkpoint import Checkpoint, save_checkpoint
from medot.methods.kmat.losses import manifold_transport_loss
from medot.methods.kmat.runner import RunConfig, finish_run, fit_method
from medot.methods.prompt_learning.crossmodal import resolve_task
from medot.methods.prompt_learning.knowledge import embed_descriptions
from medot.train import FeatureCache

CLASSES = ["normal", "nodule", "opacity"]


def write_artefacts_checkpoint(
    path: Path, *, dim: int = 8, seed: int = 0, backbone: str = "lite", alpha: float = 0.2, epsilon: float = 0.1
) -> Path:
    """A ``kmat`` checkpoint with random unit w_H, w_L and anchors over :data:`CLASSES`, five
    description embeddings and the FGW plan solved at ``alpha``, ``epsilon`` (no prompt learner)."""
    generator = torch.Generator().manual_seed(seed)
    high, low = (F.normalize(torch.randn(3, dim, generator=generator), dim=-1) for _ in range(2))
    solved = manifold_transport_loss(high, low, alpha=alpha, epsilon=epsilon)
    tensors = {
        "artefacts.w_high": high, "artefacts.w_low": low,
        "artefacts.anchors_high": F.normalize(torch.randn(3, dim, generator=generator), dim=-1),
        "artefacts.anchors_low": F.normalize(torch.randn(3, dim, generator=generator), dim=-1),
        "artefacts.description_embeddings": torch.randn(5, dim, generator=generator),
        "artefacts.description_class": torch.tensor([0, 0, 1, 2, 2]),
        "artefacts.description_modality": torch.tensor([0, 1, 0, 0, 1]),
        "artefacts.fgw_plan": solved.plan,
    }
    meta = {"method": "kmat", "backbone": backbone, "class_names": CLASSES, "modalities": {"high": "ct", "low": "xray"},
            "hyper_parameters": {"fgw_alpha": alpha, "fgw_epsilon": epsilon}}
    return save_checkpoint(path, Checkpoint(tensors, meta))


def train_tiny_kmat(
    backbone: VisionLanguageBackbone, task_file: Path, out_dir: Path, cache_dir: Path, *, evaluated: bool = False
) -> Path:
    """K-MaT trained for one epoch on 2 shots per class of ``task_file``; returns its model file.
    ``evaluated``: also run the test evaluation that records ``metrics`` in it, as ``medot train`` does."""
    task = resolve_task(task_file)
    knowledge = embed_descriptions(backbone, task.descriptions, task.classes)
    run = RunConfig(shots=2, epochs=1, views=1, progress=False)
    fitted = fit_method(
        "kmat", backbone, task.high_end_data(2, 1), classes=task.classes, modalities=task.modalities,
        knowledge=knowledge, run=run, out_dir=out_dir, cache=FeatureCache(cache_dir),
    )
    if evaluated:
        finish_run("kmat", fitted, backbone, task, run, FeatureCache(cache_dir))
    return fitted.result.model_path
