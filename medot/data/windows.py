"""Display windows for grayscale DICOM and the facts a reader wants beside the image.

A window (centre :math:`c`, width :math:`w`) maps modality values :math:`x` (Hounsfield units for
CT, after the rescale :math:`x = m\\,s + b`) to display values :math:`y \\in [0, 1]` by the LINEAR
function of PS3.3 C.11.2.1.2.1:

.. math::

    y = \\begin{cases} 0 & x \\le c - \\tfrac12 - \\tfrac{w-1}{2} \\\\
    1 & x > c - \\tfrac12 + \\tfrac{w-1}{2} \\\\
    \\frac{x - (c - \\tfrac12)}{w - 1} + \\tfrac12 & \\text{otherwise,} \\end{cases}
    \\qquad w \\ge 1.

:func:`window_presets` offers the file's own window (its first Window Centre / Width pair, or
the min--max of the frame when it stores none) and, for CT, the usual chest presets in HU
(:data:`CT_PRESETS`; centre / width as taught in radiology: lung -600 / 1500, mediastinum
40 / 400, bone 400 / 1800). :func:`dicom_summary` turns :attr:`medot.data.io.MedicalImage.metadata`
into labelled rows for a metadata panel.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

#: CT window presets, name -> (centre, width) in HU
CT_PRESETS: dict[str, tuple[float, float]] = {
    "lung": (-600.0, 1500.0),
    "mediastinum": (40.0, 400.0),
    "bone": (400.0, 1800.0),
}
FILE_WINDOW = "file's own"


def apply_window(values: np.ndarray, center: float, width: float) -> np.ndarray:
    """The LINEAR window of PS3.3 C.11.2.1.2.1 onto [0, 1] (float32); ``width`` must be >= 1."""
    if not width >= 1.0:
        raise ValueError(f"a window width must be at least 1 (PS3.3 C.11.2.1.2.1), not {width}")
    x = np.asarray(values, dtype=np.float64)
    if width == 1.0:  # the limit of the ramp: a step at c - 1/2
        return (x > center - 0.5).astype(np.float32)
    return np.clip((x - (center - 0.5)) / (width - 1.0) + 0.5, 0.0, 1.0).astype(np.float32)


def window_presets(metadata: Mapping[str, Any]) -> dict[str, tuple[float, float] | None]:
    """Preset name -> (centre, width), ``None`` standing for the file's own display (its window, or
    min--max without one). CT presets only for CT (their units are HU) and only when the image is
    grayscale with a rescale to HU."""
    presets: dict[str, tuple[float, float] | None] = {FILE_WINDOW: None}
    if metadata.get("modality") == "CT" and metadata.get("modality_transform") in ("rescale", "modality LUT"):
        presets.update(CT_PRESETS)
    return presets


def _number(value: Any) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


def dicom_summary(metadata: Mapping[str, Any]) -> list[tuple[str, str]]:
    """``(field, value)`` rows for a metadata panel: modality, body part, photometric
    interpretation, size, pixel spacing, rescale, the window applied, frame."""
    rows: list[tuple[str, str]] = []

    def add(name: str, value: Any) -> None:
        if value not in (None, "", []):
            rows.append((name, value if isinstance(value, str) else _number(value)))

    add("Modality", metadata.get("modality"))
    add("Body part", metadata.get("body_part"))
    add("Photometric interpretation", metadata.get("photometric_interpretation"))
    if metadata.get("rows") and metadata.get("columns"):
        add("Size (rows × columns)", f"{metadata['rows']} × {metadata['columns']}")
    spacing = metadata.get("pixel_spacing")
    if spacing:
        add("Pixel spacing (mm, row × column)", " × ".join(_number(float(s)) for s in spacing))
    if metadata.get("modality_transform") == "rescale":
        add("Rescale (slope, intercept)", f"{_number(metadata['rescale_slope'])}, {_number(metadata['rescale_intercept'])}")
    else:
        add("Modality transform", metadata.get("modality_transform"))
    voi = metadata.get("voi_transform")
    if "window_center" in metadata and str(voi).startswith("window"):
        add("Window applied (centre / width)",
            f"{_number(metadata['window_center'])} / {_number(metadata['window_width'])}"
            + (" (chosen)" if voi == "window (chosen)" else " (the file's)"))
    else:
        add("Window applied", voi)
    frames = int(metadata.get("number_of_frames") or 1)
    if frames > 1:
        add("Frame", f"{int(metadata.get('frame_index', 0)) + 1} of {frames}")
    return rows


def preset_window(name: str | None) -> tuple[float, float] | None:
    """The (centre, width) of a preset name; ``None`` for the file's own display (or no name)."""
    if name in (None, "", FILE_WINDOW):
        return None
    if name not in CT_PRESETS:
        raise ValueError(f"unknown window preset {name!r}; choose {FILE_WINDOW!r} or one of {', '.join(CT_PRESETS)}")
    return CT_PRESETS[name]
