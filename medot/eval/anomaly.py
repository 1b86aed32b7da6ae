r"""Anomaly-detection metrics: image AUROC, pixel AUROC and AU-PRO.

**Image AUROC** is scikit-learn's ``roc_auc_score`` on one score per image (label 1 = anomalous).

**Pixel AUROC** is the same quantity over all pixels of all test images, computed as the
Mann--Whitney statistic (Hanley & McNeil 1982)

.. math::
    \mathrm{AUROC} = \frac{1}{n_0 n_1} \sum_{p:\,y_p = 1}
    \Big( \#\{q : y_q = 0,\ s_q < s_p\} + \tfrac12\,\#\{q : y_q = 0,\ s_q = s_p\} \Big),

which equals the trapezoidal area under the exact ROC curve (ties count one half, as in
``roc_auc_score``). Only the normal-pixel scores are copied and sorted (4 bytes per pixel for
float32 maps); the anomalous pixels are counted against them by binary search in blocks.
``roc_auc_score`` on the flattened arrays peaks near 60 bytes per pixel (an int64 argsort, sorted
copies, float64 cumulative sums; measured with ``tracemalloc`` on 10M float32 pixels, where this
function peaks near 5), which is tens of GB for thousands of 224x224 maps.

**AU-PRO** follows the MVTec AD definition (Bergmann et al., IJCV 2021, Sec. 4; the official
evaluation code's ``compute_pro`` and ``trapezoid(..., x_max)``). The ground-truth masks are split
into connected regions :math:`C_1, \dots, C_K` over the whole test set, with 8-connectivity (a 3x3
structuring element of ones, as the official code passes to ``scipy.ndimage.label``). For a
threshold :math:`t`, with :math:`s_p` the anomaly score of pixel :math:`p` and :math:`\mathcal{N}`
the set of normal pixels (mask 0) of all images,

.. math::
    \mathrm{PRO}(t) = \frac{1}{K} \sum_{k=1}^{K} \frac{|\{p \in C_k : s_p \ge t\}|}{|C_k|},
    \qquad
    \mathrm{FPR}(t) = \frac{|\{p \in \mathcal{N} : s_p \ge t\}|}{|\mathcal{N}|}.

Every distinct score is a threshold (the exact sweep of the official code, which sorts all
scores; no threshold grid, so no discretisation error). The points :math:`(\mathrm{FPR}(t),
\mathrm{PRO}(t))` for decreasing :math:`t`, preceded by :math:`(0, 0)`, form a piecewise-linear
curve; pixels that share a score enter together, so a tie between normal and anomalous pixels is
one diagonal segment. AU-PRO is the area under that curve from FPR 0 to the limit :math:`L`
(trapezoid rule, the curve interpolated linearly at exactly :math:`L`), divided by :math:`L`:

.. math::
    \mathrm{AU\text{-}PRO}_L = \frac{1}{L} \int_0^L \mathrm{PRO}\, d\,\mathrm{FPR}
    \in [0, 1],

so a detector that scores every anomalous pixel above every normal pixel gets 1.0. MVTec AD
reports :math:`L = 0.3`; a stricter :math:`L = 0.05` weighs only the high-specificity end of the
curve. The limit is an argument and comes back in the result.

*How it is computed.* Vertical pieces of the curve (thresholds that add only anomalous pixels)
have no area, so only the thresholds at which the FPR grows matter: each distinct normal score
:math:`t` contributes the segment from :math:`(\mathrm{FPR}(>t), \mathrm{PRO}(>t))` to
:math:`(\mathrm{FPR}(\ge t), \mathrm{PRO}(\ge t))`, where ``>`` counts strictly higher scores.
Its area, split evenly over the normal pixels scoring :math:`t`, is
:math:`\tfrac{1}{2|\mathcal{N}|}(\mathrm{PRO}(>t) + \mathrm{PRO}(\ge t))` per pixel. Only the
:math:`\lceil L\,|\mathcal{N}|\rceil` highest normal scores can lie below the limit: they are
selected with ``np.partition`` and sorted; the segment that crosses :math:`L` is cut there by
interpolation. :math:`\mathrm{PRO}(\ge t)` is a binary search into the sorted anomalous scores and
a prefix sum of the weights :math:`1/(K |C_k|)`. The result equals the official code's integral
(``tests/test_eval_metrics.py`` checks it against a threshold-by-threshold sweep) with one copy of
the normal scores as its largest allocation, where the official code holds an int64 argsort, a
float64 and a uint32 array per pixel.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy import ndimage
from sklearn.metrics import roc_auc_score

from medot.eval._inputs import MetricError, as_binary, as_scores, chunks

DEFAULT_FPR_LIMIT = 0.3
"""The AU-PRO integration limit of the MVTec AD benchmark (Bergmann et al., IJCV 2021)."""

_EIGHT_CONNECTED = np.ones((3, 3), dtype=bool)
"""Structuring element for ground-truth regions: pixels touching by an edge or a corner."""


@dataclass(frozen=True)
class AUPROResult:
    """Normalised area under the PRO curve and the setting it was computed with.

    ``value`` is :math:`\\frac{1}{L}\\int_0^L \\mathrm{PRO}\\,d\\mathrm{FPR}` in ``[0, 1]``,
    ``fpr_limit`` is :math:`L`, ``num_regions`` is :math:`K`, the number of connected
    ground-truth regions the PRO averages over.
    """

    value: float
    fpr_limit: float
    num_regions: int


@dataclass(frozen=True)
class _RegionOverlap:
    """:math:`\\mathrm{PRO}(\\ge t)` and :math:`\\mathrm{PRO}(>t)` for any thresholds ``t``.

    ``sorted_scores`` holds the anomalous pixels' scores in ascending order; ``top_weight[j]`` is
    the sum of :math:`1/(K|C_k|)` over the ``j`` highest-scoring anomalous pixels (``C_k`` the
    region of each), so the PRO at ``t`` is ``top_weight`` at the number of pixels scoring at
    least (or above) ``t``.
    """

    sorted_scores: np.ndarray
    top_weight: np.ndarray
    num_regions: int

    def at(self, thresholds: np.ndarray, *, strictly_above: bool) -> np.ndarray:
        side = "right" if strictly_above else "left"
        below = np.searchsorted(self.sorted_scores, thresholds, side=side)
        return self.top_weight[self.sorted_scores.size - below]


def image_auroc(scores: Any, labels: Any) -> float:
    """Area under the ROC curve of one anomaly score per image (``labels``: 1 anomalous, 0 normal).

    ``scores`` and ``labels`` are ``[N]`` arrays, tensors or sequences. Raises
    :class:`MetricError` if the labels are not 0/1, if only one class is present (the AUROC is
    undefined without both normal and anomalous images) or if a score is NaN or infinite.
    """
    image_scores = as_scores(scores, "image scores", ndim=1)
    image_labels = as_binary(labels, "image labels", image_scores.shape)
    num_anomalous = int(np.count_nonzero(image_labels))
    if num_anomalous in (0, image_labels.size):
        missing = "anomalous" if num_anomalous == 0 else "normal"
        raise MetricError(
            f"image AUROC is undefined: the labels contain no {missing} image; "
            "evaluate on a test set with both normal and anomalous images."
        )
    return float(roc_auc_score(image_labels, image_scores))


def pixel_auroc(anomaly_maps: Any, masks: Any) -> float:
    """Area under the ROC curve of all pixels of all maps against the ground-truth masks.

    ``anomaly_maps`` is ``[N, H, W]`` (float32 kept as float32), ``masks`` the same shape with
    0/1 or bool values (1 anomalous). Equals ``roc_auc_score(masks.ravel(), maps.ravel())``
    (the Mann--Whitney form in the module docstring) at a fraction of its memory. Raises
    :class:`MetricError` on shape mismatch, non-binary masks, NaN/inf scores, or masks with no
    anomalous (or no normal) pixel.
    """
    maps, anomalous_mask = _maps_and_masks(anomaly_maps, masks)
    normal_scores = maps[~anomalous_mask]
    anomalous_scores = maps[anomalous_mask]
    _require_both_pixel_classes(normal_scores.size, anomalous_scores.size, "pixel AUROC")
    normal_scores.sort()
    twice_wins = 0  # 2 * (#normal below) + (#normal tied), summed over anomalous pixels
    for block in chunks(anomalous_scores):
        twice_wins += int(np.searchsorted(normal_scores, block, side="left").sum())
        twice_wins += int(np.searchsorted(normal_scores, block, side="right").sum())
    return twice_wins / (2 * normal_scores.size * anomalous_scores.size)


def au_pro(anomaly_maps: Any, masks: Any, fpr_limit: float = DEFAULT_FPR_LIMIT) -> AUPROResult:
    """Normalised area under the per-region-overlap curve up to FPR ``fpr_limit`` (MVTec AD).

    ``anomaly_maps`` is ``[N, H, W]`` (float32 kept as float32), ``masks`` the same shape with 0/1
    or bool values. ``fpr_limit`` is the integration limit :math:`L \\in (0, 1]`: 0.3 as in
    MVTec AD, 0.05 for a stricter, high-specificity reading. The definition, the exact threshold
    sweep and the memory use are in the module docstring. Returns :class:`AUPROResult` with the
    value in ``[0, 1]`` (1.0 for a perfect detector), the limit and the number of regions.

    Raises :class:`MetricError` if the masks have no anomalous pixel (the PRO averages over
    regions, so it is undefined without one) or no normal pixel (no FPR), on shape mismatch,
    non-binary masks, NaN/inf scores or a limit outside ``(0, 1]``.
    """
    limit = float(fpr_limit)
    if not 0.0 < limit <= 1.0:
        raise MetricError(f"fpr_limit must be in (0, 1] (MVTec AD uses 0.3), got {fpr_limit!r}.")
    maps, anomalous_mask = _maps_and_masks(anomaly_maps, masks)
    normal_scores = maps[~anomalous_mask]
    _require_both_pixel_classes(normal_scores.size, maps.size - normal_scores.size, "AU-PRO")
    overlap = _region_overlap(maps, anomalous_mask)
    area = _area_under_pro(normal_scores, overlap, limit)
    return AUPROResult(value=area / limit, fpr_limit=limit, num_regions=overlap.num_regions)


def _maps_and_masks(anomaly_maps: Any, masks: Any) -> tuple[np.ndarray, np.ndarray]:
    maps = as_scores(anomaly_maps, "anomaly maps", ndim=3)
    return maps, as_binary(masks, "masks", maps.shape)


def _require_both_pixel_classes(num_normal: int, num_anomalous: int, metric: str) -> None:
    if num_anomalous == 0:
        raise MetricError(
            f"{metric} is undefined: the masks contain no anomalous pixel; evaluate on a test set "
            "that includes anomalous images with their ground-truth masks."
        )
    if num_normal == 0:
        raise MetricError(
            f"{metric} is undefined: every pixel is marked anomalous, so there is no "
            "false-positive rate; include normal pixels (normal images or normal background)."
        )


def _region_overlap(maps: np.ndarray, anomalous_mask: np.ndarray) -> _RegionOverlap:
    """Label the 8-connected regions of each mask (at least one) and sort their pixels' scores."""
    region_scores, region_weights = [], []
    num_regions = 0
    for scores, mask in zip(maps, anomalous_mask):
        regions, count = ndimage.label(mask, structure=_EIGHT_CONNECTED)
        if count == 0:
            continue
        region_of_pixel = regions[mask]
        region_size = np.bincount(region_of_pixel, minlength=count + 1)
        region_scores.append(scores[mask])
        region_weights.append(1.0 / region_size[region_of_pixel])
        num_regions += count
    scores = np.concatenate(region_scores)
    order = np.argsort(scores)
    weights_descending = np.concatenate(region_weights)[order[::-1]]
    top_weight = np.concatenate(([0.0], np.cumsum(weights_descending) / num_regions))
    # Each region's weights sum to 1, so the total is 1; clip the cumulative rounding above it.
    np.minimum(top_weight, 1.0, out=top_weight)
    return _RegionOverlap(scores[order], top_weight, num_regions)


