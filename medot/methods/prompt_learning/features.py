"""Image embeddings from the feature cache, and per-epoch batches that draw one cached view per image.

The image tower is frozen, so the embeddings of every training image are computed once
(:class:`medot.train.FeatureCache`) and an epoch costs only text-tower passes. Data augmentation
follows Tip-Adapter's recipe: ``V`` fixed augmented views per image are cached (view 0 is the image
itself; views ``1..V-1`` are random resized crops + flips seeded by the run seed), and each epoch
uses one view per image drawn from the epoch's generator (:class:`ViewBatches`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from medot.backbones.base import VisionLanguageBackbone
from medot.data.datasets import ImageRecord
from medot.train import EpochContext, FeatureCache, TensorBatches


@dataclass(frozen=True)
class LabelledEmbeddings:
    """Image embeddings ``[N, V, D]`` (``V`` views, view 0 un-augmented) and labels ``[N]``."""

    embeddings: Tensor
    labels: Tensor

    @property
    def plain(self) -> Tensor:
        """The un-augmented embeddings, ``[N, D]``."""
        return self.embeddings[:, 0]


def encode_records(
    backbone: VisionLanguageBackbone,
    records: Sequence[ImageRecord],
    cache: FeatureCache,
    *,
    views: int = 1,
    seed: int = 0,
    progress: bool = True,
) -> LabelledEmbeddings:
    """Global embeddings of ``views`` views of every record's image (from the cache where present)."""
    features = cache.encode(backbone, [record.path for record in records], views=views, seed=seed, progress=progress)
    labels = torch.tensor([record.label for record in records], dtype=torch.long)
    return LabelledEmbeddings(features.embeddings, labels)


class ViewBatches:
    """Batch factory for :meth:`medot.train.Trainer.fit`: each epoch, one view per image (drawn from
    the epoch generator, so resumed and repeated runs replay it), then shuffled mini-batches of
    ``(embedding [b, D], label [b])``."""

    def __init__(self, data: LabelledEmbeddings, batch_size: int) -> None:
        self.data = data
        self.batch_size = batch_size

    def __call__(self, context: EpochContext):
        count, views = self.data.embeddings.shape[:2]
        chosen = torch.randint(views, (count,), generator=context.generator)
        embeddings = self.data.embeddings[torch.arange(count), chosen]
        return TensorBatches(embeddings, self.data.labels, batch_size=self.batch_size)(context)
