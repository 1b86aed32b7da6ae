r"""Anomaly scores on a normal-referenced scale, and a verdict from normals only.

An anomaly detector's raw scores (PRADOT: max-normalised OT costs in ``[0, 1]``; PatchCore:
Euclidean distances in feature units) mean nothing to a reader and differ between methods.
:class:`NormalCalibration` is fitted on the scores of **normal images the model was not trained on**
(a held-out slice of the normal training images; never test images, never labels) and puts every
score on one scale:

* **image score** :math:`s` -> its *percentile among normals*,
  :math:`100 \cdot \#\{k : s_k \le s\} / K` over the :math:`K` held-out normal image scores
  :math:`s_k` (the share of normal images scoring at most :math:`s`; 100 means "above every normal
  seen");
* **verdict**: ``"anomalous"`` when :math:`s > t_{\mathrm{img}}`, the ``quantile`` (default 0.99)
  of the normal image scores, else ``"normal"``; quantiles are numpy's default (linear
  interpolation between order statistics), so with few normals :math:`t_{\mathrm{img}}` lies
  between the two largest normal scores;
* **pixel score** :math:`m` -> :math:`m / t_{\mathrm{px}}`, "times the normals' 99th percentile"
  (:math:`t_{\mathrm{px}}` the ``quantile`` of all pixels of the held-out normal maps): 1 is the
  calibrated pixel threshold, at which the predicted region is outlined.

The distribution is kept as the sorted normal image scores and the normal pixel scores at the
levels :data:`PIXEL_LEVELS`, in a JSON-ready dict stored in a checkpoint's metadata under
``"calibration"`` (:meth:`NormalCalibration.to_dict`, :meth:`NormalCalibration.from_meta`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from medot.eval._inputs import MetricError

DEFAULT_QUANTILE = 0.99
PIXEL_LEVELS = (0.0, 0.5, 0.9, 0.95, 0.99, 0.999, 1.0)
"""Quantile levels of the normal pixel scores kept in the checkpoint."""
NORMAL, ANOMALOUS = "normal", "anomalous"


@dataclass(frozen=True)
class NormalCalibration:
    """Normal image scores (sorted), normal pixel quantiles and the verdict's quantile level."""

    image_scores: tuple[float, ...]
    pixel_levels: tuple[float, ...]
    pixel_quantiles: tuple[float, ...]
    quantile: float = DEFAULT_QUANTILE
    source: str = ""

    @classmethod
    def fit(
        cls,
        image_scores: Any,
        pixel_maps: Any,
        *,
        quantile: float = DEFAULT_QUANTILE,
        source: str = "",
    ) -> NormalCalibration:
        """From held-out normal ``image_scores`` ``[K]`` and their ``pixel_maps`` ``[K, H, W]``."""
        scores = np.asarray(image_scores, dtype=np.float64).ravel()
        pixels = np.asarray(pixel_maps, dtype=np.float64).ravel()
        if scores.size == 0 or pixels.size == 0:
            raise MetricError("calibration needs at least one held-out normal image")
        if not (np.isfinite(scores).all() and np.isfinite(pixels).all()):
            raise MetricError("calibration scores must be finite")
        if not 0.0 < quantile < 1.0:
            raise MetricError(f"the calibration quantile must be in (0, 1), got {quantile}")
        levels = tuple(sorted({*PIXEL_LEVELS, float(quantile)}))
        return cls(
            image_scores=tuple(float(v) for v in np.sort(scores)),
            pixel_levels=levels,
            pixel_quantiles=tuple(float(v) for v in np.quantile(pixels, levels)),
            quantile=float(quantile),
            source=source,
        )

    # ------------------------------------------------------------------ thresholds
    @property
    def count(self) -> int:
        """Number of held-out normal images."""
        return len(self.image_scores)

    @property
    def image_threshold(self) -> float:
        """:math:`t_{\\mathrm{img}}`: the ``quantile`` of the normal image scores."""
        return float(np.quantile(np.asarray(self.image_scores), self.quantile))

    @property
    def pixel_threshold(self) -> float:
        """:math:`t_{\\mathrm{px}}`: the ``quantile`` of the normal pixel scores."""
        return self.pixel_quantiles[self.pixel_levels.index(self.quantile)]

    # ------------------------------------------------------------------ the scale
    def percentile(self, score: Any) -> np.ndarray | float:
        """Percentile among normals of image score(s): share (in %) of normal scores ``<= score``."""
        values = np.asarray(score, dtype=np.float64)
        ranks = np.searchsorted(np.asarray(self.image_scores), values, side="right")
        result = 100.0 * ranks / self.count
        return float(result) if result.ndim == 0 else result

    def verdict(self, score: float) -> str:
        """``"anomalous"`` above :attr:`image_threshold`, else ``"normal"``."""
        return ANOMALOUS if float(score) > self.image_threshold else NORMAL

    def pixel_scale(self, anomaly_map: Any) -> np.ndarray:
        """The map in units of :attr:`pixel_threshold` (1 = the normals' ``quantile``)."""
        threshold = self.pixel_threshold
        return np.asarray(anomaly_map, dtype=np.float32) / np.float32(threshold if threshold > 0 else 1.0)

    def describe(self, score: float) -> str:
        """One plain sentence: the verdict, the percentile and the threshold it was decided at."""
        percentile = self.percentile(score)
        level = f"{100 * self.quantile:g}th"
        above = "above" if self.verdict(score) == ANOMALOUS else "not above"
        return (
            f"{self.verdict(score).capitalize()}: the image scores higher than {percentile:.0f} % of "
            f"{self.count} held-out normal images, {above} the normals' {level} percentile "
            f"({score:.4g} vs {self.image_threshold:.4g})."
        )

    def summary(self, score: float) -> dict[str, Any]:
        """JSON-ready calibrated reading of one image score."""
        return {
            "percentile_among_normals": self.percentile(score),
            "verdict": self.verdict(score),
            "image_threshold": self.image_threshold,
            "pixel_threshold": self.pixel_threshold,
            "threshold_quantile": self.quantile,
            "normal_images": self.count,
        }

    # ------------------------------------------------------------------ storage
    def to_dict(self) -> dict[str, Any]:
        return {
            "image_scores": list(self.image_scores),
            "pixel_levels": list(self.pixel_levels),
            "pixel_quantiles": list(self.pixel_quantiles),
            "quantile": self.quantile,
            "source": self.source,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> NormalCalibration:
        try:
            calibration = cls(
                image_scores=tuple(float(v) for v in data["image_scores"]),
                pixel_levels=tuple(float(v) for v in data["pixel_levels"]),
                pixel_quantiles=tuple(float(v) for v in data["pixel_quantiles"]),
                quantile=float(data.get("quantile", DEFAULT_QUANTILE)),
                source=str(data.get("source", "")),
            )
        except (KeyError, TypeError, ValueError) as error:
            raise MetricError(f"the stored calibration is incomplete: {error}") from None
        if not calibration.image_scores or calibration.quantile not in calibration.pixel_levels:
            raise MetricError("the stored calibration has no normal scores or lacks its threshold quantile")
        return calibration

    @classmethod
    def from_meta(cls, meta: dict[str, Any]) -> NormalCalibration | None:
        """The calibration stored in checkpoint metadata, or None for a model saved without one."""
        data = meta.get("calibration")
        return cls.from_dict(data) if data else None
