"""Training glue for PRADOT: cached frozen features in, an ensemble of fitted prototype banks out.

PRADOT has no optimiser (prototypes move by an EMA toward OT barycentres), so it does not go
through :class:`medot.train.Trainer`; it shares the rest of :mod:`medot.train`: the frozen
backbone's patch tokens come from :class:`~medot.train.FeatureCache`, the image order of epoch
``e`` from :func:`~medot.train.epoch_generator` ``(seed, e)``, progress is one tqdm bar over all
OT batches of the run (so its ETA is the whole run's), and :class:`~medot.train.TrainEvent` s
("start", "step" after every OT batch with ``progress``, ``eta_seconds`` and the Sinkhorn
iterations of each member, "epoch", "cancelled", "done") report it live. A ``should_stop()``
callable is polled before every batch (cooperative cancellation). Small OT steps on the CPU run
on one thread (:data:`SINGLE_THREAD_PLAN_ENTRIES`; the caller's thread count is restored after).

Batches (:func:`plan_batches`): at most ``b = min(batch_size, plan_budget // (HW P), N)`` images
(at least one), where ``HW P`` is the largest per-image plan over the members; each epoch's
shuffled images are cut into ``ceil(N / b)`` batches whose sizes differ by at most one, so every
image is seen exactly once per epoch and every EMA step weighs about the same amount of data (the
authors drop the incomplete last batch instead; on small medical sets that loses up to ``b - 1``
images per epoch). An empty training set is refused.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
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

SINGLE_THREAD_PLAN_ENTRIES = 1 << 21
"""On the CPU, OT steps whose plan has at most this many entries (the ``cpu`` preset's budget) run
on one torch thread: their reductions are too small to gain from a second thread, and on a loaded
machine the thread pool's synchronisation dominates (measured on the shared 2-core machine, a
588 x 784 solve of 100 iterations: 0.19 s of CPU on one thread, 9.1 s on two)."""


@dataclass
class PradotTrainResult:
    """How :func:`train_pradot` ended; ``history`` has one record per finished epoch with the mean OT
    cost :math:`\\langle\\Gamma, M\\rangle` of each member (``ot_cost/<member>``) and their mean."""

    status: TrainStatus
    epochs_completed: int
    steps: int
    batch_size: int
    history: list[dict[str, float]] = field(default_factory=list)
    sinkhorn_iterations: list[dict[str, int]] = field(default_factory=list)
    """Per OT step, the Sinkhorn updates each member's solve took (by member name)."""
    batches_per_epoch: int = 0


def effective_batch_size(num_images: int, batch_size: int) -> int:
    """``min(batch_size, num_images)``; raises :class:`MedotError` for an empty training set."""
    if num_images < 1:
        raise MedotError(
            "PRADOT needs at least one normal training image, and the training set is empty: "
            "check the dataset folder (MVTec: <category>/train/good, MVFA: <Obj>_AD/valid/good/img)"
        )
    return min(batch_size, num_images)


