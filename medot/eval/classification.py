r"""Classification metrics for the K-MaT cross-modality transfer and a per-seed summary.

* :func:`accuracy` and :func:`macro_f1` are scikit-learn's ``accuracy_score`` and
  ``f1_score(average="macro")``: the unweighted mean over classes of
  :math:`F_1^{(c)} = 2 P_c R_c / (P_c + R_c)`, a class that is never predicted nor present
  scoring 0 (``zero_division=0``) rather than raising a warning.
* :func:`harmonic_mean_accuracy` is the H column of K-MaT's Table 2, the harmonic mean of the
  accuracy on the high-end modality (Hi) and on the low-end modality (Lo),

  .. math:: H = \frac{2\,\mathrm{Hi}\cdot\mathrm{Lo}}{\mathrm{Hi} + \mathrm{Lo}},

  which, unlike the arithmetic mean, stays low when either modality is poorly served.
* :func:`summarise_seeds` reports each metric as mean and sample standard deviation over seeds.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from sklearn.metrics import accuracy_score, f1_score

from medot.eval._inputs import MetricError, as_array


@dataclass(frozen=True)
class SeedSummary:
    """A metric over ``n`` seeds: ``mean`` and sample standard deviation ``std`` (ddof = 1).

    One seed has no spread to estimate: ``std`` is then 0.0 and ``str()`` prints the mean alone.
    """

    mean: float
    std: float
    n: int

    def __str__(self) -> str:
        if self.n == 1:
            return f"{self.mean:.4f} (n=1)"
        return f"{self.mean:.4f} ± {self.std:.4f} (n={self.n})"


def accuracy(y_true: Any, y_pred: Any) -> float:
    """Fraction of samples whose predicted class equals the true class."""
    truth, predicted = _labels(y_true, y_pred)
    return float(accuracy_score(truth, predicted))


def macro_f1(y_true: Any, y_pred: Any, labels: Sequence[Any] | None = None) -> float:
    """Unweighted mean of the per-class F1 scores.

    ``labels`` fixes the classes averaged over (pass all class indices so that a class absent
    from one seed's test split still counts, as 0); by default the classes present in ``y_true``
    or ``y_pred``.
    """
    truth, predicted = _labels(y_true, y_pred)
    return float(f1_score(truth, predicted, labels=labels, average="macro", zero_division=0.0))


def harmonic_mean_accuracy(high_end: float, low_end: float) -> float:
    """K-MaT's H: ``2 * high_end * low_end / (high_end + low_end)`` (0.0 when both are 0).

    Accuracies may be fractions or percentages (H is in the same unit); both must be finite and
    non-negative.
    """
    high, low = float(high_end), float(low_end)
    for name, value in (("high_end", high), ("low_end", low)):
        if not (math.isfinite(value) and value >= 0.0):
            raise MetricError(
                f"{name} accuracy must be a finite non-negative number, got {value!r}."
            )
    if high + low == 0.0:
        return 0.0
    return 2.0 * high * low / (high + low)


def summarise_seeds(runs: Sequence[Mapping[str, float]]) -> dict[str, SeedSummary]:
    """Mean and sample standard deviation of each metric over seeds.

    ``runs`` holds one ``{metric name: value}`` mapping per seed; every seed must report the same
    metrics, with finite values. Returns ``{metric name: SeedSummary}`` in the first run's order.
    """
    if not runs:
        raise MetricError("summarise_seeds needs at least one run (one metrics mapping per seed).")
    names = list(runs[0])
    for seed_index, run in enumerate(runs):
        if set(run) != set(names):
            raise MetricError(
                f"run {seed_index} reports metrics {sorted(run)} but run 0 reports "
                f"{sorted(names)}; every seed must report the same metrics."
            )
    summary = {}
    for name in names:
        values = np.array([float(run[name]) for run in runs])
        if not np.isfinite(values).all():
            raise MetricError(
                f"metric {name!r} is NaN or infinite in at least one run: {values.tolist()}."
            )
        std = float(values.std(ddof=1)) if values.size > 1 else 0.0
        summary[name] = SeedSummary(mean=float(values.mean()), std=std, n=int(values.size))
    return summary


def _labels(y_true: Any, y_pred: Any) -> tuple[np.ndarray, np.ndarray]:
    truth, predicted = as_array(y_true, "y_true"), as_array(y_pred, "y_pred")
    for name, values in (("y_true", truth), ("y_pred", predicted)):
        if values.ndim != 1:
            raise MetricError(
                f"{name} must be a 1-D array of class labels, got shape {values.shape}."
            )
    if truth.size != predicted.size:
        raise MetricError(
            f"y_true has {truth.size} labels but y_pred has {predicted.size}; "
            "pass one prediction per sample."
        )
    if truth.size == 0:
        raise MetricError("y_true and y_pred are empty; pass at least one sample.")
    return truth, predicted
