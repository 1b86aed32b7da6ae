"""One factory for every backbone name (see :mod:`medot.backbones`)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from medot.backbones.base import VisionLanguageBackbone
from medot.errors import BackboneUnavailableError

LITE = "lite"
BIOMEDCLIP = "biomedclip"
AUTO = "auto"
ENCODER_PREFIX = "encoder:"


@dataclass(frozen=True)
class BackboneStatus:
    """Whether a backbone can be loaded here, and if not, why."""

    name: str
    available: bool
    detail: str


def available_backbones() -> list[BackboneStatus]:
    """Status of the named backbones on this machine (checks files only; downloads nothing)."""
    from medot.backbones.lite import lite_status
    from medot.backbones.open_clip_backbone import biomedclip_status

    return [biomedclip_status(), lite_status()]


def resolve_auto(name: str) -> str:
    """``"auto"`` -> ``"biomedclip"`` when its files are here, else ``"lite"``; other names unchanged."""
    if name != AUTO:
        return name
    from medot.backbones.open_clip_backbone import biomedclip_status

    return BIOMEDCLIP if biomedclip_status().available else LITE


def default_device(name: str | None = None) -> str:
    """``name`` as given, or for ``None`` / ``""`` / ``"auto"``: CUDA when present, else CPU."""
    if name and name != "auto":
        return name
    return "cuda" if torch.cuda.is_available() else "cpu"


def create_backbone(
    name: str = AUTO, device: torch.device | str | None = None, *, image_only: bool = False
) -> VisionLanguageBackbone:
    """Build a frozen backbone by name on ``device`` (default: CUDA when present, else CPU).

    ``encoder:PATH`` (a pretrained image encoder, :mod:`medot.backbones.encoder`) has no text tower:
    it is accepted only when the caller needs the image side alone (``image_only=True``, which
    may then return an :class:`~medot.backbones.base.ImageBackbone`) and refused otherwise."""
    if device is None:
        device = default_device()
    name = resolve_auto(name.strip())
    if name.startswith(ENCODER_PREFIX):
        if not image_only:
            raise BackboneUnavailableError(
                f"{name!r} is an image-only encoder (no text tower): this command needs a vision-language "
                "backbone ('lite', 'biomedclip', an open_clip model); encoders serve PRADOT, PatchCore and "
                "'medot eval linear|finetune'"
            )
        from medot.backbones.encoder import load_encoder_backbone

        return load_encoder_backbone(name).freeze().to(device)
    if name == LITE:
        from medot.backbones.lite import load_lite

        backbone = load_lite()
    elif name == BIOMEDCLIP or name.startswith(("hf-hub:", "open_clip:", "local-dir:")):
        from medot.backbones.open_clip_backbone import load_open_clip

        backbone = load_open_clip(name)
    else:
        raise BackboneUnavailableError(
            f"unknown backbone {name!r}: use 'auto', 'lite', 'biomedclip', 'hf-hub:ORG/REPO', "
            "'open_clip:MODEL/PRETRAINED', 'local-dir:PATH' or (image-only methods) 'encoder:PATH'"
        )
    return backbone.freeze().to(device)
