"""medot.eval: AU-PRO against a hand computation and a threshold-by-threshold sweep, AUROCs
against scikit-learn, classification metrics against hand counts, and every error message."""

import numpy as np
import pytest
import torch
from scipy import ndimage
from sklearn.metrics import roc_auc_score

from medot.errors import MedotError
from medot.eval import (
    DEFAULT_FPR_LIMIT,
    MetricError,
    accuracy,
    au_pro,
    harmonic_mean_accuracy,
    image_auroc,
    macro_f1,
    pixel_auroc,
    summarise_seeds,
)


def _hand_case():
    """Two 4x4 images, 12 anomalous pixels in 3 regions, 20 normal pixels (one FPR step = 0.05).

    Image 0: region A = {(0,0), (1,1)} (diagonal neighbours: ONE region under 8-connectivity),
             scores 0.8, 0.8; region B = column 3, scores 0.95, 0.7, 0.7, 0.1 (top to bottom).
    Image 1: region C = rows 2-3 x columns 0-2 (6 pixels), scores 0.6 x 3 (row 2) and 0 x 3.
    Normal pixels: 0.9 (image 0, (3,0)), 0.75 (image 0, (2,0)), 0.6 (image 1, (0,0); ties with
    region C), 0.5 x 2 (image 1, (0,1), (0,2)), 0 x 15.

    Thresholds t (descending), FPR = #normal >= t / 20, PRO = (A + B + C) / 3:
      t=0.95 FPR 0.00 PRO (0 + 1/4 + 0)/3   = 1/12
      t=0.90 FPR 0.05 PRO                     1/12
      t=0.80 FPR 0.05 PRO (1 + 1/4 + 0)/3   = 5/12
      t=0.75 FPR 0.10 PRO                     5/12
      t=0.70 FPR 0.10 PRO (1 + 3/4 + 0)/3   = 7/12
      t=0.60 FPR 0.15 PRO (1 + 3/4 + 1/2)/3 = 9/12   (tie: one diagonal segment from 7/12)
      t=0.50 FPR 0.25 PRO                     9/12
      t=0.10 FPR 0.25 PRO (1 + 1 + 1/2)/3   = 10/12
      t=0.00 FPR 1.00 PRO                     1
    Curve from (0, 0). Areas, in units of 1/12:
      [0, 0.05]     height 1                      -> 0.05
      [0.05, 0.10]  height 5                      -> 0.25
      [0.10, 0.15]  from 7 to 9                   -> 0.05 * 8   = 0.40
      [0.15, 0.25]  height 9                      -> 0.10 * 9   = 0.90
      [0.25, 0.30]  from 10 towards 12 at FPR 1: at 0.3 it is 10 + 2 * 0.05/0.75 = 152/15,
                    area 0.05 * (10 + 152/15) / 2 = 151/300
    L = 0.3:   (0.05 + 0.25 + 0.40 + 0.90 + 151/300)/12 = 631/3600, / 0.3 -> 631/1080
    L = 0.05:  0.05/12 (the vertical jump at 0.05 has no area), / 0.05 -> 1/12
    L = 0.125: (0.05 + 0.25 + 0.025 * (7 + 8)/2)/12 = 0.4875/12, / 0.125 -> 0.325
    """
    maps = np.zeros((2, 4, 4), np.float32)
    masks = np.zeros((2, 4, 4), bool)
    masks[0, 0, 0] = masks[0, 1, 1] = True
    maps[0, 0, 0] = maps[0, 1, 1] = 0.8
    masks[0, :, 3] = True
    maps[0, :, 3] = [0.95, 0.7, 0.7, 0.1]
    masks[1, 2:4, 0:3] = True
    maps[1, 2, 0:3] = 0.6
    maps[0, 3, 0], maps[0, 2, 0] = 0.9, 0.75
    maps[1, 0, 0], maps[1, 0, 1], maps[1, 0, 2] = 0.6, 0.5, 0.5
    return maps, masks


