r"""Anomaly-map overlays: the map coloured by a perceptual colormap and blended over the image.

Steps, for an image :math:`I` ``[H, W]`` or ``[H, W, 3]`` (float in :math:`[0, 1]`, or uint8) and
an anomaly map :math:`A` of any size:

1. **Resize.** :math:`A` is resized bilinearly to ``[H, W]`` (pixel-centre aligned, i.e. PyTorch's
   ``align_corners=False``; no anti-aliasing), as the methods upsample their patch-level maps.
   Everything below acts on the resized map.
2. **Normalise** to :math:`[0, 1]`: with ``value_range=None``, min–max per image,
   :math:`\hat A = (A - \min A)/(\max A - \min A)` (a constant map gives :math:`\hat A = 0`): the
   colours then show where this image is most anomalous, not how anomalous it is, so two images'
   colours are not comparable. With ``value_range=(a, b)`` (a fixed range chosen by the caller,
   e.g. the score range over a test set), :math:`\hat A = \mathrm{clip}((A - a)/(b - a), 0, 1)`,
   comparable across images.
3. **Colour.** :math:`C = \mathrm{LUT}[\mathrm{round}(255\,\hat A)]`, a 256-entry table sampled
   from a plotly colour scale (default ``"Inferno"``, perceptually uniform; any name plotly knows,
   ``"_r"`` reverses).
4. **Blend.** :math:`O = (1 - \beta)\,I + \beta\,C` with opacity :math:`\beta \in [0, 1]`
   (grey images are repeated to three channels), rounded to uint8: :math:`\beta = 0` gives the
   image, :math:`\beta = 1` the coloured map.
5. **Threshold** (optional, in the map's own units, like ``value_range``): the region
   :math:`R = \{A \ge t\}`. ``threshold_style="outline"`` paints the inner boundary of :math:`R`
   (pixels of :math:`R` with a 4-neighbour outside :math:`R`; the image border does not count as
   outside) in ``outline_colour``; ``"mask"`` blends the colour only inside :math:`R` and leaves
   the image unchanged elsewhere.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Any, Literal

import numpy as np
from plotly.colors import sample_colorscale, unlabel_rgb
from plotly.exceptions import PlotlyError
from skimage.segmentation import find_boundaries
from skimage.transform import resize

from medot.viz._inputs import VisualizationError, as_finite, as_finite_number, to_numpy

ThresholdStyle = Literal["outline", "mask"]
DEFAULT_COLORMAP = "Inferno"
DEFAULT_OUTLINE_COLOUR = (0, 255, 255)
LUT_SIZE = 256


@lru_cache(maxsize=32)
def colormap_lut(name: str = DEFAULT_COLORMAP) -> np.ndarray:
    """The ``[256, 3]`` uint8 table of plotly colour scale ``name``, sampled at ``k / 255``."""
    try:
        colours = sample_colorscale(name, np.linspace(0.0, 1.0, LUT_SIZE).tolist(), colortype="rgb")
    except (PlotlyError, ValueError, KeyError) as exc:
        raise VisualizationError(
            f"Unknown colormap {name!r}; use a plotly colour scale name such as 'Inferno', "
            "'Viridis', 'Magma' or 'Cividis'."
        ) from exc
    lut = np.rint(np.array([unlabel_rgb(c) for c in colours], dtype=np.float64))
    lut = np.clip(lut, 0, 255).astype(np.uint8)
    lut.setflags(write=False)
    return lut


def resize_map(anomaly_map: Any, shape: tuple[int, int]) -> np.ndarray:
    """Resize a 2-D map bilinearly (pixel-centre aligned, no anti-aliasing) to ``shape``."""
    values = as_finite(np.squeeze(to_numpy(anomaly_map)), "anomaly_map", 2)
    if values.shape == tuple(shape):
        return values
    return resize(values, shape, order=1, mode="edge", anti_aliasing=False, preserve_range=True)


def normalize_map(
    values: np.ndarray, value_range: tuple[float, float] | None = None
) -> np.ndarray:
    """To ``[0, 1]``: min–max per image, or ``value_range=(a, b)`` clipped (module docstring)."""
    if value_range is None:
        low, high = float(values.min()), float(values.max())
        if high == low:
            return np.zeros_like(values)
    else:
        low, high = (float(v) for v in value_range)
        if not (np.isfinite(low) and np.isfinite(high) and high > low):
            raise VisualizationError(
                "value_range must be two finite numbers (low, high) with low < high, "
                f"got {value_range}."
            )
    return np.clip((values - low) / (high - low), 0.0, 1.0)


def threshold_outline(values: np.ndarray, threshold: float) -> np.ndarray:
    """Inner boundary of ``{values >= threshold}``: region pixels with a 4-neighbour outside it."""
    return find_boundaries(values >= threshold, connectivity=1, mode="inner")


def anomaly_overlay(
    image: Any,
    anomaly_map: Any,
    *,
    opacity: float = 0.5,
    colormap: str = DEFAULT_COLORMAP,
    value_range: tuple[float, float] | None = None,
    threshold: float | None = None,
    threshold_style: ThresholdStyle = "outline",
    outline_colour: tuple[int, int, int] = DEFAULT_OUTLINE_COLOUR,
) -> np.ndarray:
    """Blend the coloured, normalised anomaly map over the image; returns ``[H, W, 3]`` uint8.

    The steps and the normalisation rule are in the module docstring.
    """
    rgb = _as_rgb(image)
    outline = _as_colour(outline_colour)
    if threshold is not None:
        threshold = as_finite_number(threshold, "threshold")
    if not 0.0 <= opacity <= 1.0:
        raise VisualizationError(f"opacity must be in [0, 1], got {opacity}.")
    if threshold_style not in ("outline", "mask"):
        raise VisualizationError(
            f"threshold_style must be 'outline' or 'mask', got {threshold_style!r}."
        )
    values = resize_map(anomaly_map, rgb.shape[:2])
    index = np.rint(normalize_map(values, value_range) * (LUT_SIZE - 1)).astype(np.intp)
    colour = colormap_lut(colormap)[index]
    weight = np.full(values.shape, float(opacity))
    if threshold is not None and threshold_style == "mask":
        weight[values < threshold] = 0.0
    blended = (1.0 - weight[..., None]) * rgb + weight[..., None] * (colour / 255.0)
    out = np.rint(np.clip(blended, 0.0, 1.0) * 255.0).astype(np.uint8)
    if threshold is not None and threshold_style == "outline":
        out[threshold_outline(values, threshold)] = outline
    return out


def save_overlay_png(
    path: str | Path, image: Any, anomaly_map: Any, **overlay_options: Any
) -> Path:
    """Write ``anomaly_overlay(image, anomaly_map, **overlay_options)`` as a PNG at ``path``."""
    from PIL import Image

    path = Path(path)
    if path.suffix.lower() != ".png":
        raise VisualizationError(f"{path} must end in .png; the overlay is written as PNG.")
    if not path.parent.is_dir():
        raise VisualizationError(f"Folder {path.parent} does not exist; create it first.")
    overlay = anomaly_overlay(image, anomaly_map, **overlay_options)
    Image.fromarray(overlay).save(path, format="PNG")
    return path


def _as_rgb(image: Any) -> np.ndarray:
    """``[H, W, 3]`` float64 in [0, 1] from a grey or RGB image, float in [0, 1] or uint8."""
    raw = to_numpy(image)
    is_uint8 = raw.dtype == np.uint8
    array = as_finite(raw, "image", (2, 3))
    if array.ndim == 3 and array.shape[2] == 1:
        array = array[..., 0]
    if array.ndim == 3 and array.shape[2] != 3:
        raise VisualizationError(f"image must be [H, W] or [H, W, 3], got shape {array.shape}.")
    if is_uint8:
        array = array / 255.0
    elif array.min() < 0.0 or array.max() > 1.0:
        raise VisualizationError(
            f"A float image must lie in [0, 1], got values from {array.min():.4g} to "
            f"{array.max():.4g}; scale it (e.g. MedicalImage.rgb()) or pass uint8."
        )
    return np.repeat(array[..., None], 3, axis=2) if array.ndim == 2 else array


def _as_colour(colour: tuple[int, int, int]) -> np.ndarray:
    values = np.asarray(colour)
    valid = values.shape == (3,) and values.dtype.kind in "iu"
    if not valid or values.min() < 0 or values.max() > 255:
        raise VisualizationError(
            f"outline_colour must be three integers in 0..255, got {colour!r}."
        )
    return values.astype(np.uint8)
