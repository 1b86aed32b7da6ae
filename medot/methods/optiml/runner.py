"""Pretraining runs: :func:`pretrain` trains one method on an image pool through the shared trainer
and exports the encoder; :class:`PretrainRun` holds the optimisation recipe.

Recipe (the authors' MLVICX / CoBooM code, following VICReg): LARS (timm's ``Lars``, momentum 0.9,
trust coefficient 0.001) with base learning rate ``0.2 x global batch / 256``, weight decay 1e-6
(biases and normalisation parameters neither decayed nor adapted), 2 epochs of linear warm-up from
0, then cosine annealing to ``0.001 x lr`` (VICReg's end value), batch 64, 300 epochs. Under
``torchrun`` the batch is per process, BatchNorm layers use the global batch's statistics
(``SyncBatchNorm`` on CUDA, :class:`~medot.methods.optiml.sync.CrossRankBatchNorm` on CPU) and
the variance/covariance terms gather every rank's rows, so the run optimises the same loss as one
process with the global batch.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

from medot.methods.optiml.config import OptimlConfig
from medot.methods.optiml.data import ImagePool, ViewPairBatches
from medot.methods.optiml.encoder import Encoder, save_encoder
from medot.methods.optiml.model import OptimlModel
from medot.methods.optiml.sync import convert_batch_norms
from medot.methods.optiml.task import OptimlTask
from medot.train import EventHandler, TrainConfig, Trainer, TrainResult, seed_everything
from medot.train.distributed import is_distributed, is_main_process, rank_and_world_size, resolve_device

ENCODER_NAME = "encoder"
METRICS_NAME = "metrics.json"


@dataclass(frozen=True)
class PretrainRun:
    """Optimisation of one pretraining run (``batch_size`` per process; ``lr`` None: LARS's
    ``0.2 x global batch / 256``)."""

    epochs: int = 300
    batch_size: int = 64
    lr: float | None = None
    weight_decay: float = 1e-6
    warmup_epochs: int = 2
    seed: int = 0
    device: str = "auto"
    progress: bool = True
    optimizer: str = "lars"

    def learning_rate(self) -> float:
        if self.lr is not None:
            return self.lr
        _, world = rank_and_world_size()
        return 0.2 * self.batch_size * world / 256

    def train_config(self, checkpoint_dir: Path | None) -> TrainConfig:
        lr = self.learning_rate()
        return TrainConfig(
            epochs=self.epochs,
            optimizer=self.optimizer,
            lr=lr,
            weight_decay=self.weight_decay,
            momentum=0.9,
            warmup_epochs=min(self.warmup_epochs, self.epochs - 1),
            warmup="linear",
            warmup_lr=0.0,
            min_lr=0.001 * lr,
            seed=self.seed,
            device=self.device,
            checkpoint_dir=checkpoint_dir,
            progress=self.progress,
        )


@dataclass
class Pretrained:
    task: OptimlTask
    result: TrainResult
    encoder_path: Path | None


def build_task(config: OptimlConfig, seed: int) -> OptimlTask:
    """A freshly initialised task (seeded first, so every rank starts from the same weights)."""
    seed_everything(seed)
    return OptimlTask(OptimlModel(config, Encoder(config.encoder)))


def pretrain(
    pool: ImagePool,
    config: OptimlConfig,
    run: PretrainRun,
    out_dir: Path | None,
    *,
    on_event: EventHandler | None = None,
    should_stop: Callable[[], bool] | None = None,
    resume: bool = False,
) -> Pretrained:
    """Train ``config.method`` on ``pool``; writes ``<out>/model`` (+ ``resume``), ``<out>/encoder``
    and ``<out>/metrics.json`` (rank 0 only) and returns the trained task."""
    train_config = run.train_config(out_dir)  # validates epochs / lr before any model is built
    task = build_task(config, run.seed)
    device = resolve_device(run.device)
    if is_distributed():  # BatchNorm statistics of the global batch, as one process would compute
        if device.type == "cuda":
            import torch

            task = torch.nn.SyncBatchNorm.convert_sync_batchnorm(task)
        else:
            task = convert_batch_norms(task)
    task.hyper_parameters.update(pretraining=asdict(run) | {"lr": run.learning_rate()}, images=len(pool))
    batches = ViewPairBatches(pool, run.batch_size, config.image_size, run.seed, config.min_scale)
    result = Trainer(train_config).fit(task, batches, on_event=on_event, should_stop=should_stop, resume=resume)
    encoder_path = None
    if out_dir is not None and is_main_process() and result.status != "cancelled":
        encoder_path = out_dir / ENCODER_NAME
        extra = {"pretraining_method": config.method, "optiml": config.to_dict(), "history": result.history}
        save_encoder(encoder_path, task.model.encoder, config.image_size, extra)
        summary = {
            "method": config.method,
            "status": result.status,
            "images": len(pool),
            "config": config.to_dict(),
            "run": asdict(run) | {"lr": run.learning_rate()},
            "history": result.history,
            "encoder": str(encoder_path),
        }
        (out_dir / METRICS_NAME).write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    task.eval()
    return Pretrained(task, result, encoder_path)
