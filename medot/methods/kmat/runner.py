"""Train, select and evaluate K-MaT and its baselines on a cross-modal task.

The protocol (K-MaT paper, Sec. 4, following CoOp): ``shots`` high-end training images per class,
batch 4, SGD (momentum 0.9, weight decay 5e-4) at lr 0.0025 with one constant warm-up epoch at 1e-5
then cosine annealing, 50 epochs, seeds 1-3. Evaluation reports, on the test splits, accuracy and
macro-F1 on the high end (Hi), the low end (Lo) and their harmonic mean (H).

Leakage guard: :func:`fit_method` and :func:`grid_search` receive only a
:class:`~medot.methods.prompt_learning.crossmodal.HighEndData` (k-shot high-end training images and
high-end validation images); low-end images are encoded only by :func:`evaluate`, after training.
The lambdas of K-MaT are chosen by :func:`grid_search` on high-end validation accuracy (ties: lower
validation cross-entropy).
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Protocol

import torch
from torch import Tensor

from medot.backbones.base import VisionLanguageBackbone
from medot.checkpoint import checkpoint_paths, load_checkpoint, save_checkpoint
from medot.errors import MedotError
from medot.eval import accuracy, harmonic_mean_accuracy, macro_f1
from medot.methods.kmat.model import KMaTConfig, KMaTTask
from medot.methods.prompt_learning.baselines import (
    BaselineConfig,
    BiomedCoOpTask,
    CoCoOpTask,
    CoOpTask,
    KgCoOpTask,
    ZeroShotClassifier,
)
from medot.methods.prompt_learning.crossmodal import CrossModalTask, HighEndData
from medot.methods.prompt_learning.features import LabelledEmbeddings, ViewBatches, encode_records
from medot.methods.prompt_learning.knowledge import DescriptionEmbeddings, template_embeddings
from medot.methods.prompt_learning.prompts import HIGH, LOW, PromptLearner
from medot.methods.prompt_learning.task import PromptTask
from medot.train import EventHandler, FeatureCache, TrainConfig, Trainer, TrainResult, seed_everything
from medot.train.distributed import is_main_process, main_process_first

ZEROSHOT, ZEROSHOT_DESCRIPTIONS = "zeroshot", "zeroshot_desc"
TRAINED_METHODS = ("coop", "cocoop", "kgcoop", "biomedcoop", "kmat")
METHODS = (ZEROSHOT, ZEROSHOT_DESCRIPTIONS, *TRAINED_METHODS)
METRICS = ("acc_hi", "acc_lo", "acc_h", "f1_hi", "f1_lo", "f1_h")
BASELINE_N_CTX = 4


class TrainingCancelled(MedotError):
    """Training stopped on request before the last epoch; its state is saved for ``resume``."""


class Classifier(Protocol):
    def logits(self, image_embedding: Tensor, modality: int) -> Tensor: ...


@dataclass(frozen=True)
class RunConfig:
    """One run's protocol. ``views``: cached views per training image (view 0 plain, the others
    random resized crops + flips; one per image per epoch). ``patience``: None trains all epochs and
    keeps the last state (CoOp); a number validates on the high-end val split after every epoch,
    keeps the best epoch and stops after ``patience`` epochs without improvement."""

    shots: int = 16
    seed: int = 1
    epochs: int = 50
    batch_size: int = 4
    lr: float = 0.0025
    views: int = 4
    patience: int | None = None
    device: str = "auto"
    progress: bool = True

    def __post_init__(self) -> None:
        for name in ("shots", "epochs", "batch_size", "views"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")

    def train_config(self, checkpoint_dir: Path | None) -> TrainConfig:
        return TrainConfig(
            epochs=self.epochs,
            lr=self.lr,
            warmup_epochs=min(1, self.epochs - 1),
            seed=self.seed,
            patience=self.patience,
            device=self.device,
            checkpoint_dir=checkpoint_dir,
            progress=self.progress,
        )


@dataclass
class Fitted:
    """A trained task, how training ended, and its final high-end validation fit."""

    task: PromptTask
    result: TrainResult
    validation: dict[str, float]


@dataclass(frozen=True)
class MethodRun:
    """One method on one seed: test metrics (fractions), the model checkpoint and validation fit."""

    method: str
    seed: int
    metrics: dict[str, float]
    model_path: Path | None = None
    validation: dict[str, float] | None = None
    selection: dict[str, Any] | None = None
    """For a K-MaT run whose lambdas were searched: the chosen point and every grid point."""


def build_task(
    method: str,
    backbone: VisionLanguageBackbone,
    classes: Sequence[str],
    modalities: tuple[str, str],
    knowledge: DescriptionEmbeddings | None,
    kmat: KMaTConfig,
    validation: LabelledEmbeddings | None = None,
    baselines: BaselineConfig | None = None,
) -> PromptTask:
    """A fresh (randomly initialised: seed first) task for one of :data:`TRAINED_METHODS`; the
    baselines' weights come from ``baselines`` and are recorded in ``hyper_parameters``."""
    baselines = baselines or BaselineConfig()
    if knowledge is None and method in ("kmat", "biomedcoop"):
        raise ValueError(f"{method} needs the class descriptions' embeddings (knowledge)")
    common: dict[str, Any] = {
        "modalities": modalities,
        "validation": None if validation is None else (validation.plain, validation.labels),
    }
    if method == "kmat":
        prompts = kmat.prompt_learner(backbone, classes)
        return KMaTTask(prompts, knowledge, kmat, hyper_parameters=kmat.to_dict(), **common)
    conditional = method == "cocoop"
    prompts = PromptLearner(
        backbone,
        classes,
        n_ctx=BASELINE_N_CTX,
        conditional=conditional,
        meta_hidden=baselines.cocoop_meta_hidden if conditional else None,
    )
    if method == "coop":
        return CoOpTask(prompts, hyper_parameters={"n_ctx": BASELINE_N_CTX}, **common)
    if method == "cocoop":
        hyper = {"n_ctx": BASELINE_N_CTX, "meta_hidden": prompts.config()["meta_hidden"]}
        return CoCoOpTask(prompts, hyper_parameters=hyper, **common)
    if method == "kgcoop":
        reference = template_embeddings(backbone, classes)
        hyper = {"n_ctx": BASELINE_N_CTX, "lambda_kg": baselines.kgcoop_lambda, "kg_form": "mean(1 - cos)"}
        return KgCoOpTask(prompts, reference, baselines.kgcoop_lambda, hyper_parameters=hyper, **common)
    if method == "biomedcoop":
        hyper = {
            "n_ctx": BASELINE_N_CTX,
            "lambda_sccm": baselines.biomedcoop_lambda_sccm,
            "lambda_kdsp": baselines.biomedcoop_lambda_kdsp,
            "tau": baselines.biomedcoop_tau,
        }
        return BiomedCoOpTask(
            prompts,
            knowledge,
            lambda_sccm=baselines.biomedcoop_lambda_sccm,
            lambda_kdsp=baselines.biomedcoop_lambda_kdsp,
            tau=baselines.biomedcoop_tau,
            hyper_parameters=hyper,
            **common,
        )
    raise ValueError(f"unknown trained method {method!r}; choose from {', '.join(TRAINED_METHODS)}")


