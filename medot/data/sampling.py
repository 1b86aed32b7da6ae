"""Seeded, class-stratified k-shot sampling of indexed images."""

from __future__ import annotations

import zlib
from collections.abc import Iterable

import numpy as np

from medot.data.datasets import ImageRecord
from medot.errors import DatasetLayoutError, MedotError


def sample_k_shot(records: Iterable[ImageRecord], k: int, seed: int) -> list[ImageRecord]:
    """``k`` images of every class, the same ones for the same ``seed`` whatever the input order.

    Each class (records sharing a ``class_name``) is sorted by path and drawn from its own
    generator seeded by ``(seed, crc32(class name))``, taking the first ``k`` of one permutation;
    a class's draw therefore ignores the other classes, and for a fixed seed the k-shot set is
    contained in the (k+1)-shot set. The result is ordered by label, class name, then draw order.
    """
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
        raise MedotError(f"k={k!r} shots: k must be a positive integer")
    if seed < 0:
        raise MedotError(f"seed={seed}: use a non-negative integer seed")
    by_class: dict[str, list[ImageRecord]] = {}
    for record in records:
        by_class.setdefault(record.class_name, []).append(record)
    if not by_class:
        raise DatasetLayoutError("cannot sample k-shot examples from an empty dataset")
    short = {name: len(group) for name, group in by_class.items() if len(group) < k}
    if short:
        detail = ", ".join(f"{name!r} has {count}" for name, count in sorted(short.items()))
        raise DatasetLayoutError(f"{k}-shot sampling needs {k} images per class, but class {detail}")
    chosen: list[ImageRecord] = []
    for name in sorted(by_class, key=lambda name: (min(r.label for r in by_class[name]), name)):
        group = sorted(by_class[name], key=lambda record: str(record.path))
        rng = np.random.default_rng([seed, zlib.crc32(name.encode("utf-8"))])
        chosen.extend(group[i] for i in rng.permutation(len(group))[:k])
    return chosen
