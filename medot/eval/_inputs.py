"""Input checks shared by the metrics: arrays in, plain-message :class:`MetricError` out.

Scores and labels may come as numpy arrays, torch tensors on any device, or sequences of either;
they are read as numpy arrays without a copy where the input already is one (a CPU tensor shares
its memory). Score maps keep float32 or float64 as given, so a float32 stack of many 224x224 maps
is never upcast.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
import torch

from medot.errors import MedotError

_KEPT_FLOAT_DTYPES = (np.float32, np.float64)
_REAL_KINDS = "biuf"
"""numpy dtype kinds accepted as real numbers: bool, signed and unsigned integer, float."""
_CHUNK_ELEMENTS = 1 << 20
"""Elements per block when a per-pixel temporary (e.g. ``searchsorted`` indices) is needed."""


class MetricError(MedotError, ValueError):
    """A metric cannot be computed from these inputs (wrong shapes, NaN scores, one class only)."""


def as_array(values: Any, name: str) -> np.ndarray:
    """Return ``values`` as a numpy array; tensors are detached and moved to the CPU first."""
    if isinstance(values, torch.Tensor):
        if values.dtype in (torch.float16, torch.bfloat16):
            values = values.float()
        return values.detach().cpu().numpy()
    if isinstance(values, (list, tuple)):
        if not values:
            raise MetricError(f"{name} is empty; pass at least one element.")
        try:
            return np.stack([as_array(item, name) for item in values])
        except ValueError as exc:
            raise MetricError(
                f"{name}: the elements have different shapes ({exc}); resize them to one shape."
            ) from exc
    return np.asarray(values)


def as_scores(values: Any, name: str, ndim: int) -> np.ndarray:
    """Return finite real scores with ``ndim`` dimensions, float32/float64 kept as given."""
    scores = as_array(values, name)
    if scores.ndim != ndim:
        expected = "[N]" if ndim == 1 else "[N, H, W] (stack 2-D maps; one map is maps[None])"
        raise MetricError(f"{name} must have shape {expected}, got {scores.shape}.")
    if scores.size == 0:
        raise MetricError(f"{name} is empty; pass at least one score.")
    if scores.dtype.kind not in _REAL_KINDS:
        raise MetricError(f"{name} must hold real numbers, got dtype {scores.dtype}.")
    if scores.dtype not in _KEPT_FLOAT_DTYPES:
        # float16 widens to float32; integers and bools go to float64, which holds them exactly.
        scores = scores.astype(np.float32 if scores.dtype.kind == "f" else np.float64)
    # min/max propagate NaN and see +-inf, without a boolean temporary the size of the input.
    if not (np.isfinite(scores.min()) and np.isfinite(scores.max())):
        raise MetricError(
            f"{name} contains NaN or infinite scores; check the method that produced them "
            "(e.g. a division by a zero norm) before evaluating."
        )
    return scores


def as_binary(values: Any, name: str, shape: tuple[int, ...]) -> np.ndarray:
    """Return 0/1 labels or masks of exactly ``shape`` as a bool array."""
    labels = as_array(values, name)
    if labels.shape != shape:
        raise MetricError(
            f"{name} has shape {labels.shape} but the scores have shape {shape}; "
            "pass one label per score (masks at the anomaly maps' resolution)."
        )
    if labels.dtype == np.bool_:
        return labels
    if labels.dtype.kind not in _REAL_KINDS:
        raise MetricError(f"{name} must be 0/1 or bool, got dtype {labels.dtype}.")
    if labels.dtype.kind in "iu":
        binary = labels.min() >= 0 and labels.max() <= 1
    else:
        binary = bool(np.logical_or(labels == 0, labels == 1).all())
    if not binary:
        raise MetricError(
            f"{name} must contain only 0 and 1 (values from {labels.min()} to {labels.max()}); "
            "divide 0/255 masks by 255, and resize masks with nearest-neighbour interpolation."
        )
    return labels.astype(bool)


def chunks(values: np.ndarray) -> Iterator[np.ndarray]:
    """Yield consecutive views of a 1-D array, each at most ``_CHUNK_ELEMENTS`` long."""
    for start in range(0, values.size, _CHUNK_ELEMENTS):
        yield values[start : start + _CHUNK_ELEMENTS]