def fit_method(
    method: str,
    backbone: VisionLanguageBackbone,
    data: HighEndData,
    *,
    classes: Sequence[str],
    modalities: tuple[str, str],
    knowledge: DescriptionEmbeddings | None,
    run: RunConfig,
    kmat: KMaTConfig | None = None,
    baselines: BaselineConfig | None = None,
    out_dir: Path | None = None,
    cache: FeatureCache | None = None,
    on_event: EventHandler | None = None,
    should_stop: Callable[[], bool] | None = None,
    resume: bool = False,
) -> Fitted:
    """Train ``method`` on high-end data only; checkpoints go to ``out_dir`` (``model``, ``resume``)."""
    cache = cache or FeatureCache()
    kmat = kmat or KMaTConfig()
    with main_process_first("encoding the training images"):  # under torchrun: the cache is filled once
        train = encode_records(backbone, data.train, cache, views=run.views, seed=run.seed, progress=run.progress)
        val = encode_records(backbone, data.val, cache, progress=run.progress)
    seed_everything(run.seed)
    task = build_task(
        method,
        backbone,
        classes,
        modalities,
        knowledge,
        kmat,
        validation=val if run.patience is not None else None,
        baselines=baselines,
    )
    trainer = Trainer(run.train_config(out_dir))
    batches = ViewBatches(train, run.batch_size)
    result = trainer.fit(task, batches, on_event=on_event, should_stop=should_stop, resume=resume)
    task.eval()
    return Fitted(task, result, task.high_end_fit(val.plain, val.labels))


@torch.no_grad()
def evaluate(
    classifier: Classifier,
    backbone: VisionLanguageBackbone,
    task: CrossModalTask,
    cache: FeatureCache | None = None,
    progress: bool = True,
) -> dict[str, float]:
    """Test metrics: high-end images against the high-end class embeddings, low-end images against
    the low-end ones (fractions; ``*_h`` is the harmonic mean of Hi and Lo)."""
    cache = cache or FeatureCache()
    predictions = {}
    for modality, records in ((HIGH, task.high_end_test()), (LOW, task.low_end_test())):
        data = encode_records(backbone, records, cache, progress=progress)
        logits = classifier.logits(data.plain.to(backbone.device), modality)
        predictions[modality] = (data.labels.numpy(), logits.argmax(-1).cpu().numpy())
    return transfer_metrics(predictions[HIGH], predictions[LOW], len(task.classes))


