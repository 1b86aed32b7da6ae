r"""Linear probing and fine-tuning of an image encoder on a labelled set, with label fractions.

Protocol (the OPTiML authors' MLVICX / CoBooM evaluation): a linear classifier on frozen pooled
features trained with AdamW at lr 3e-3 (**linear**), or the encoder and the classifier trained
together with AdamW at lr 3e-4 (**fine-tune**); cross-entropy; the state with the best
**validation AUROC** is kept (ties: lower validation cross-entropy), and training stops after
``patience`` = 10 epochs without improvement. Reported on the test split: accuracy, macro-F1 (:mod:`medot.eval.classification`)
and AUROC (scikit-learn ``roc_auc_score``: the positive class's probability for two classes,
one-vs-rest macro average over classes otherwise); for NIH ChestX-ray14 (multi-label, sigmoid +
binary cross-entropy) the mean AUROC over the 14 findings and each finding's AUROC
(:func:`load_nih_splits`). The linear probe standardises each feature with the training rows'
mean and spread; features constant on the training rows are ignored and near-silent ones are not
amplified beyond ten times a typical feature (:func:`_statistics`).

Leakage guard: the validation split is carved from the **training** data only (a seeded,
class-stratified 10 %, at least one image per class, unless the data has its own ``val``
folder), label fractions are drawn from what remains of the training split, and the test split
is encoded and scored only once, after training, with the kept state. Nothing is selected on it.

A label fraction ``f`` keeps ``max(1, round(f * n_c))`` training images of each class ``c``,
drawn by a generator seeded with ``(seed, class index)``; the seed also initialises the classifier.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.metrics import roc_auc_score
from torch import Tensor, nn

from medot.data.datasets import ImageRecord, load_class_folder_dataset
from medot.errors import DatasetLayoutError, MedotError
from medot.eval.classification import accuracy, macro_f1
from medot.train import TensorBatches, TrainConfig, Trainer, seed_everything
from medot.train.task import TrainingTask

LINEAR_LR, FINETUNE_LR = 3e-3, 3e-4
PATIENCE = 10
VAL_FRACTION = 0.1
#: a varying feature's spread is at least this fraction of the mean spread (see :func:`_statistics`)
SPREAD_FLOOR = 0.1


@dataclass(frozen=True)
class LabelledSplits:
    """Training, validation (carved from training) and test records of a class-folder dataset."""

    classes: tuple[str, ...]
    train: tuple[ImageRecord, ...]
    val: tuple[ImageRecord, ...]
    test: tuple[ImageRecord, ...]
    #: True: each record's ``label`` is a tuple of 0/1 per class (NIH ChestX-ray14 findings)
    multilabel: bool = False

    def label_tensor(self, split: str) -> Tensor:
        """``[N]`` class indices, or ``[N, C]`` float 0/1 targets when :attr:`multilabel`."""
        labels = [r.label for r in getattr(self, split)]
        return torch.tensor(labels, dtype=torch.float32) if self.multilabel else torch.tensor(labels)


def _stratified(records: Sequence[ImageRecord], n_classes: int, count: Callable[[int], int], seed: int):
    """Split ``records`` into (chosen, rest): ``count(n_c)`` of each class by a seeded draw."""
    chosen, rest = [], []
    for label in range(n_classes):
        group = sorted((r for r in records if r.label == label), key=lambda r: str(r.path))
        order = np.random.default_rng([seed, label]).permutation(len(group))
        k = count(len(group))
        chosen += [group[i] for i in order[:k]]
        rest += [group[i] for i in order[k:]]
    return chosen, rest


def load_labelled_splits(root: str | Path, seed: int = 0) -> LabelledSplits:
    """``<root>/train/<class>/`` and ``<root>/test/<class>/`` (and optionally ``<root>/val/<class>/``).

    Without a ``val`` folder, 10 % of each training class (at least one image) becomes the
    validation split (seeded by ``seed``); the test split is never used for that."""
    root = Path(root)
    if not (root / "train").is_dir() or not (root / "test").is_dir():
        raise DatasetLayoutError(
            f"{root} needs train/<class>/ and test/<class>/ folders of images (val/<class>/ optional)"
        )
    train = load_class_folder_dataset(root / "train")
    test = load_class_folder_dataset(root / "test")
    if test.label_names != train.label_names:
        raise DatasetLayoutError(f"{root}: train classes {list(train.label_names)} differ from test classes {list(test.label_names)}")
    n_classes = len(train.label_names)
    if n_classes < 2:
        raise DatasetLayoutError(f"{root}: a classifier needs at least two class folders")
    if (root / "val").is_dir():
        val = load_class_folder_dataset(root / "val")
        if val.label_names != train.label_names:
            raise DatasetLayoutError(f"{root}: val classes differ from train classes")
        return LabelledSplits(train.label_names, tuple(train), tuple(val), tuple(test))
    small = [name for name, n in train.counts().items() if n < 2]
    if small:
        raise DatasetLayoutError(f"{root}: classes {small} have fewer than 2 training images (one goes to validation)")
    val, rest = _stratified(list(train), n_classes, lambda n: max(1, round(VAL_FRACTION * n)), seed)
    return LabelledSplits(train.label_names, tuple(rest), tuple(val), tuple(test))


NIH_FINDINGS = (
    "Atelectasis", "Cardiomegaly", "Effusion", "Infiltration", "Mass", "Nodule", "Pneumonia",
    "Pneumothorax", "Consolidation", "Edema", "Emphysema", "Fibrosis", "Pleural_Thickening", "Hernia",
)
NIH_CSV, NIH_TRAIN_LIST, NIH_TEST_LIST = "Data_Entry_2017.csv", "train_val_list.txt", "test_list.txt"


def is_nih_layout(root: str | Path) -> bool:
    root = Path(root)
    return all((root / name).is_file() for name in (NIH_CSV, NIH_TRAIN_LIST, NIH_TEST_LIST))


def load_nih_splits(root: str | Path, seed: int = 0) -> LabelledSplits:
    """NIH ChestX-ray14: ``Data_Entry_2017.csv`` (``Image Index``, ``Finding Labels`` joined by
    ``|``, ``Patient ID``), the official ``train_val_list.txt`` / ``test_list.txt`` and the images
    anywhere under ``root`` (the release's ``images_0NN/images/`` folders). Labels: the 14
    findings, multi-hot ("No Finding" = all zeros). Validation: 10 % of the **patients** of
    train_val (seeded), so no patient is in both; the test list is used only for testing."""
    import csv

    root = Path(root)
    if not is_nih_layout(root):
        raise DatasetLayoutError(f"{root} lacks {NIH_CSV}, {NIH_TRAIN_LIST} or {NIH_TEST_LIST} (NIH ChestX-ray14 layout)")
    files = {path.name: path for path in root.rglob("*.png")}
    entries: dict[str, tuple[tuple[int, ...], str, str]] = {}
    with (root / NIH_CSV).open(newline="", encoding="utf-8") as handle:
        for row in csv.DictReader(handle):
            findings = set(row["Finding Labels"].split("|"))
            unknown = findings - set(NIH_FINDINGS) - {"No Finding"}
            if unknown:
                raise DatasetLayoutError(f"{NIH_CSV}: {row['Image Index']} has unknown findings {sorted(unknown)}")
            label = tuple(int(f in findings) for f in NIH_FINDINGS)
            entries[row["Image Index"]] = (label, row["Finding Labels"], row.get("Patient ID", row["Image Index"]))

    def records(list_name: str) -> list[tuple[ImageRecord, str]]:
        names = [line.strip() for line in (root / list_name).read_text(encoding="utf-8").splitlines() if line.strip()]
        missing = [name for name in names if name not in entries or name not in files]
        if missing:
            raise DatasetLayoutError(
                f"{list_name} names {len(missing)} images without a CSV row or a PNG under {root}, e.g. {missing[0]}"
            )
        return [(ImageRecord(files[name], entries[name][0], entries[name][1]), entries[name][2]) for name in names]

    train_val, test = records(NIH_TRAIN_LIST), records(NIH_TEST_LIST)
    patients = sorted({patient for _, patient in train_val})
    order = np.random.default_rng([seed, 1]).permutation(len(patients))
    val_patients = {patients[i] for i in order[: max(1, round(VAL_FRACTION * len(patients)))]}
    train = tuple(r for r, patient in train_val if patient not in val_patients)
    val = tuple(r for r, patient in train_val if patient in val_patients)
    if not train:
        raise DatasetLayoutError(f"{root}: too few patients in {NIH_TRAIN_LIST} to keep a training split")
    return LabelledSplits(NIH_FINDINGS, train, val, tuple(r for r, _ in test), multilabel=True)


def label_fraction(
    records: Sequence[ImageRecord], n_classes: int, fraction: float, seed: int, multilabel: bool = False
) -> list[ImageRecord]:
    """``max(1, round(fraction * n_c))`` images of each class (seeded; ``fraction`` in (0, 1]); for
    multi-label records, ``max(1, round(fraction * N))`` images drawn from all of them."""
    if not 0 < fraction <= 1:
        raise MedotError(f"label fraction {fraction}: give a number in (0, 1] (percent / 100)")
    if multilabel:
        ordered = sorted(records, key=lambda r: str(r.path))
        order = np.random.default_rng([seed, 0]).permutation(len(ordered))
        return [ordered[i] for i in order[: max(1, round(fraction * len(ordered)))]]
    chosen, _ = _stratified(records, n_classes, lambda n: max(1, round(fraction * n)), seed)
    return chosen


def classification_metrics(labels: np.ndarray, probabilities: np.ndarray) -> dict[str, float]:
    """Accuracy, macro-F1 and AUROC of ``probabilities`` ``[N, C]`` against integer ``labels``."""
    n_classes = probabilities.shape[1]
    predicted = probabilities.argmax(axis=1)
    return {
        "accuracy": accuracy(labels, predicted),
        "macro_f1": macro_f1(labels, predicted, labels=list(range(n_classes))),
        "auroc": auroc(labels, probabilities),
    }


def multilabel_metrics(targets: np.ndarray, probabilities: np.ndarray, classes: Sequence[str]) -> dict[str, float]:
    """Mean AUROC over the classes that have both outcomes in ``targets`` (NIH: the 14 findings),
    and each class's AUROC (NaN where undefined)."""
    per_class = {}
    for index, name in enumerate(classes):
        column = targets[:, index]
        per_class[f"auroc_{name}"] = (
            float(roc_auc_score(column, probabilities[:, index])) if 0 < column.sum() < len(column) else float("nan")
        )
    defined = [value for value in per_class.values() if not math.isnan(value)]
    return {"mean_auroc": float(np.mean(defined)) if defined else float("nan"), **per_class}


def auroc(labels: np.ndarray, probabilities: np.ndarray) -> float:
    """Binary: AUROC of class 1's probability; more classes: one-vs-rest macro AUROC. NaN when
    a class is missing from ``labels`` (undefined)."""
    n_classes = probabilities.shape[1]
    if len(np.unique(labels)) < n_classes:
        return float("nan")
    if n_classes == 2:
        return float(roc_auc_score(labels, probabilities[:, 1]))
    return float(roc_auc_score(labels, probabilities, multi_class="ovr", average="macro", labels=list(range(n_classes))))


class ProbeTask(TrainingTask):
    """A linear head on inputs that are either features (``body`` None) or images (``body`` maps
    ``[B, 3, S, S]`` to pooled features and is trained too). Validation score: AUROC (accuracy
    where AUROC is undefined)."""

    def __init__(
        self,
        body: nn.Module | None,
        dim: int,
        classes: Sequence[str],
        val: tuple[Tensor, Tensor],
        meta: dict[str, Any],
        multilabel: bool = False,
    ) -> None:
        super().__init__()
        self.multilabel = multilabel
        self.body = body
        self.head = nn.Linear(dim, len(classes))
        # VICReg's evaluate.py (linear and fine-tune): weights N(0, 0.01^2), bias 0; see the module docstring
        nn.init.normal_(self.head.weight, mean=0.0, std=0.01)
        nn.init.zeros_(self.head.bias)
        # features are standardised before the head (linear probe: training statistics, see _statistics; else 0 / 1)
        self.register_buffer("feature_mean", torch.zeros(dim))
        self.register_buffer("feature_std", torch.ones(dim))
        self.classes = tuple(classes)
        self.val_inputs, self.val_labels = val
        self.meta = meta

    def logits(self, inputs: Tensor) -> Tensor:
        features = inputs if self.body is None else self.body(inputs)
        return self.head((features - self.feature_mean) / self.feature_std)

    def training_step(self, batch: tuple[Tensor, Tensor]) -> dict[str, Tensor]:
        inputs, labels = batch
        if self.multilabel:
            return {"loss": F.binary_cross_entropy_with_logits(self.logits(inputs), labels)}
        return {"loss": F.cross_entropy(self.logits(inputs), labels)}

    @torch.no_grad()
    def probabilities(self, inputs: Tensor, batch_size: int = 64) -> np.ndarray:
        device = self.head.weight.device
        squash = torch.sigmoid if self.multilabel else (lambda logits: logits.softmax(-1))
        parts = [squash(self.logits(chunk.to(device))).cpu() for chunk in inputs.split(batch_size)]
        return torch.cat(parts).double().numpy()

    def validation_score(self) -> float:
        """Validation AUROC (accuracy where undefined) minus ``1e-6 x`` the validation
        cross-entropy: on a small validation split AUROC saturates early, and among equal AUROCs
        the lower cross-entropy (the better-calibrated, later state) is kept."""
        probabilities = self.probabilities(self.val_inputs)
        labels = self.val_labels.numpy()
        if self.multilabel:
            score = multilabel_metrics(labels, probabilities, self.classes)["mean_auroc"]
            eps = 1e-12
            bce = -(labels * np.log(probabilities + eps) + (1 - labels) * np.log(1 - probabilities + eps)).mean()
            return (0.0 if math.isnan(score) else score) - 1e-6 * min(float(bce), 1e3)
        score = auroc(labels, probabilities)
        score = accuracy(labels, probabilities.argmax(1)) if math.isnan(score) else score
        picked = probabilities[np.arange(len(labels)), labels].clip(1e-12, 1.0)
        return score - 1e-6 * min(float(-np.log(picked).mean()), 1e3)

    def checkpoint_tensors(self) -> dict[str, Tensor]:
        return dict(self.state_dict())

    def checkpoint_meta(self) -> dict[str, Any]:
        return {**self.meta, "classes": list(self.classes)}


class PooledEncoder(nn.Module):
    """``images -> mean over the dense map`` of an encoder with ``forward(x) -> [B, C, h, w]``."""

    def __init__(self, encoder: nn.Module) -> None:
        super().__init__()
        self.encoder = encoder

    def forward(self, images: Tensor) -> Tensor:
        return self.encoder(images).mean(dim=(2, 3))


@dataclass(frozen=True)
class ProbeRun:
    """One evaluation protocol: ``mode`` ``linear`` or ``finetune``; ``epochs`` at most (early
    stopping with ``patience`` on validation AUROC); ``lr`` None: 3e-3 (linear) / 3e-4 (fine-tune)."""

    mode: str = "linear"
    epochs: int = 100
    batch_size: int = 64
    lr: float | None = None
    weight_decay: float = 1e-4
    patience: int = PATIENCE
    device: str = "auto"
    progress: bool = False

    def __post_init__(self) -> None:
        if self.mode not in ("linear", "finetune"):
            raise MedotError(f"evaluation mode {self.mode!r}: use linear or finetune")
        if self.epochs < 1 or self.batch_size < 1 or self.patience < 1:
            raise MedotError("epochs, batch size and patience must be at least 1")

    def learning_rate(self) -> float:
        return self.lr if self.lr is not None else (LINEAR_LR if self.mode == "linear" else FINETUNE_LR)


@dataclass
class ProbeResult:
    fraction: float
    seed: int
    metrics: dict[str, float]
    best_epoch: int | None
    val_auroc: float | None
    train_images: int
    history: list[dict[str, float]] = field(default_factory=list)
    #: the trained classifier (the kept state), for saving
    classifier: ProbeTask | None = None


def _statistics(train: Tensor) -> tuple[Tensor, Tensor]:
    r"""Per-feature mean :math:`\mu_k` and spread :math:`s_k` of the training features: the probe's
    head sees :math:`(x_k - \mu_k) / s_k`.

    With :math:`\sigma_k` the standard deviation over the training rows and :math:`\bar\sigma` its
    mean over the features that vary,

    * :math:`s_k = +\infty` where feature ``k`` is constant on the training rows
      (:math:`\sigma_k \le 10^{-6} \max_j \sigma_j`): its standardised value is 0 on every image,
      so the head neither learns from it (nothing to learn) nor is moved by it on unseen images;
    * otherwise :math:`s_k = \max(\sigma_k,\ \text{SPREAD\_FLOOR}\cdot\bar\sigma)`: no feature is
      amplified more than ``1 / SPREAD_FLOOR`` = 10 times beyond a typical one.

    Why: pooled ReLU features are often exactly zero on every one of a few training images yet fire
    on an unseen one; divided by their near-zero training spread (formerly clamped at 1e-6) they
    reached 1e5-1e6 and saturated every logit, so the probe predicted one class for all test images
    (on the synthetic probe set at 64 px, 605 of ``lite``'s 1280 pooled features are zero on all 57
    training images). One row: spread 1 (nothing to estimate).
    """
    mean = train.mean(0)
    if len(train) < 2:
        return mean, torch.ones_like(mean)
    std = train.std(0)
    constant = std <= 1e-6 * std.max()
    if bool(constant.all()):
        return mean, torch.full_like(mean, math.inf)
    floor = SPREAD_FLOOR * std[~constant].mean()
    return mean, torch.where(constant, torch.full_like(std, math.inf), std.clamp_min(floor))


def run_probe(
    inputs: dict[str, Tensor],
    labels: dict[str, Tensor],
    classes: Sequence[str],
    fraction_indices: Sequence[int],
    seed: int,
    run: ProbeRun,
    *,
    body_factory: Callable[[], nn.Module] | None = None,
    meta: dict[str, Any] | None = None,
    fraction: float = 1.0,
    multilabel: bool = False,
) -> ProbeResult:
    """Train one classifier on ``inputs["train"][fraction_indices]``, keep the best validation
    state, then score ``inputs["test"]`` once. ``inputs`` are pooled features (linear) or images
    (fine-tune, with ``body_factory()`` giving a fresh trainable encoder)."""
    train_x, train_y = inputs["train"][list(fraction_indices)], labels["train"][list(fraction_indices)]
    val_x, test_x = inputs["val"], inputs["test"]
    seed_everything(seed)
    body = None if run.mode == "linear" else body_factory()
    dim = train_x.shape[1] if body is None else _output_dim(body, train_x[:2])
    task = ProbeTask(body, dim, classes, (val_x, labels["val"]), dict(meta or {}, mode=run.mode), multilabel)
    if body is None:
        mean, std = _statistics(train_x)
        task.feature_mean.copy_(mean)
        task.feature_std.copy_(std)
    config = TrainConfig(
        epochs=run.epochs,
        optimizer="adamw",
        lr=run.learning_rate(),
        weight_decay=run.weight_decay,
        warmup_epochs=0,
        seed=seed,
        patience=run.patience,
        device=run.device,
        progress=run.progress,
    )
    batches = TensorBatches(train_x, train_y, batch_size=min(run.batch_size, len(train_x)))
    result = Trainer(config).fit(task, batches)
    task.eval()
    probabilities = task.probabilities(test_x)
    if multilabel:
        metrics = multilabel_metrics(labels["test"].numpy(), probabilities, classes)
    else:
        metrics = classification_metrics(labels["test"].numpy(), probabilities)
    return ProbeResult(fraction, seed, metrics, result.best_epoch, result.best_score, len(train_x), result.history, task)


@torch.no_grad()
def _output_dim(body: nn.Module, sample: Tensor) -> int:
    was_training = body.training
    body.eval()
    dim = body(sample).shape[1]
    body.train(was_training)
    return int(dim)
