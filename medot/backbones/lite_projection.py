"""Fit the ``lite`` text projection and logit scale in closed form; regenerate the shipped asset.

Data (one row per ImageNet-1k class ``c``): ``u_c`` = all-MiniLM-L6-v2 embedding of the prompt
``"a photo of a {c}."`` (unit norm, 384-d) and ``y_c = w_c / ||w_c||``, the L2-normalised row of
EfficientNet-Lite0's ImageNet classifier (1280-d). The projection ``t = P u + b`` is the ridge
regression (Hoerl & Kennard, 1970) with an unpenalised intercept:

    (P, b) = argmin_{P, b} sum_c ||y_c - P u_c - b||^2 + lambda ||P||_F^2
    P = Y_c^T U_c (U_c^T U_c + lambda I)^{-1},   b = y_bar - P u_bar                    (1)

where ``U_c``, ``Y_c`` are the rows centred on their means ``u_bar``, ``y_bar``.

lambda is chosen on the grid ``10^{k/4}``, ``k = -12..8``, by K-fold cross-validation (K = 5, folds
from a seeded permutation of the classes) maximising the mean held-out cosine
``cos(P u_c + b, y_c)``, the quantity :meth:`VisionLanguageBackbone.similarity_logits` uses.

Held-out figure: a seeded split keeps 100 classes out; lambda is cross-validated and (1) fitted on the
other 900; each held-out prompt then retrieves its class among the 100 held-out classifier rows by
cosine (top-1 / top-5, chance 1% / 5%). The shipped projection is refitted on all 1000 classes with
lambda cross-validated on all 1000.

Logit scale: the ImageNet head computes ``z_c = w_c . f + beta_c = ||w_c|| ||f|| cos(w_c, f) + beta_c``,
so its own inverse temperature on cosines is ``s = median_c ||w_c|| * median_i ||f_i||`` with ``f_i``
the pooled features of scikit-image's bundled photographs (timm's evaluation transform for the
tower). With ``s``, ``s * cos(f, t_c)`` reproduces the head's logits up to per-class norm and bias
whenever ``t_c`` points along ``w_c``.

Run ``python -m medot.backbones.lite_projection`` to rewrite ``assets/lite/text_projection.safetensors``
and ``assets/lite/text_projection.json`` (lambda, cross-validation curve, held-out retrieval, inputs).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import skimage.data
import timm
import torch
import torch.nn.functional as F
from PIL import Image
from safetensors.torch import save_file
from timm.models.efficientnet import EfficientNet
from torch import nn
from torchvision.models import EfficientNet_B0_Weights
from transformers import BertModel, PreTrainedTokenizerBase

from medot.backbones.lite import (
    ASSET_DIR,
    PROJECTION_FILE,
    efficientnet_weights_file,
    load_image_tower,
    load_text_tower,
    minilm_dir,
    sentence_embeddings,
)

PROMPT_TEMPLATE = "a photo of a {}."
LAMBDA_GRID = tuple(10.0 ** (k / 4) for k in range(-12, 9))
N_FOLDS = 5
N_HELDOUT_CLASSES = 100
SEED = 0
#: scikit-image's bundled photographs (no download) used for the typical feature norm
FEATURE_NORM_IMAGES = ("astronaut", "chelsea", "coffee", "rocket", "camera", "horse", "clock")


@dataclass(frozen=True)
class RidgeProjection:
    """``t = weight @ u + bias``: ``weight`` ``[1280, 384]``, ``bias`` ``[1280]`` (float64)."""

    weight: torch.Tensor
    bias: torch.Tensor

    def __call__(self, u: torch.Tensor) -> torch.Tensor:
        return u @ self.weight.T + self.bias


@dataclass(frozen=True)
class ProjectionFit:
    """The shipped quantities and how they were chosen."""

    projection: RidgeProjection
    ridge_lambda: float
    cv_cosine: dict[float, float]
    logit_scale: float
    median_row_norm: float
    median_feature_norm: float


# ---------------------------------------------------------------------------------- data
def imagenet_class_names() -> list[str]:
    """The 1000 ImageNet-1k class names in index order (torchvision metadata, no download)."""
    return list(EfficientNet_B0_Weights.IMAGENET1K_V1.meta["categories"])


@torch.inference_mode()
def prompt_embeddings(
    text_tower: BertModel, tokenizer: PreTrainedTokenizerBase, class_names: Sequence[str]
) -> torch.Tensor:
    """``u_c`` for ``"a photo of a {c}."``: ``[C, 384]`` float64 on the CPU, unit rows."""
    prompts = [PROMPT_TEMPLATE.format(name) for name in class_names]
    batch = tokenizer(prompts, padding="longest", return_tensors="pt").to(text_tower.device)
    ids, mask = batch["input_ids"], batch["attention_mask"]
    return sentence_embeddings(text_tower, text_tower.embeddings.word_embeddings(ids), mask).double().cpu()


def classifier_directions(classifier: nn.Linear) -> torch.Tensor:
    """``y_c = w_c / ||w_c||``: ``[C, 1280]`` float64 on the CPU."""
    return F.normalize(classifier.weight.detach().double().cpu(), dim=1)


# ---------------------------------------------------------------------------------- ridge
def fit_ridge(u: torch.Tensor, y: torch.Tensor, ridge_lambda: float) -> RidgeProjection:
    """Eq. (1): ridge regression of ``y`` on ``u`` with an unpenalised intercept."""
    u_mean, y_mean = u.mean(0), y.mean(0)
    uc, yc = u - u_mean, y - y_mean
    gram = uc.T @ uc + ridge_lambda * torch.eye(u.shape[1], dtype=u.dtype)
    weight = torch.linalg.solve(gram, uc.T @ yc).T
    return RidgeProjection(weight=weight, bias=y_mean - weight @ u_mean)


def mean_cosine(predicted: torch.Tensor, targets: torch.Tensor) -> float:
    """``(1/C) sum_c cos(predicted_c, targets_c)``."""
    return float(F.cosine_similarity(predicted, targets, dim=1).mean())


def ridge_path_predictions(
    u_fit: torch.Tensor, y_fit: torch.Tensor, u_new: torch.Tensor, grid: Sequence[float]
) -> Iterator[torch.Tensor]:
    """Predictions of eq. (1) at ``u_new`` for every ``lambda`` in ``grid`` from one thin SVD.

    With ``U_c = A S V^T`` the ridge fit is ``P^T = V diag(s / (s^2 + lambda)) A^T Y_c``
    (Hastie, Tibshirani & Friedman, ESL 2nd ed., eq. 3.47), so each ``lambda`` costs one product."""
    u_mean, y_mean = u_fit.mean(0), y_fit.mean(0)
    left, singular, right_t = torch.linalg.svd(u_fit - u_mean, full_matrices=False)
    coordinates = (u_new - u_mean) @ right_t.T
    response = left.T @ (y_fit - y_mean)
    for ridge_lambda in grid:
        yield (coordinates * (singular / (singular**2 + ridge_lambda))) @ response + y_mean


def cross_validate_lambda(
    u: torch.Tensor,
    y: torch.Tensor,
    grid: Sequence[float] = LAMBDA_GRID,
    n_folds: int = N_FOLDS,
    seed: int = SEED,
) -> tuple[float, dict[float, float]]:
    """The ``lambda`` of ``grid`` with the best K-fold mean held-out cosine, and the whole curve."""
    folds = np.array_split(np.random.default_rng(seed).permutation(u.shape[0]), n_folds)
    scores = np.zeros((n_folds, len(grid)))
    for fold, held in enumerate(folds):
        keep = np.setdiff1d(np.arange(u.shape[0]), held)
        for index, predicted in enumerate(ridge_path_predictions(u[keep], y[keep], u[held], grid)):
            scores[fold, index] = mean_cosine(predicted, y[held])
    curve = dict(zip(grid, scores.mean(0).tolist(), strict=True))
    return max(curve, key=curve.__getitem__), curve


def retrieval_accuracy(queries: torch.Tensor, keys: torch.Tensor, k: int) -> float:
    """Fraction of rows ``i`` whose key ``i`` is among the ``k`` keys most cosine-similar to query ``i``."""
    similarity = F.normalize(queries, dim=1) @ F.normalize(keys, dim=1).T
    top = similarity.topk(k, dim=1).indices
    return float((top == torch.arange(len(queries))[:, None]).any(dim=1).double().mean())


def heldout_retrieval(
    u: torch.Tensor,
    y: torch.Tensor,
    n_heldout: int = N_HELDOUT_CLASSES,
    n_folds: int = N_FOLDS,
    seed: int = SEED,
) -> dict[str, float | int | list[int]]:
    """Fit on all but ``n_heldout`` seeded classes (lambda by CV on those), retrieve the held-out ones."""
    order = np.random.default_rng(seed).permutation(u.shape[0])
    held, fit = np.sort(order[:n_heldout]), np.sort(order[n_heldout:])
    ridge_lambda, curve = cross_validate_lambda(u[fit], y[fit], n_folds=n_folds, seed=seed)
    predicted = fit_ridge(u[fit], y[fit], ridge_lambda)(u[held])
    return {
        "n_fit_classes": len(fit),
        "n_heldout_classes": n_heldout,
        "heldout_classes": held.tolist(),
        "ridge_lambda": ridge_lambda,
        "cv_mean_cosine": curve[ridge_lambda],
        "heldout_mean_cosine": mean_cosine(predicted, y[held]),
        "top1": retrieval_accuracy(predicted, y[held], 1),
        "top5": retrieval_accuracy(predicted, y[held], 5),
        "chance_top1": 1 / n_heldout,
        "chance_top5": 5 / n_heldout,
    }


# ---------------------------------------------------------------------------------- scale
@torch.inference_mode()
def pooled_feature_norms(
    image_tower: EfficientNet, image_names: Sequence[str] = FEATURE_NORM_IMAGES
) -> torch.Tensor:
    """``||f_i||`` of scikit-image photographs through the tower's timm evaluation transform."""
    transform = timm.data.create_transform(**timm.data.resolve_data_config({}, model=image_tower))
    images = [Image.fromarray(getattr(skimage.data, name)()).convert("RGB") for name in image_names]
    parameter = next(image_tower.parameters())
    batch = torch.stack([transform(image) for image in images]).to(parameter.device, parameter.dtype)
    features = image_tower.forward_head(image_tower.forward_features(batch), pre_logits=True)
    return features.float().norm(dim=1).cpu()


