"""Anomaly maps drawn over the image they score (an RGB PNG for people; the raw map goes to .npy).

Colours come from the perceptually uniform Inferno scale (plotly's copy of matplotlib's anchors,
interpolated linearly) on a fixed score range, ``[0, 1]`` by default: PRADOT's scores are
max-normalised costs in that range, so two overlays compare directly (no per-image stretching).
Each pixel blends image and colour with opacity ``max_alpha * t``, ``t`` the score's position in
the range, so normal regions stay readable.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image


def inferno(values: np.ndarray) -> np.ndarray:
    """``[...]`` values in [0, 1] -> ``[..., 3]`` RGB in [0, 1] on the Inferno scale."""
    from plotly.colors import hex_to_rgb, sequential

    anchors = np.asarray([hex_to_rgb(colour) for colour in sequential.Inferno], dtype=np.float32) / 255.0
    positions = np.linspace(0.0, 1.0, len(anchors))
    flat = np.clip(values, 0.0, 1.0).ravel()
    channels = [np.interp(flat, positions, anchors[:, c]) for c in range(3)]
    return np.stack(channels, axis=-1).reshape(*values.shape, 3).astype(np.float32)


def overlay(
    image: np.ndarray, anomaly_map: np.ndarray, *, score_range: tuple[float, float] = (0.0, 1.0), max_alpha: float = 0.7
) -> np.ndarray:
    """``HxWx3`` image in [0, 1] and ``HxW`` map -> ``HxWx3`` uint8 overlay (module docstring)."""
    if image.shape[:2] != anomaly_map.shape:
        raise ValueError(f"image {image.shape[:2]} and map {anomaly_map.shape} must have the same size")
    low, high = score_range
    level = np.clip((anomaly_map - low) / max(high - low, np.finfo(np.float32).eps), 0.0, 1.0)
    alpha = (max_alpha * level)[..., None]
    blended = (1.0 - alpha) * image + alpha * inferno(level)
    return np.round(255.0 * np.clip(blended, 0.0, 1.0)).astype(np.uint8)


def save_overlay(path: Path, image: np.ndarray, anomaly_map: np.ndarray) -> Path:
    """Write :func:`overlay` as a PNG at ``path`` (parents created)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(overlay(image, anomaly_map)).save(path, format="PNG")
    return path