def _reference_au_pro(maps, masks, limit):
    """The MVTec definition, threshold by threshold: every distinct score, 8-connected regions,
    the curve from (0, 0), trapezoid rule with the curve interpolated at FPR = limit."""
    regions = []
    for index, mask in enumerate(masks):
        labels, count = ndimage.label(mask, structure=np.ones((3, 3)))
        regions += [(index, labels == k) for k in range(1, count + 1)]
    normal = ~masks
    fpr, pro = [0.0], [0.0]
    for threshold in np.unique(maps)[::-1]:
        predicted = maps >= threshold
        fpr.append((predicted & normal).sum() / normal.sum())
        pro.append(np.mean([predicted[index][region].mean() for index, region in regions]))
    fpr, pro = np.array(fpr), np.array(pro)
    beyond = np.flatnonzero(fpr > limit)
    if beyond.size:
        i = beyond[0]
        slope = (pro[i] - pro[i - 1]) / (fpr[i] - fpr[i - 1])
        pro_limit = pro[i - 1] + slope * (limit - fpr[i - 1])
        fpr, pro = np.append(fpr[:i], limit), np.append(pro[:i], pro_limit)
    return np.trapezoid(pro, fpr) / limit


def _random_case(seed, levels=None):
    """Three 12x12 maps with blob-shaped masks; scores higher inside, quantised if ``levels``."""
    rng = np.random.default_rng(seed)
    masks = ndimage.binary_dilation(rng.random((3, 12, 12)) < 0.04, structure=np.ones((1, 3, 3)))
    maps = rng.random((3, 12, 12)) + 0.6 * masks
    if levels is not None:
        maps = np.round(maps * levels) / levels
    return maps.astype(np.float32), masks


# ---------------------------------------------------------------------------- AU-PRO


@pytest.mark.parametrize(("limit", "expected"), [(0.3, 631 / 1080), (0.05, 1 / 12), (0.125, 0.325)])
def test_au_pro_matches_hand_computation(limit, expected):
    maps, masks = _hand_case()
    result = au_pro(maps, masks, fpr_limit=limit)
    assert result.value == pytest.approx(expected, abs=1e-12)
    assert result.fpr_limit == limit
    assert result.num_regions == 3  # the diagonal pair is one region (8-connectivity)


def test_au_pro_limit_changes_the_value_and_defaults_to_mvtec():
    maps, masks = _hand_case()
    strict, mvtec = au_pro(maps, masks, fpr_limit=0.05), au_pro(maps, masks)
    assert mvtec.fpr_limit == DEFAULT_FPR_LIMIT == 0.3
    # This detector's first false positive comes before most regions are found, so the
    # high-specificity reading is much lower than the MVTec one (1/12 versus 631/1080).
    assert strict.value < mvtec.value - 0.4


@pytest.mark.parametrize("levels", [None, 8])
@pytest.mark.parametrize("limit", [0.05, 0.1234, 0.3, 1.0])
def test_au_pro_equals_threshold_by_threshold_sweep(levels, limit):
    maps, masks = _random_case(seed=7, levels=levels)
    expected = _reference_au_pro(maps, masks, limit)
    assert au_pro(maps, masks, fpr_limit=limit).value == pytest.approx(expected, abs=1e-9)


def test_au_pro_perfect_and_inverted_detectors():
    maps, masks = _random_case(seed=3)
    perfect = np.where(masks, 2.0 + maps, maps)
    inverted = np.where(masks, maps - 2.0, maps)
    assert au_pro(perfect, masks).value == pytest.approx(1.0, abs=1e-12)
    assert au_pro(inverted, masks).value == 0.0


def test_au_pro_and_pixel_auroc_invariant_to_monotone_transform():
    maps, masks = _random_case(seed=5)
    maps = maps.astype(np.float64)
    transformed = np.exp(3.0 * maps) - 7.0
    assert au_pro(transformed, masks).value == pytest.approx(au_pro(maps, masks).value, abs=1e-12)
    assert pixel_auroc(transformed, masks) == pytest.approx(pixel_auroc(maps, masks), abs=1e-12)


def test_au_pro_accepts_tensors_and_lists_of_maps():
    maps, masks = _hand_case()
    tensors = au_pro(torch.from_numpy(maps), torch.from_numpy(masks).to(torch.uint8))
    listed = au_pro(list(maps), list(masks.astype(np.float32)))
    assert tensors.value == pytest.approx(631 / 1080, abs=1e-12)
    assert listed.value == pytest.approx(631 / 1080, abs=1e-12)