# ---------------------------------------------------------------------------------- fit + asset
def fit_projection(
    image_tower: EfficientNet,
    text_tower: BertModel,
    tokenizer: PreTrainedTokenizerBase,
    n_folds: int = N_FOLDS,
    seed: int = SEED,
) -> tuple[ProjectionFit, torch.Tensor, torch.Tensor]:
    """The shipped fit on all 1000 classes, plus the data ``(u, y)`` it was fitted to."""
    u = prompt_embeddings(text_tower, tokenizer, imagenet_class_names())
    y = classifier_directions(image_tower.classifier)
    ridge_lambda, curve = cross_validate_lambda(u, y, n_folds=n_folds, seed=seed)
    row_norm = float(image_tower.classifier.weight.detach().double().norm(dim=1).median())
    feature_norm = float(pooled_feature_norms(image_tower).double().median())
    fit = ProjectionFit(
        projection=fit_ridge(u, y, ridge_lambda),
        ridge_lambda=ridge_lambda,
        cv_cosine=curve,
        logit_scale=row_norm * feature_norm,
        median_row_norm=row_norm,
        median_feature_norm=feature_norm,
    )
    return fit, u, y


def asset_tensors(fit: ProjectionFit) -> dict[str, torch.Tensor]:
    """What ``text_projection.safetensors`` holds (float32)."""
    return {
        "weight": fit.projection.weight.float().contiguous(),
        "bias": fit.projection.bias.float().contiguous(),
        "logit_scale": torch.tensor(fit.logit_scale, dtype=torch.float32),
    }


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def write_asset(fit: ProjectionFit, heldout: dict, output_dir: Path, n_folds: int, seed: int) -> Path:
    """Write ``text_projection.safetensors`` and its ``text_projection.json`` report into ``output_dir``."""
    output_dir.mkdir(parents=True, exist_ok=True)
    tensors_path = output_dir / PROJECTION_FILE.name
    save_file(asset_tensors(fit), str(tensors_path), metadata={"ridge_lambda": repr(fit.ridge_lambda)})
    report = {
        "made_by": "python -m medot.backbones.lite_projection (see its module docstring for the maths)",
        "map": "t = weight @ u + bias; u: unit all-MiniLM-L6-v2 embedding (384); "
        "t: EfficientNet-Lite0 pooled-feature space (1280)",
        "targets": "L2-normalised ImageNet-1k classifier rows of EfficientNet-Lite0",
        "prompt_template": PROMPT_TEMPLATE,
        "class_names": "torchvision EfficientNet_B0_Weights.IMAGENET1K_V1.meta['categories']",
        "ridge_lambda": fit.ridge_lambda,
        "lambda_selection": f"{n_folds}-fold CV over all 1000 classes (seed {seed}), max mean held-out cosine",
        "cv_mean_cosine": {repr(k): v for k, v in fit.cv_cosine.items()},
        "heldout_retrieval": heldout,
        "logit_scale": fit.logit_scale,
        "logit_scale_rule": "median classifier-row norm x median pooled-feature norm of scikit-image photos "
        + str(list(FEATURE_NORM_IMAGES)),
        "median_row_norm": fit.median_row_norm,
        "median_feature_norm": fit.median_feature_norm,
        "inputs": {
            "efficientnet_lite0_weights_sha256": _sha256(efficientnet_weights_file()),
            "minilm_weights_sha256": _sha256(minilm_dir() / "model.safetensors"),
            "torch": torch.__version__,
        },
    }
    (output_dir / "text_projection.json").write_text(json.dumps(report, indent=2) + "\n")
    return tensors_path


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m medot.backbones.lite_projection",
        description="Fit the lite text->image projection (ridge, closed form) and logit scale, report held-out "
        "ImageNet class retrieval, and write the asset.",
    )
    parser.add_argument(
        "--output-dir", type=Path, default=ASSET_DIR, help=f"where to write the asset (default: {ASSET_DIR})"
    )
    parser.add_argument(
        "--folds", type=int, default=N_FOLDS, help=f"cross-validation folds for lambda (default: {N_FOLDS})"
    )
    parser.add_argument(
        "--seed", type=int, default=SEED, help=f"seed of the folds and the held-out split (default: {SEED})"
    )
    args = parser.parse_args(argv)

    image_tower = load_image_tower()
    text_tower, tokenizer, _ = load_text_tower()
    fit, u, y = fit_projection(image_tower, text_tower, tokenizer, n_folds=args.folds, seed=args.seed)
    heldout = heldout_retrieval(u, y, n_folds=args.folds, seed=args.seed)
    path = write_asset(fit, heldout, args.output_dir, args.folds, args.seed)
    print(f"lambda = {fit.ridge_lambda:.4g} (CV mean cosine {fit.cv_cosine[fit.ridge_lambda]:.4f})")
    print(
        f"held-out retrieval of {heldout['n_heldout_classes']} classes (fit on {heldout['n_fit_classes']}, "
        f"lambda {heldout['ridge_lambda']:.4g}): top-1 {heldout['top1']:.1%}, top-5 {heldout['top5']:.1%} "
        f"(chance {heldout['chance_top1']:.0%} / {heldout['chance_top5']:.0%})"
    )
    print(
        f"logit_scale = {fit.logit_scale:.2f} (median row norm {fit.median_row_norm:.3f} "
        f"x median feature norm {fit.median_feature_norm:.2f})"
    )
    print(f"wrote {path} and {path.with_suffix('.json')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
