"""Training glue for PRADOT: cached frozen features in, an ensemble of fitted prototype banks out.

PRADOT has no optimiser (prototypes move by an EMA toward OT barycentres), so it does not go
through :class:`medot.train.Trainer`; it shares the rest of :mod:`medot.train`: the frozen
backbone's patch tokens come from :class:`~medot.train.FeatureCache`, the image order of epoch
``e`` from :func:`~medot.train.epoch_generator` ``(seed, e)``, progress is a tqdm bar per epoch, and
:class:`~medot.train.TrainEvent` s ("start", "step", "epoch", "cancelled", "done") report it live.
A ``should_stop()`` callable is polled before every batch (cooperative cancellation).

Batches: ``min(batch_size, N)`` images, the last incomplete batch of an epoch dropped (the
authors' ``drop_last=True``): every OT step then sees the same number of embeddings, so each EMA
step weighs the same amount of data. A training set smaller than ``batch_size`` is trained in one
batch of all its images per epoch; an empty one is refused.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal

import torch
from tqdm import tqdm

from medot.backbones.base import VisionLanguageBackbone
from medot.errors import MedotError
from medot.methods.pradot.config import PradotConfig
from medot.methods.pradot.torch_model import PradotModel
from medot.train import EventHandler, FeatureCache, TrainEvent, epoch_generator
from medot.train.events import EventKind

TrainStatus = Literal["completed", "cancelled"]


@dataclass
class PradotTrainResult:
    """How :func:`train_pradot` ended; ``history`` has one record per finished epoch with the mean OT
    cost :math:`\\langle\\Gamma, M\\rangle` of each member (``ot_cost/<member>``) and their mean."""

    status: TrainStatus
    epochs_completed: int
    steps: int
    batch_size: int
    history: list[dict[str, float]] = field(default_factory=list)


def effective_batch_size(num_images: int, batch_size: int) -> int:
    """``min(batch_size, num_images)``; raises :class:`MedotError` for an empty training set."""
    if num_images < 1:
        raise MedotError(
            "PRADOT needs at least one normal training image, and the training set is empty: "
            "check the dataset folder (MVTec: <category>/train/good, MVFA: <Obj>_AD/valid/good/img)"
        )
    return min(batch_size, num_images)


def encode_tokens(
    backbone: VisionLanguageBackbone,
    paths: Sequence[str | os.PathLike],
    layers: Sequence[str],
    *,
    cache: FeatureCache | None = None,
    progress: bool = True,
) -> tuple[dict[str, torch.Tensor], dict[str, tuple[int, int]]]:
    """Patch tokens ``{layer: [N, HW, C]}`` (CPU, float32) and grids of ``paths``, through the cache."""
    cached = (cache or FeatureCache()).encode(backbone, list(paths), layers=tuple(layers), progress=progress)
    return {layer: cached.patch_tokens[layer][:, 0] for layer in layers}, dict(cached.grids)


def build_model(
    config: PradotConfig, tokens: Mapping[str, torch.Tensor], grids: Mapping[str, tuple[int, int]]
) -> PradotModel:
    """A fresh ensemble sized for ``tokens`` (channels) and ``grids``, over ``config.layers x alphas``."""
    return PradotModel.build(
        {layer: tokens[layer].shape[-1] for layer in config.layers},
        grids,
        config.layers,
        config.alphas,
        n_prototypes=config.n_prototypes,
        epsilon=config.epsilon,
        ema=config.ema,
        sinkhorn_iterations=config.sinkhorn_iterations,
        update_positions=config.update_positions,
        seed=config.seed,
    )


def train_pradot(
    model: PradotModel,
    tokens: Mapping[str, torch.Tensor],
    config: PradotConfig,
    *,
    device: torch.device | str = "cpu",
    on_event: EventHandler | None = None,
    should_stop: Callable[[], bool] | None = None,
    progress: bool = True,
) -> PradotTrainResult:
    """Fit every member of ``model`` on ``tokens`` ``{layer: [N, HW, C]}`` for ``config.epochs``.

    The model is moved to ``device`` and each batch's tokens follow it. Returns when the epochs are
    done or ``should_stop()`` returned True (the model then holds the prototypes reached so far).
    """
    counts = {int(t.shape[0]) for t in tokens.values()}
    if len(counts) > 1:
        raise ValueError(f"every layer needs tokens of the same images, got counts {sorted(counts)}")
    num_images = counts.pop() if counts else 0
    batch_size = effective_batch_size(num_images, config.batch_size)
    steps_per_epoch = num_images // batch_size
    device = torch.device(device)
    model.to(device)
    result = PradotTrainResult("completed", 0, 0, batch_size)

    def emit(kind: EventKind, metrics: dict[str, float] | None = None, message: str = "") -> None:
        if on_event is not None:
            on_event(TrainEvent(kind, result.epochs_completed, result.steps, config.epochs, metrics or {}, message))

    emit(
        "start",
        message=f"training {len(model.members)} prototype banks for {config.epochs} epochs "
        f"({steps_per_epoch} batches of {batch_size} images) on {device}",
    )
    for epoch in range(config.epochs):
        order = torch.randperm(num_images, generator=epoch_generator(config.seed, epoch))
        sums: dict[str, float] = {}
        bar = tqdm(total=steps_per_epoch, desc=f"epoch {epoch + 1}/{config.epochs}", unit="batch", disable=not progress)
        with bar:
            for step in range(steps_per_epoch):
                if should_stop is not None and should_stop():
                    result.status = "cancelled"
                    emit("cancelled", message=f"cancelled at epoch {epoch + 1}, batch {step + 1}")
                    return result
                chosen = order[step * batch_size : (step + 1) * batch_size]
                batch = {layer: tokens[layer][chosen].to(device, torch.float32) for layer in model.layers}
                costs = {name: float(value) for name, value in model.fit_batch(batch).items()}
                for name, value in costs.items():
                    sums[name] = sums.get(name, 0.0) + value
                result.steps += 1
                bar.set_postfix(ot_cost=f"{sum(costs.values()) / len(costs):.4f}", refresh=False)
                bar.update(1)
                emit("step", {"progress": result.steps / (config.epochs * steps_per_epoch)})
        result.epochs_completed = epoch + 1
        record = {"epoch": float(epoch + 1)}
        record.update({f"ot_cost/{name}": total / steps_per_epoch for name, total in sums.items()})
        record["ot_cost"] = sum(sums.values()) / (steps_per_epoch * len(sums))
        result.history.append(record)
        emit("epoch", record, f"epoch {epoch + 1}/{config.epochs}: mean OT cost {record['ot_cost']:.4f}")
    emit("done", dict(result.history[-1]), f"completed {config.epochs} epochs ({result.steps} batches)")
    return result