# ---------------------------------------------------------------------------- AUROC


@pytest.mark.parametrize("levels", [None, 4])
def test_pixel_auroc_equals_sklearn_on_flattened_arrays(levels):
    maps, masks = _random_case(seed=11, levels=levels)
    expected = roc_auc_score(masks.ravel(), maps.ravel())
    assert pixel_auroc(maps, masks) == pytest.approx(expected, abs=1e-12)


def test_pixel_auroc_hand_case():
    # 12 anomalous x 20 normal pairs; anomalous wins (+ half ties) over normal pixels:
    # 0.95: 20, 0.8 x2: 19 each, 0.7 x2: 18 each, 0.6 x3: 17 + 1/2 (tie) each, 0.1: 15,
    # 0 x3: 15/2 (ties) each; sum = 20 + 38 + 36 + 52.5 + 15 + 22.5 = 184 -> 184 / 240
    maps, masks = _hand_case()
    assert pixel_auroc(maps, masks) == pytest.approx(184 / 240, abs=1e-12)


def test_image_auroc_hand_counts():
    # pairs (anomalous, normal): 0.35>0.1 yes, 0.35>0.4 no, 0.8 beats both -> 3 of 4
    assert image_auroc([0.1, 0.4, 0.35, 0.8], [0, 0, 1, 1]) == pytest.approx(0.75)
    # a tie counts one half: 0.5 vs 0.5 tie, 0.9 vs 0.5 win -> 1.5 of 2
    assert image_auroc(np.array([0.5, 0.5, 0.9]), np.array([0, 1, 1])) == pytest.approx(0.75)


# ---------------------------------------------------------------------------- classification


def test_accuracy_and_macro_f1_hand_counts():
    y_true = [0, 0, 1, 1, 2, 2]
    y_pred = [0, 1, 1, 1, 2, 0]
    # class 0: TP 1, FP 1, FN 1 -> F1 1/2; class 1: TP 2, FP 1, FN 0 -> P 2/3, R 1, F1 4/5;
    # class 2: TP 1, FP 0, FN 1 -> P 1, R 1/2, F1 2/3
    assert accuracy(y_true, y_pred) == pytest.approx(4 / 6)
    assert macro_f1(y_true, y_pred) == pytest.approx((1 / 2 + 4 / 5 + 2 / 3) / 3)
    # a class absent from both arrays counts as F1 = 0 when listed
    with_absent_class = macro_f1(y_true, y_pred, labels=[0, 1, 2, 3])
    assert with_absent_class == pytest.approx((1 / 2 + 4 / 5 + 2 / 3) / 4)


def test_harmonic_mean_accuracy():
    assert harmonic_mean_accuracy(0.8, 0.6) == pytest.approx(2 * 0.8 * 0.6 / 1.4)
    assert harmonic_mean_accuracy(70.0, 70.0) == pytest.approx(70.0)
    assert harmonic_mean_accuracy(0.9, 0.0) == 0.0
    assert harmonic_mean_accuracy(0.0, 0.0) == 0.0


def test_summarise_seeds_mean_and_sample_std():
    runs = [{"acc": 0.8, "f1": 0.5}, {"acc": 0.9, "f1": 0.5}, {"f1": 0.5, "acc": 1.0}]
    summary = summarise_seeds(runs)
    assert list(summary) == ["acc", "f1"]
    assert summary["acc"].mean == pytest.approx(0.9)
    assert summary["acc"].std == pytest.approx(0.1)  # sqrt((0.01 + 0 + 0.01) / 2)
    assert summary["acc"].n == 3
    assert str(summary["acc"]) == "0.9000 ± 0.1000 (n=3)"
    assert summary["f1"].std == 0.0
    single = summarise_seeds([{"acc": 0.7}])["acc"]
    assert (single.mean, single.std, single.n, str(single)) == (0.7, 0.0, 1, "0.7000 (n=1)")


# ---------------------------------------------------------------------------- errors


