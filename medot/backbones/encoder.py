"""``encoder:PATH``: a self-supervised encoder checkpoint (OPTiML / VICReg / VICRegL) as a medot
image backbone.

The checkpoint is the pair ``PATH.safetensors`` + ``PATH.json`` that ``medot train optiml`` writes
as ``<out>/encoder`` (:func:`medot.methods.optiml.encoder.save_encoder`). It has no text tower, so
it is an :class:`~medot.backbones.base.ImageBackbone`, not a vision-language one: image-only
methods (PRADOT, PatchCore, ``medot eval linear|finetune``) accept it, methods that need text
(zero-shot prediction, K-MaT, prompt learning) refuse it with a one-line error.

``encode_image`` returns the spatial mean of the final dense map as the embedding and, as patch
tokens, the block outputs at strides 8/16/32 or the dense map itself (``dense``); preprocessing
is the one the encoder was trained with (its sidecar records size, mean and std).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch

from medot.backbones.base import ImageBackbone, ImageFeatures, Preprocess

PREFIX = "encoder:"


class EncoderBackbone(ImageBackbone):
    """A frozen pretrained encoder behind the image-backbone interface."""

    is_clinical = False

    def __init__(self, encoder: torch.nn.Module, meta: dict, name: str) -> None:
        super().__init__()
        from medot.methods.optiml.encoder import FEATURE_LAYERS

        self.encoder = encoder
        self.meta = meta
        self.name = name
        self.embed_dim = int(meta["channels"])
        pre = meta["preprocess"]
        self.preprocess = Preprocess(int(pre["image_size"]), tuple(pre["mean"]), tuple(pre["std"]), pre["interpolation"])
        self.feature_layers = tuple(layer for layer in FEATURE_LAYERS if layer in encoder.feature_layers)
        self.default_layers = tuple(layer for layer in ("stride8", "stride16") if layer in self.feature_layers) or ("dense",)
        #: the encoder file's hash: the feature cache keys entries by it, so retraining into the
        #: same PATH never serves stale features
        self.weights_sha256 = meta.get("tensors_sha256")

    def encode_image(self, images: torch.Tensor, layers: Sequence[str] | None = None) -> ImageFeatures:
        chosen = self._check_layers(layers)
        dense, maps = self.encoder.forward_features(images, chosen)
        features = ImageFeatures(embedding=dense.mean(dim=(2, 3)))
        for layer in chosen:
            features.patch_tokens[layer] = maps[layer].flatten(2).transpose(1, 2)
            features.grids[layer] = (maps[layer].shape[2], maps[layer].shape[3])
        return features


def load_encoder_backbone(name: str) -> EncoderBackbone:
    """``"encoder:PATH"`` -> the backbone (on the CPU, not yet frozen); PATH with or without suffix."""
    from medot.methods.optiml.encoder import load_encoder

    path = Path(name[len(PREFIX) :].strip()).expanduser()
    encoder, meta = load_encoder(path)
    return EncoderBackbone(encoder, meta, name)
