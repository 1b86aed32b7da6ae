"""One factory for every backbone name (see :mod:`medot.backbones`)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from medot.backbones.base import VisionLanguageBackbone
from medot.errors import BackboneUnavailableError

LITE = "lite"
BIOMEDCLIP = "biomedclip"
AUTO = "auto"


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


def create_backbone(name: str = AUTO, device: torch.device | str | None = None) -> VisionLanguageBackbone:
    """Build a frozen backbone by name on ``device`` (default: CUDA when present, else CPU)."""
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    name = resolve_auto(name.strip())
    if name == LITE:
        from medot.backbones.lite import load_lite

        backbone = load_lite()
    elif name == BIOMEDCLIP or name.startswith(("hf-hub:", "open_clip:", "local-dir:")):
        from medot.backbones.open_clip_backbone import load_open_clip

        backbone = load_open_clip(name)
    else:
        raise BackboneUnavailableError(
            f"unknown backbone {name!r}: use 'auto', 'lite', 'biomedclip', 'hf-hub:ORG/REPO', "
            "'open_clip:MODEL/PRETRAINED' or 'local-dir:PATH'"
        )
    return backbone.freeze().to(device)
