"""Embeddings of a labelled folder before vs after pretraining, for the app's t-SNE / UMAP view.

"Before" is the encoder a pretraining run started from, rebuilt exactly: the same architecture and,
for the random-init ResNets, the same seeded initialisation (:func:`medot.methods.optiml.runner.build_task`
seeds first, then builds the encoder first); for ``lite``, its packaged ImageNet weights. "After"
is the checkpoint's encoder. Both embed the same images (pooled dense features, centre crop at the
pretraining size). The two encoders' spaces are unrelated, so each set gets its own projection
(:func:`medot.viz.manifold_figure` called once per set), not one joint projection.
"""

from __future__ import annotations

from pathlib import Path

import torch

from medot.checkpoint import load_checkpoint
from medot.eval.probe import load_labelled_splits
from medot.methods.optiml.classifier import PooledGrey, centre_crop
from medot.methods.optiml.data import load_grey
from medot.methods.optiml.encoder import Encoder
from medot.methods.optiml.task import load_task
from medot.train import seed_everything
from medot.viz import EmbeddingSet


@torch.no_grad()
def before_after_embeddings(model_path: str | Path, labelled: str | Path, max_images: int = 300) -> tuple[EmbeddingSet, EmbeddingSet]:
    """``(before, after)`` embedding sets of the training split of ``labelled`` (class folders:
    ``train/<class>/``), at most ``max_images`` images (the first by path within each class order)."""
    checkpoint = load_checkpoint(model_path)
    after = load_task(checkpoint.tensors, checkpoint.meta).model.encoder.eval()
    arch = checkpoint.meta["optiml"]["encoder"]
    seed = int(checkpoint.meta.get("pretraining", {}).get("seed", 0))
    seed_everything(seed)
    before = Encoder(arch).eval()
    size = int(checkpoint.meta["optiml"]["image_size"])
    splits = load_labelled_splits(labelled, seed=0)
    records = sorted(splits.train + splits.val, key=lambda r: (r.label, str(r.path)))[:max_images]
    images = torch.stack([centre_crop(load_grey(r.path, size), size) for r in records])
    classes = [r.class_name for r in records]
    sets = []
    for name, encoder in (("before", before), ("after", after)):
        body = PooledGrey(encoder)
        vectors = torch.cat([body(chunk) for chunk in images.split(32)])
        sets.append(EmbeddingSet(vectors, classes, modality=name, kind="image", text=[r.path.name for r in records]))
    return sets[0], sets[1]
