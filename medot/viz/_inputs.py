"""Input checks shared by the figure builders: arrays in, :class:`VisualizationError` out.

Vectors, matrices, images and maps may come as numpy arrays or torch tensors on any device (a
tensor is detached and copied to the CPU); every builder reads them as finite float64 arrays.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from medot.errors import MedotError


class VisualizationError(MedotError, ValueError):
    """A figure cannot be built from these inputs (wrong shapes, NaN values, mismatched labels)."""


def to_numpy(values: Any) -> np.ndarray:
    """``values`` as a numpy array; a tensor is detached, moved to the CPU, half floats widened."""
    if isinstance(values, torch.Tensor):
        values = values.detach().cpu()
        if values.dtype in (torch.float16, torch.bfloat16):
            values = values.float()
        return values.numpy()
    return np.asarray(values)


def as_finite(values: Any, name: str, ndim: int | tuple[int, ...]) -> np.ndarray:
    """Return ``values`` as a finite float64 array with ``ndim`` (or one of ``ndim``) dimensions."""
    array = to_numpy(values)
    allowed = (ndim,) if isinstance(ndim, int) else ndim
    if array.ndim not in allowed:
        wanted = " or ".join(f"{d}-D" for d in allowed)
        raise VisualizationError(f"{name} must be {wanted}, got shape {array.shape}.")
    if array.size == 0:
        raise VisualizationError(f"{name} is empty (shape {array.shape}).")
    if array.dtype.kind not in "biuf":
        raise VisualizationError(f"{name} must hold real numbers, got dtype {array.dtype}.")
    array = array.astype(np.float64, copy=False)
    if not np.isfinite(array).all():
        raise VisualizationError(
            f"{name} contains NaN or infinite values; check the computation that produced it."
        )
    return array


def as_labels(labels: Sequence[str], name: str, length: int) -> tuple[str, ...]:
    """Return ``labels`` as a tuple of ``length`` non-blank strings."""
    if isinstance(labels, str) or len(labels) != length:
        got = "a single string" if isinstance(labels, str) else f"{len(labels)} labels"
        raise VisualizationError(f"{name} needs one label per row ({length}), got {got}.")
    for label in labels:
        if not isinstance(label, str) or not label.strip():
            raise VisualizationError(f"{name} must be non-blank strings, got {label!r}.")
    return tuple(labels)


def as_finite_number(value: Any, name: str) -> float:
    """Return a finite Python float from a number or a one-element tensor/array."""
    array = as_finite(value, name, (0, 1))
    if array.size != 1:
        raise VisualizationError(f"{name} must be a single number, got shape {array.shape}.")
    return float(array.reshape(()))