def transfer_metrics(high: tuple[Any, Any], low: tuple[Any, Any], n_classes: int) -> dict[str, float]:
    """``(y_true, y_pred)`` per modality -> accuracy and macro-F1 (over all ``n_classes``) on Hi, Lo and H."""
    labels = list(range(n_classes))
    acc_hi, acc_lo = accuracy(*high), accuracy(*low)
    f1_hi, f1_lo = macro_f1(*high, labels=labels), macro_f1(*low, labels=labels)
    return {
        "acc_hi": acc_hi,
        "acc_lo": acc_lo,
        "acc_h": harmonic_mean_accuracy(acc_hi, acc_lo),
        "f1_hi": f1_hi,
        "f1_lo": f1_lo,
        "f1_h": harmonic_mean_accuracy(f1_hi, f1_lo),
    }


def chance_levels(task: CrossModalTask) -> dict[str, float]:
    """What guessing scores on the test splits: ``uniform`` = 1 / classes, and the majority-class
    rate of each test split (``majority_hi``, ``majority_lo``; label counts only, no image is read)."""
    levels = {"uniform": 1.0 / len(task.classes)}
    for key, records in (("majority_hi", task.high_end_test()), ("majority_lo", task.low_end_test())):
        counts = torch.bincount(torch.tensor([record.label for record in records]), minlength=len(task.classes))
        levels[key] = float(counts.max()) / max(1, len(records))
    return levels


def format_chance(levels: dict[str, float]) -> str:
    return (
        f"chance: 1/classes {100 * levels['uniform']:.1f}, majority class of the test split Hi "
        f"{100 * levels['majority_hi']:.1f} / Lo {100 * levels['majority_lo']:.1f} (accuracy, percent)"
    )


def zero_shot_classifier(
    method: str, backbone: VisionLanguageBackbone, classes: Sequence[str], knowledge: DescriptionEmbeddings | None
) -> ZeroShotClassifier:
    """``zeroshot``: hand-crafted templates for both modalities; ``zeroshot_desc``: the description
    ensembles :math:`\\bar p_{i,m}` of each modality."""
    if method == ZEROSHOT:
        templates = template_embeddings(backbone, classes)
        return ZeroShotClassifier(torch.stack([templates, templates]), backbone.logit_scale)
    if knowledge is None:
        raise ValueError(f"{method} needs the class descriptions' embeddings (knowledge)")
    return ZeroShotClassifier(knowledge.anchors(), backbone.logit_scale)


def run_method(
    method: str,
    backbone: VisionLanguageBackbone,
    task: CrossModalTask,
    knowledge: DescriptionEmbeddings | None,
    run: RunConfig,
    *,
    kmat: KMaTConfig | None = None,
    baselines: BaselineConfig | None = None,
    out_dir: Path | None = None,
    cache: FeatureCache | None = None,
    on_event: EventHandler | None = None,
    should_stop: Callable[[], bool] | None = None,
    resume: bool = False,
) -> MethodRun:
    """Train (unless zero-shot) and evaluate one method on one seed; test metrics are added to the
    model checkpoint's metadata under ``metrics``."""
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; choose from {', '.join(METHODS)}")
    task.require_descriptions(method)
    cache = cache or FeatureCache()
    if method in (ZEROSHOT, ZEROSHOT_DESCRIPTIONS):
        classifier = zero_shot_classifier(method, backbone, task.classes, knowledge)
        return MethodRun(method, run.seed, evaluate(classifier, backbone, task, cache, run.progress))
    fitted = fit_method(
        method,
        backbone,
        task.high_end_data(run.shots, run.seed),
        classes=task.classes,
        modalities=task.modalities,
        knowledge=knowledge,
        run=run,
        kmat=kmat,
        baselines=baselines,
        out_dir=out_dir,
        cache=cache,
        on_event=on_event,
        should_stop=should_stop,
        resume=resume,
    )
    return finish_run(method, fitted, backbone, task, run, cache)