def test_metric_error_is_a_medot_error_and_a_value_error():
    assert issubclass(MetricError, MedotError) and issubclass(MetricError, ValueError)


_MAPS, _MASKS = np.ones((2, 4, 4)), np.zeros((2, 4, 4))
_ONE_MAP, _DIAGONAL = np.ones((1, 2, 2)), np.eye(2)[None]

ERROR_CASES = {
    "image: no anomalous": (lambda: image_auroc([0.1, 0.2], [0, 0]), "no anomalous image"),
    "image: no normal": (lambda: image_auroc([0.1, 0.2], [1, 1]), "no normal image"),
    "image: NaN": (lambda: image_auroc([0.1, np.nan], [0, 1]), "NaN or infinite"),
    "image: lengths": (lambda: image_auroc([0.1, 0.2, 0.3], [0, 1]), "has shape"),
    "image: label 2": (lambda: image_auroc([0.1, 0.2], [0, 2]), "only 0 and 1"),
    "au_pro: empty masks": (
        lambda: au_pro(_MAPS, _MASKS),
        "AU-PRO is undefined: the masks contain no anomalous pixel",
    ),
    "pixel: empty masks": (
        lambda: pixel_auroc(_MAPS, _MASKS),
        "pixel AUROC is undefined: the masks contain no anomalous pixel",
    ),
    "au_pro: all anomalous": (
        lambda: au_pro(_ONE_MAP, np.ones((1, 2, 2))),
        "every pixel is marked anomalous",
    ),
    "au_pro: shapes": (
        lambda: au_pro(_MAPS, np.ones((2, 4, 5))),
        r"masks has shape \(2, 4, 5\) but the scores have shape \(2, 4, 4\)",
    ),
    "pixel: NaN": (lambda: pixel_auroc(np.full((1, 2, 2), np.nan), _DIAGONAL), "NaN or infinite"),
    "au_pro: inf": (lambda: au_pro(np.full((1, 2, 2), np.inf), _DIAGONAL), "NaN or infinite"),
    "au_pro: 0/255 masks": (
        lambda: au_pro(_ONE_MAP, (255 * _DIAGONAL).astype(np.uint8)),
        "divide 0/255 masks by 255",
    ),
    "au_pro: soft masks": (lambda: au_pro(_ONE_MAP, 0.5 * _DIAGONAL), "only 0 and 1"),
    "au_pro: 2-D map": (lambda: au_pro(np.ones((2, 2)), np.eye(2)), r"shape \[N, H, W\]"),
    "au_pro: ragged list": (
        lambda: au_pro([np.ones((2, 2)), np.ones((3, 3))], np.zeros((2, 2, 2))),
        "different shapes",
    ),
    "au_pro: limit 0": (lambda: au_pro(*_hand_case(), fpr_limit=0.0), r"in \(0, 1\]"),
    "au_pro: limit 1.5": (lambda: au_pro(*_hand_case(), fpr_limit=1.5), r"in \(0, 1\]"),
    "accuracy: lengths": (
        lambda: accuracy([0, 1, 1], [0, 1]),
        "y_true has 3 labels but y_pred has 2",
    ),
    "macro_f1: empty": (lambda: macro_f1([], []), "empty"),
    "H: negative": (
        lambda: harmonic_mean_accuracy(-0.1, 0.5),
        "high_end accuracy must be a finite non-negative",
    ),
    "H: NaN": (
        lambda: harmonic_mean_accuracy(0.5, np.nan),
        "low_end accuracy must be a finite non-negative",
    ),
    "seeds: none": (lambda: summarise_seeds([]), "at least one run"),
    "seeds: keys": (
        lambda: summarise_seeds([{"acc": 0.5}, {"f1": 0.5}]),
        "every seed must report the same metrics",
    ),
    "seeds: inf": (
        lambda: summarise_seeds([{"acc": 0.5}, {"acc": np.inf}]),
        "NaN or infinite in at least one run",
    ),
}


@pytest.mark.parametrize("case", ERROR_CASES)
def test_error_messages(case):
    call, message = ERROR_CASES[case]
    with pytest.raises(MetricError, match=message):
        call()
