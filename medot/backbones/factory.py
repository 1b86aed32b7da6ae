"""One factory for every backbone name (see :mod:`medot.backbones`).

Importing this module imports no model library: the names, statuses and ``"auto"`` come from
:mod:`medot.backbones.status` (file checks only) and torch is imported when a backbone is built.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from medot.backbones.status import (  # noqa: F401 - re-exported for the callers of the factory
    AUTO,
    BIOMEDCLIP,
    ENCODER_PREFIX,
    LITE,
    BackboneStatus,
    available_backbones,
    check_loadable,
    resolve_auto,
)
from medot.errors import BackboneUnavailableError, MedotError

if TYPE_CHECKING:
    import torch

    from medot.backbones.base import VisionLanguageBackbone


def default_device(name: str | None = None) -> str:
    """``name`` as given (checked by :func:`check_device`), or for ``None`` / ``""`` / ``"auto"``:
    CUDA when present, else CPU."""
    if name and name != "auto":
        return check_device(name)
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def check_device(name: str) -> str:
    """``name`` when it is a torch device this machine has, else a one-line :class:`MedotError`
    (a misspelt name, CUDA without a usable GPU, a GPU index past the last one) instead of the
    traceback torch would raise on the first ``.to(name)``."""
    import torch

    try:
        device = torch.device(name)
    except (RuntimeError, ValueError, TypeError):
        raise MedotError(f"--device {name!r} is not a torch device: use auto, cpu, cuda or cuda:N") from None
    if device.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise MedotError(f"--device {name}: no CUDA GPU is usable on this machine; use --device cpu (or auto)")
        if device.index is not None and device.index >= count:
            raise MedotError(f"--device {name}: this machine has {count} GPU(s), cuda:0 to cuda:{count - 1}")
    return name


def create_backbone(
    name: str = AUTO, device: torch.device | str | None = None, *, image_only: bool = False
) -> VisionLanguageBackbone:
    """Build a frozen backbone by name on ``device`` (default: CUDA when present, else CPU).

    ``encoder:PATH`` (a pretrained image encoder, :mod:`medot.backbones.encoder`) has no text tower:
    it is accepted only when the caller needs the image side alone (``image_only=True``, which
    may then return an :class:`~medot.backbones.base.ImageBackbone`) and refused otherwise."""
    name = check_loadable(name)  # unknown names and missing files fail here, before torch is imported
    if name.startswith(ENCODER_PREFIX) and not image_only:
        raise BackboneUnavailableError(
            f"{name!r} is an image-only encoder (no text tower): this command needs a vision-language "
            "backbone ('lite', 'biomedclip', an open_clip model); encoders serve PRADOT, PatchCore and "
            "'medot eval linear|finetune'"
        )
    device = default_device(device)
    if name.startswith(ENCODER_PREFIX):
        from medot.backbones.encoder import load_encoder_backbone

        return load_encoder_backbone(name).freeze().to(device)
    if name == LITE:
        from medot.backbones.lite import load_lite

        backbone = load_lite()
    else:  # check_loadable let through only open_clip names
        from medot.backbones.open_clip_backbone import load_open_clip

        backbone = load_open_clip(name)
    return backbone.freeze().to(device)