def _area_under_pro(normal_scores: np.ndarray, overlap: _RegionOverlap, limit: float) -> float:
    """:math:`\\int_0^L \\mathrm{PRO}\\,d\\mathrm{FPR}`; reorders ``normal_scores`` in place."""
    num_normal = normal_scores.size
    # Normal pixels whose FPR step [i, i + 1] / |N| starts below the limit: the highest scores.
    num_candidates = math.ceil(limit * num_normal)
    split = num_normal - num_candidates
    normal_scores.partition(split)
    candidates = normal_scores[split:]
    candidates.sort()
    crossing = candidates[0]  # the score whose segment reaches the limit
    above = candidates[np.searchsorted(candidates, crossing, side="right") :]
    # Segments wholly below the limit: per normal pixel, the trapezoid height / |N|.
    heights = 0.0
    for block in chunks(above):
        heights += float(overlap.at(block, strictly_above=True).sum())
        heights += float(overlap.at(block, strictly_above=False).sum())
    area = 0.5 * heights / num_normal
    # The segment of the crossing score, cut at FPR = L by linear interpolation.
    num_at_or_above = num_candidates + int(np.count_nonzero(normal_scores[:split] == crossing))
    fpr_start, fpr_end = above.size / num_normal, num_at_or_above / num_normal
    pro_start = float(overlap.at(crossing, strictly_above=True))
    pro_end = float(overlap.at(crossing, strictly_above=False))
    width = max(0.0, min(limit, fpr_end) - fpr_start)
    pro_at_limit = pro_start + (pro_end - pro_start) * width / (fpr_end - fpr_start)
    return area + 0.5 * (pro_start + pro_at_limit) * width