def finish_run(
    method: str,
    fitted: Fitted,
    backbone: VisionLanguageBackbone,
    task: CrossModalTask,
    run: RunConfig,
    cache: FeatureCache,
) -> MethodRun:
    """Evaluate a trained task and record the test metrics in its checkpoint."""
    if fitted.result.status == "cancelled":
        resume_path = fitted.result.resume_path
        saved = (
            "nothing was saved (no output folder)"
            if resume_path is None
            else f"the state is in {resume_path}; run the same command with --resume to continue"
        )
        raise TrainingCancelled(
            f"{method} training was cancelled after {fitted.result.epochs_completed} epoch(s); {saved}"
        )
    with main_process_first("encoding the test images"):
        metrics = evaluate(fitted.task, backbone, task, cache, run.progress)
    model_path = fitted.result.model_path
    if model_path is not None and is_main_process():  # only rank 0 wrote it
        checkpoint = load_checkpoint(model_path)
        checkpoint.meta.update(
            task=task.name, shots=run.shots, seed=run.seed, metrics=metrics, validation=fitted.validation
        )
        save_checkpoint(model_path, checkpoint)
    return MethodRun(method, run.seed, metrics, model_path, fitted.validation)


@dataclass(frozen=True)
class GridPoint:
    lambda_anchor: float
    lambda_transport: float
    val_accuracy: float
    val_cross_entropy: float
    model_path: str | None


def grid_search(
    backbone: VisionLanguageBackbone,
    data: HighEndData,
    *,
    classes: Sequence[str],
    modalities: tuple[str, str],
    knowledge: DescriptionEmbeddings,
    run: RunConfig,
    kmat: KMaTConfig,
    lambdas_anchor: Sequence[float],
    lambdas_transport: Sequence[float],
    out_dir: Path,
    cache: FeatureCache | None = None,
    on_event: EventHandler | None = None,
    should_stop: Callable[[], bool] | None = None,
    resume: bool = False,
) -> tuple[Fitted, list[GridPoint], GridPoint]:
    """Train K-MaT for every ``(lambda_anchor, lambda_transport)`` pair on high-end data and pick the
    pair with the best high-end validation accuracy (ties: lower validation cross-entropy).

    ``should_stop`` is polled before every step of every point: a stop request ends the current
    point after its step, saves its resumable state and raises :class:`TrainingCancelled`; with
    ``resume=True`` finished points are reloaded from their folders (not retrained) and the
    interrupted one continues.

    Each point's run lives in ``out_dir/grid/anc<a>_fgw<b>``; the grid is written to
    ``out_dir/grid.json`` and the chosen model is copied to ``out_dir/model``. Returns the chosen
    fitted task, every grid point and the chosen point."""
    points: list[GridPoint] = []
    best: Fitted | None = None
    best_point: GridPoint | None = None
    for lambda_anchor in lambdas_anchor:
        for lambda_transport in lambdas_transport:
            config = replace(kmat, lambda_anchor=lambda_anchor, lambda_transport=lambda_transport)
            point_dir = out_dir / "grid" / f"anc{lambda_anchor:g}_fgw{lambda_transport:g}"
            fitted = fit_method(
                "kmat", backbone, data, classes=classes, modalities=modalities, knowledge=knowledge,
                run=run, kmat=config, out_dir=point_dir, cache=cache, on_event=on_event, should_stop=should_stop,
                resume=resume,
            )
            if fitted.result.status == "cancelled":
                raise TrainingCancelled(
                    f"the lambda grid was stopped in point lambda_anc {lambda_anchor:g}, lambda_fgw "
                    f"{lambda_transport:g} after {fitted.result.global_step} step(s) ({fitted.result.epochs_completed} "
                    f"whole epoch(s)); its state is in "
                    f"{fitted.result.resume_path}; run the same command with --resume to continue (finished points "
                    "are kept)"
                )
            model = fitted.result.model_path
            point = GridPoint(
                lambda_anchor,
                lambda_transport,
                fitted.validation["accuracy"],
                fitted.validation["cross_entropy"],
                None if model is None else str(model),
            )
            points.append(point)
            if best_point is None or (point.val_accuracy, -point.val_cross_entropy) > (
                best_point.val_accuracy,
                -best_point.val_cross_entropy,
            ):
                best, best_point = fitted, point
    if best is None or best_point is None:
        raise ValueError("the grid needs at least one lambda_anchor and one lambda_transport")
    if best.result.model_path is not None:
        best.result.model_path = out_dir / "model"
    if not is_main_process():  # under torchrun: rank 0 keeps the chosen model and writes grid.json
        return best, points, best_point
    out_dir.mkdir(parents=True, exist_ok=True)
    if best_point.model_path is not None:
        chosen_files, kept_files = checkpoint_paths(Path(best_point.model_path)), checkpoint_paths(out_dir / "model")
        for source, target in zip(chosen_files, kept_files, strict=True):
            shutil.copy2(source, target)
    grid = {
        "selection": "max high-end validation accuracy, ties: min validation cross-entropy",
        "points": [asdict(point) for point in points],
        "chosen": asdict(best_point),
    }
    (out_dir / "grid.json").write_text(json.dumps(grid, indent=2) + "\n")
    return best, points, best_point
