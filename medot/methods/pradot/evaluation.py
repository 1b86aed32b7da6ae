"""Benchmark PRADOT and its PatchCore baseline on one anomaly class, on the same cached features.

Metrics (:mod:`medot.eval`): image AUROC of the image scores, pixel AUROC of the maps, AU-PRO up to
FPR 0.3 (MVTec AD) and up to FPR 0.05 (stricter). Localisation metrics use the normal test images
and the anomalous ones that have a mask; a metric the test set cannot define (one class only, no
mask) is ``None``. With ``ot_score=True`` PRADOT's per-image OT cost is also evaluated as an image
score (``image_auroc_ot``); it solves one ``[HW, n HW]`` Sinkhorn problem per image and member
(at ``stride8`` with 16 prototypes per cell, 784 x 12,544), so it is off by default.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from medot.backbones.base import VisionLanguageBackbone
from medot.eval import MetricError, au_pro, image_auroc, pixel_auroc
from medot.methods.pradot.config import PatchCoreConfig, PradotConfig
from medot.methods.pradot.data import AnomalySplits, view_masks
from medot.methods.pradot.patchcore import PatchCoreModel
from medot.methods.pradot.torch_model import PradotModel
from medot.methods.pradot.training import PradotTrainResult, build_model, encode_tokens, train_pradot
from medot.train import FeatureCache

FPR_LIMITS = (0.3, 0.05)
METRIC_NAMES = ("image_auroc", "pixel_auroc", "au_pro@0.3", "au_pro@0.05")
SCORING_CHUNK = 16
"""Test images scored at once (bounds the memory of the per-member maps)."""

Scorer = Callable[[Mapping[str, torch.Tensor]], tuple[torch.Tensor, torch.Tensor]]


@dataclass
class ClassBenchmark:
    """What :func:`benchmark_class` measured: one row per method, and the trained PRADOT model."""

    rows: list[dict[str, Any]]
    model: PradotModel
    training: PradotTrainResult


def anomaly_metrics(
    maps: np.ndarray, scores: np.ndarray, labels: np.ndarray, masks: np.ndarray, localisable: np.ndarray
) -> dict[str, float | None]:
    """Image AUROC, pixel AUROC and AU-PRO at :data:`FPR_LIMITS` (``None`` where undefined).

    ``localisable`` ``[N]`` marks the images whose masks are ground truth (normal images, and
    anomalous images that have a mask).
    """
    metrics: dict[str, float | None] = dict.fromkeys(METRIC_NAMES)
    metrics["image_auroc"] = _defined(lambda: image_auroc(scores, labels))
    if bool(localisable.any()):
        chosen_maps, chosen_masks = maps[localisable], masks[localisable]
        metrics["pixel_auroc"] = _defined(lambda: pixel_auroc(chosen_maps, chosen_masks))
        for limit in FPR_LIMITS:
            metrics[f"au_pro@{limit:g}"] = _defined(lambda: au_pro(chosen_maps, chosen_masks, limit).value)
    return metrics


def score_in_chunks(
    scorer: Scorer, tokens: Mapping[str, torch.Tensor], device: torch.device
) -> tuple[np.ndarray, np.ndarray]:
    """Run ``scorer`` over ``tokens`` ``{layer: [N, HW, C]}`` :data:`SCORING_CHUNK` images at a time."""
    count = next(iter(tokens.values())).shape[0]
    maps, scores = [], []
    for start in range(0, count, SCORING_CHUNK):
        part = {layer: t[start : start + SCORING_CHUNK].to(device) for layer, t in tokens.items()}
        chunk_maps, chunk_scores = scorer(part)
        maps.append(chunk_maps.float().cpu().numpy())
        scores.append(chunk_scores.float().cpu().numpy())
    return np.concatenate(maps), np.concatenate(scores)


@dataclass
class EvaluationSet:
    """Cached test tokens of one class with what the metrics need (labels, masks in the view)."""

    tokens: dict[str, torch.Tensor]
    labels: np.ndarray
    masks: np.ndarray
    localisable: np.ndarray

    @classmethod
    def load(
        cls,
        backbone: VisionLanguageBackbone,
        splits: AnomalySplits,
        layers: tuple[str, ...],
        *,
        cache: FeatureCache | None = None,
        progress: bool = True,
    ) -> EvaluationSet:
        tokens, _ = encode_tokens(backbone, [r.path for r in splits.test], layers, cache=cache, progress=progress)
        localisable = np.array([r.label == 0 or r.mask_path is not None for r in splits.test]) & splits.has_masks
        return cls(tokens, splits.test_labels, view_masks(backbone, splits.test), localisable)

    def evaluate(self, scorer: Scorer, device: torch.device) -> dict[str, float | None]:
        """The metrics of ``scorer`` on this set, with its inference time ``ms_per_image``."""
        started = time.perf_counter()
        maps, scores = score_in_chunks(scorer, self.tokens, device)
        elapsed = time.perf_counter() - started
        metrics = anomaly_metrics(maps, scores, self.labels, self.masks, self.localisable)
        metrics["ms_per_image"] = 1000.0 * elapsed / len(self.labels)
        return metrics

    def transport_auroc(self, model: PradotModel, device: torch.device) -> float | None:
        """Image AUROC of PRADOT's alternative image score, the per-image OT cost."""
        scores = model.transport_scores({k: v.to(device) for k, v in self.tokens.items()}).cpu().numpy()
        return _defined(lambda: image_auroc(scores, self.labels))


