"""Evaluation metrics shared by the four medot methods.

Anomaly detection and localisation (:mod:`medot.eval.anomaly`; MADPOT, PRADOT, zero-shot):

* :func:`image_auroc` -- AUROC of one anomaly score per image (scikit-learn ``roc_auc_score``);
* :func:`pixel_auroc` -- AUROC over all pixels of ``[N, H, W]`` maps against binary masks, equal
  to ``roc_auc_score`` on the flattened arrays with one float32 copy of the normal pixels as its
  largest allocation;
* :func:`au_pro` -- area under the per-region-overlap curve up to a false-positive-rate limit
  (MVTec AD, Bergmann et al., IJCV 2021: 8-connected regions, exact threshold sweep, trapezoid
  rule interpolated at the limit, normalised by it), returned as :class:`AUPROResult` with the
  limit it used (:data:`DEFAULT_FPR_LIMIT` = 0.3).

Calibration (:mod:`medot.eval.calibration`): :class:`NormalCalibration` puts anomaly scores of any
method on a normal-referenced scale (percentile among held-out normals, pixel scores in units of
the normals' 99th percentile) and gives a verdict at the normals' 99th percentile.

Classification (:mod:`medot.eval.classification`; K-MaT):

* :func:`accuracy`, :func:`macro_f1` (scikit-learn);
* :func:`harmonic_mean_accuracy` -- K-MaT's H = 2 Hi Lo / (Hi + Lo) of high-end and low-end
  accuracy;
* :func:`summarise_seeds` -- mean and sample standard deviation of each metric over seeds.

Inputs may be numpy arrays, torch tensors on any device, or sequences of them. Inputs a metric is
undefined for (one class only, masks without anomalous pixels, NaN scores, shape mismatches)
raise :class:`MetricError`, a :class:`medot.errors.MedotError` and a ``ValueError``, with a
message that says what to change.
"""

from importlib import import_module
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from medot.eval._inputs import MetricError
    from medot.eval.anomaly import DEFAULT_FPR_LIMIT, AUPROResult, au_pro, image_auroc, pixel_auroc
    from medot.eval.calibration import NormalCalibration
    from medot.eval.classification import SeedSummary, accuracy, harmonic_mean_accuracy, macro_f1, summarise_seeds

#: public name -> the submodule that defines it. Loaded on first use (PEP 562): the metrics pull in
#: scikit-learn, scipy and pandas, which :mod:`medot.eval.evidence` (``medot predict``) never needs
_SOURCES = {
    "MetricError": "medot.eval._inputs",
    "NormalCalibration": "medot.eval.calibration",
    **dict.fromkeys(("DEFAULT_FPR_LIMIT", "AUPROResult", "au_pro", "image_auroc", "pixel_auroc"), "medot.eval.anomaly"),
    **dict.fromkeys(("SeedSummary", "accuracy", "harmonic_mean_accuracy", "macro_f1", "summarise_seeds"),
                    "medot.eval.classification"),
}

__all__ = [
    "DEFAULT_FPR_LIMIT",
    "AUPROResult",
    "MetricError",
    "NormalCalibration",
    "SeedSummary",
    "au_pro",
    "accuracy",
    "harmonic_mean_accuracy",
    "image_auroc",
    "macro_f1",
    "pixel_auroc",
    "summarise_seeds",
]


def __getattr__(name: str) -> object:
    if name in _SOURCES:
        return getattr(import_module(_SOURCES[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | _SOURCES.keys())
