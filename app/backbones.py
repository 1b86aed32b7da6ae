"""Backbones are loaded once per name and shared by every request."""

from __future__ import annotations

import threading

from medot.backbones import VisionLanguageBackbone, create_backbone, resolve_auto


class BackboneCache:
    """Thread-safe lazy cache: the first request for a name loads it, later ones reuse it."""

    def __init__(self, device: str | None = None) -> None:
        self._device = device
        self._loaded: dict[str, VisionLanguageBackbone] = {}
        self._lock = threading.Lock()

    def get(self, name: str) -> VisionLanguageBackbone:
        name = resolve_auto(name)
        with self._lock:
            if name not in self._loaded:
                self._loaded[name] = create_backbone(name, device=self._device)
            return self._loaded[name]


def describe(backbone: VisionLanguageBackbone) -> str:
    """One line for the screen saying which backbone is in use and whether it is clinical."""
    if backbone.is_clinical:
        return f"Backbone: **{backbone.name}** (biomedical vision-language model)."
    return (
        f"Backbone: **{backbone.name}** - the embedded offline default, built from general-purpose "
        "ImageNet/sentence weights. **Not a clinical model**: for exploring the methods only."
    )