def benchmark_class(
    backbone: VisionLanguageBackbone,
    splits: AnomalySplits,
    config: PradotConfig,
    patchcore: PatchCoreConfig = PatchCoreConfig(),
    *,
    cache: FeatureCache | None = None,
    device: torch.device | str = "cpu",
    ot_score: bool = False,
    progress: bool = True,
) -> ClassBenchmark:
    """Train PRADOT and fit PatchCore on ``splits.train``, score ``splits.test`` with both."""
    device = torch.device(device)
    size = (backbone.preprocess.image_size,) * 2
    train_tokens, grids = encode_tokens(backbone, splits.train, config.layers, cache=cache, progress=progress)
    test_set = EvaluationSet.load(backbone, splits, config.layers, cache=cache, progress=progress)
    common = {"class": splits.name, "n_train": len(splits.train), "n_test": len(splits.test)}

    model = build_model(config, train_tokens, grids)
    started = time.perf_counter()
    training = train_pradot(model, train_tokens, config, device=device, progress=progress)
    pradot_row = {**common, "method": "PRADOT", "fit_seconds": time.perf_counter() - started}
    pradot_row.update(test_set.evaluate(lambda t: model(t, size), device))
    pradot_row["image_auroc_ot"] = test_set.transport_auroc(model, device) if ot_score else None

    baseline = PatchCoreModel(config.layers, grids, patchcore).to(device)
    started = time.perf_counter()
    baseline.fit({k: v.to(device) for k, v in train_tokens.items()})
    patchcore_row = {**common, "method": "PatchCore", "fit_seconds": time.perf_counter() - started}
    patchcore_row.update(test_set.evaluate(lambda t: baseline(t, size), device))
    patchcore_row["image_auroc_ot"] = None
    return ClassBenchmark([pradot_row, patchcore_row], model, training)


def calibrate(scorer: Scorer, tokens: Mapping[str, torch.Tensor], device: torch.device, source: str = ""):
    """:class:`~medot.eval.calibration.NormalCalibration` of ``scorer`` on held-out normal ``tokens``."""
    from medot.eval.calibration import NormalCalibration

    maps, scores = score_in_chunks(scorer, tokens, device)
    return NormalCalibration.fit(scores, maps, source=source)


def _defined(metric: Callable[[], float]) -> float | None:
    try:
        return float(metric())
    except MetricError:
        return None