def images_per_batch(num_images: int, batch_size: int, plan_budget: int | None, entries_per_image: int) -> int:
    """``min(batch_size, plan_budget // entries_per_image, num_images)``, at least 1 (module docstring)."""
    size = effective_batch_size(num_images, batch_size)
    if plan_budget is not None:
        size = min(size, max(1, plan_budget // max(1, entries_per_image)))
    return size


def plan_batches(order: torch.Tensor, batch_size: int) -> list[torch.Tensor]:
    """Cut the image order ``[N]`` into ``ceil(N / batch_size)`` batches of sizes differing by <= 1."""
    count = math.ceil(order.numel() / batch_size)
    return list(torch.tensor_split(order, count))


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
    model = PradotModel.build(
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
        sinkhorn_tol=config.sinkhorn_tol,
        warm_start=config.warm_start,
    )
    if config.init in ("data", "kmeans++"):
        for layer in config.layers:
            effective_batch_size(int(tokens[layer].shape[0]), 1)  # refuses an empty training set
        chosen = {layer: tokens[layer] for layer in config.layers}
        if config.init == "data":
            model.init_from_data(chosen, config.seed)
        else:
            model.init_kmeans_plus_plus(chosen, config.seed)
    return model


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
    batch_size = images_per_batch(num_images, config.batch_size, config.plan_budget, model.plan_entries_per_image())
    steps_per_epoch = math.ceil(num_images / batch_size)
    total_steps = config.epochs * steps_per_epoch
    device = torch.device(device)
    model.to(device)
    result = PradotTrainResult("completed", 0, 0, batch_size, batches_per_epoch=steps_per_epoch)

    def emit(kind: EventKind, metrics: dict[str, float] | None = None, message: str = "") -> None:
        if on_event is not None:
            on_event(TrainEvent(kind, result.epochs_completed, result.steps, config.epochs, metrics or {}, message))

    plan = f"{batch_size} x {model.plan_entries_per_image():,} plan entries"
    emit(
        "start",
        message=f"training {len(model.members)} prototype banks for {config.epochs} epochs "
        f"({steps_per_epoch} OT batches of up to {batch_size} images per epoch, {plan}) on {device}",
    )
    started = time.perf_counter()
    bar = tqdm(total=total_steps, desc="PRADOT", unit="batch", disable=not progress)
    threads = torch.get_num_threads()
    if device.type == "cpu" and batch_size * model.plan_entries_per_image() <= SINGLE_THREAD_PLAN_ENTRIES:
        torch.set_num_threads(1)
    with bar, _restore_threads(threads):
        for epoch in range(config.epochs):
            order = torch.randperm(num_images, generator=epoch_generator(config.seed, epoch))
            sums: dict[str, float] = {}
            bar.set_description(f"epoch {epoch + 1}/{config.epochs}")
            for step, chosen in enumerate(plan_batches(order, batch_size)):
                if should_stop is not None and should_stop():
                    result.status = "cancelled"
                    emit("cancelled", message=f"cancelled at epoch {epoch + 1}, batch {step + 1}")
                    return result
                batch = {layer: tokens[layer][chosen].to(device, torch.float32) for layer in model.layers}
                costs = {name: float(value) for name, value in model.fit_batch(batch).items()}
                iterations = {member.name: member.last_iterations for member in model.members}
                result.sinkhorn_iterations.append(iterations)
                for name, value in costs.items():
                    sums[name] = sums.get(name, 0.0) + value
                result.steps += 1
                elapsed = time.perf_counter() - started
                eta = elapsed / result.steps * (total_steps - result.steps)
                bar.set_postfix(ot_cost=f"{sum(costs.values()) / len(costs):.4f}",
                                sinkhorn_it=max(iterations.values()), refresh=False)
                bar.update(1)
                metrics = {"progress": result.steps / total_steps, "eta_seconds": eta,
                           "batch": float(step + 1), "batches_per_epoch": float(steps_per_epoch)}
                metrics.update({f"sinkhorn_iterations/{name}": float(value) for name, value in iterations.items()})
                emit("step", metrics, f"epoch {epoch + 1}/{config.epochs}, OT batch {step + 1}/{steps_per_epoch}, "
                                      f"ETA {_clock(eta)}")
            result.epochs_completed = epoch + 1
            record = {"epoch": float(epoch + 1)}
            record.update({f"ot_cost/{name}": total / steps_per_epoch for name, total in sums.items()})
            record["ot_cost"] = sum(sums.values()) / (steps_per_epoch * len(sums))
            recent = result.sinkhorn_iterations[-steps_per_epoch:]
            record["sinkhorn_iterations"] = sum(max(r.values()) for r in recent) / len(recent)
            result.history.append(record)
            emit("epoch", record, f"epoch {epoch + 1}/{config.epochs}: mean OT cost {record['ot_cost']:.4f}, "
                                  f"{record['sinkhorn_iterations']:.1f} Sinkhorn iterations per step")
    emit("done", dict(result.history[-1]), f"completed {config.epochs} epochs ({result.steps} batches)")
    return result


@contextmanager
def _restore_threads(threads: int) -> Iterator[None]:
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def _clock(seconds: float) -> str:
    """``75.2`` -> ``"1:15"``; an hour or more as ``"h:mm:ss"``."""
    whole = int(round(seconds))
    hours, rest = divmod(whole, 3600)
    return f"{hours}:{rest // 60:02d}:{rest % 60:02d}" if hours else f"{rest // 60}:{rest % 60:02d}"
