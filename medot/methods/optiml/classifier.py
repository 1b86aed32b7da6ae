"""Classifiers from ``medot eval linear|finetune --save-models``: an encoder, a linear head and the
feature standardisation, saved as one medot checkpoint (safetensors + JSON) that the app's Classify
tab lists with its classes.

Checkpoint: tensors ``body.encoder.*`` (the encoder's ``state_dict``: frozen for a linear probe,
trained for fine-tuning), ``head.weight``/``head.bias``, ``feature_mean``/``feature_std``; metadata
``method`` (``linear-probe`` or ``finetune``), ``backbone`` (the ``--encoder`` it started from),
``classes``, ``arch``, ``image_size``, ``multilabel`` and the run's fraction, seed and test metrics.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from medot.checkpoint import Checkpoint, load_checkpoint, save_checkpoint
from medot.errors import CheckpointError
from medot.eval.probe import ProbeTask

CLASSIFIER_METHODS = ("linear-probe", "finetune")


class PooledGrey(nn.Module):
    """Grey ``[B, 1, S, S]`` in [0, 1] -> the encoder's normalisation -> pooled features ``[B, C]``."""

    def __init__(self, encoder: nn.Module) -> None:
        super().__init__()
        self.encoder = encoder

    def forward(self, grey: Tensor) -> Tensor:
        return self.encoder(self.encoder.normalize(grey)).mean(dim=(2, 3))


def centre_crop(image: Tensor, size: int) -> Tensor:
    """``[1, H, W]`` (short side ``size``) -> ``[1, size, size]`` from the centre."""
    h, w = image.shape[-2:]
    top, left = (h - size) // 2, (w - size) // 2
    return image[:, top : top + size, left : left + size]


def save_classifier(
    path: str | Path, task: ProbeTask, encoder: nn.Module, image_size: int, meta: dict[str, Any]
) -> Path:
    """Write ``task`` (its head and statistics) with ``encoder`` (the trained copy for fine-tuning)."""
    body = task.body if task.body is not None else PooledGrey(encoder)
    tensors = {f"body.{name}": t.detach().cpu().contiguous() for name, t in body.state_dict().items()}
    for name in ("head.weight", "head.bias", "feature_mean", "feature_std"):
        tensors[name] = task.state_dict()[name].detach().cpu().contiguous()
    full = {
        **meta,
        "method": "linear-probe" if task.body is None else "finetune",
        "classes": list(task.classes),
        "arch": encoder.arch,
        "image_size": image_size,
        "multilabel": task.multilabel,
    }
    return save_checkpoint(path, Checkpoint(tensors, full))


class ProbeClassifier:
    """A saved classifier, ready to predict class probabilities of grey images."""

    def __init__(self, path: str | Path, device: str = "cpu") -> None:
        from medot.methods.optiml.encoder import Encoder

        checkpoint = load_checkpoint(path)
        meta = checkpoint.meta
        if meta.get("method") not in CLASSIFIER_METHODS:
            raise CheckpointError(f"{path} is not a linear-probe / fine-tuned classifier (method {meta.get('method')!r})")
        self.meta = meta
        self.class_names = tuple(meta["classes"])
        self.image_size = int(meta["image_size"])
        body = PooledGrey(Encoder(meta["arch"], pretrained=False))
        task = ProbeTask(body, checkpoint.tensors["head.weight"].shape[1], self.class_names,
                         (torch.empty(0), torch.empty(0)), meta, bool(meta.get("multilabel")))
        task.load_state_dict(checkpoint.tensors)
        self.task = task.to(device).eval()

    def predict_proba(self, images: list[np.ndarray]) -> np.ndarray:
        """Grey (or RGB, averaged) ``[H, W(, 3)]`` arrays in [0, 1] -> ``[N, C]`` probabilities."""
        import torch.nn.functional as F

        batch = []
        for image in images:
            array = np.asarray(image, dtype=np.float32)
            grey = torch.from_numpy(array if array.ndim == 2 else array.mean(axis=2))[None]
            h, w = grey.shape[-2:]
            scale = self.image_size / min(h, w)
            size = (max(self.image_size, round(h * scale)), max(self.image_size, round(w * scale)))
            grey = F.interpolate(grey[None], size=size, mode="bilinear", align_corners=False, antialias=True)[0]
            batch.append(centre_crop(grey.clamp(0, 1), self.image_size))
        return self.task.probabilities(torch.stack(batch))
