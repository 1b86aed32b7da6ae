"""A calibrated anomaly map as one picture a reader can take in: the image, the map over it with the
predicted region outlined, and a colour bar whose units are written on it.

The map is expected on a normal-referenced scale (:meth:`medot.eval.calibration.NormalCalibration.pixel_scale`:
1 = the 99th percentile of normal pixels), coloured on the fixed range ``[0, vmax]`` (default 2)
so that colours mean the same in every image and for every method; the region ``{map >= threshold}``
(default 1, the calibrated pixel threshold) is outlined (:func:`medot.viz.anomaly_overlay`).
"""

from __future__ import annotations

from typing import Any

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from medot.viz.overlay import DEFAULT_COLORMAP, anomaly_overlay, colormap_lut

BAR_WIDTH = 18
LABEL_WIDTH = 64
GAP = 8


def colour_bar(height: int, vmax: float, unit: str, *, threshold: float | None = None,
               colormap: str = DEFAULT_COLORMAP) -> np.ndarray:
    """``[height, BAR_WIDTH + LABEL_WIDTH, 3]`` uint8: the colour scale ``[0, vmax]`` (top = ``vmax``)
    with tick labels at 0, the threshold and ``vmax`` (``"≥"``: values above are clipped) and ``unit``."""
    lut = colormap_lut(colormap)
    rows = np.linspace(1.0, 0.0, height)
    bar = np.repeat(lut[np.rint(rows * (len(lut) - 1)).astype(int)][:, None, :], BAR_WIDTH, axis=1)
    canvas = Image.new("RGB", (BAR_WIDTH + LABEL_WIDTH, height), (255, 255, 255))
    canvas.paste(Image.fromarray(bar), (0, 0))
    draw = ImageDraw.Draw(canvas)
    font = ImageFont.load_default()
    ticks = [(vmax, f">={vmax:g}"), (0.0, "0")]
    if threshold is not None and 0.0 < threshold < vmax:
        ticks.append((threshold, f"{threshold:g}"))
    label_rows = []  # (top, bottom) of each tick label
    for value, text in ticks:
        y = int(round((1.0 - value / vmax) * (height - 1)))
        draw.line([(BAR_WIDTH, y), (BAR_WIDTH + 4, y)], fill=(0, 0, 0))
        top = min(max(0, y - 5), height - 12)
        draw.text((BAR_WIDTH + 6, top), text, fill=(0, 0, 0), font=font)
        label_rows.append((top, top + 12))
    # the unit goes in the widest free gap between tick labels (at the middle it covered the
    # calibrated threshold 1 of the default [0, 2] scale)
    lines = unit.split("\n")
    edges = sorted(label_rows)
    gaps = [(edges[i][1], edges[i + 1][0]) for i in range(len(edges) - 1)]
    start, end = max(gaps, key=lambda gap: gap[1] - gap[0])
    first = max(start, (start + end - 12 * len(lines)) // 2)
    for line, text in enumerate(lines):
        draw.text((BAR_WIDTH + 6, first + 12 * line), text, fill=(60, 60, 60), font=font)
    return np.asarray(canvas)


def anomaly_panel(image: Any, anomaly_map: Any, *, vmax: float = 2.0, threshold: float | None = 1.0,
                  opacity: float = 0.5, unit: str = "x normal\np99", colormap: str = DEFAULT_COLORMAP) -> np.ndarray:
    """``[H, 2 W + GAP + bar, 3]`` uint8: the image, the outlined overlay on ``[0, vmax]``, the colour bar."""
    overlay = anomaly_overlay(image, anomaly_map, opacity=opacity, colormap=colormap, value_range=(0.0, vmax),
                              threshold=threshold)
    height, width = overlay.shape[:2]
    original = anomaly_overlay(image, np.zeros((height, width), np.float32), opacity=0.0)
    bar = colour_bar(height, vmax, unit, threshold=threshold, colormap=colormap)
    spacer = np.full((height, GAP, 3), 255, np.uint8)
    return np.concatenate([original, spacer, overlay, spacer, bar], axis=1)
