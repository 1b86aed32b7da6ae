"""The few-shot training loop shared by K-MaT, MADPOT and PRADOT (:class:`Trainer`).

One optimiser step on batch ``b`` at global step ``s``: set the lr to ``schedule(s)``
(:class:`~medot.train.schedule.WarmupCosineSchedule`), compute the task's loss terms (float16
autocast on CUDA when ``amp``), refuse non-finite terms before touching any parameter, then
back-propagate ``"loss"`` and step (through a ``GradScaler`` when ``amp``). After each epoch the
task's validation score decides the kept state and early stopping, and every ``checkpoint_every``
epochs the full training state is saved so that a resumed run continues exactly where it stopped:

* ``<checkpoint_dir>/resume`` - task tensors, best-so-far tensors, optimiser state, the
  Python/NumPy/torch(/CUDA) generators' states, the grad-scaler state and the loop position
  (epoch, step within it, best score, history), written also when a run is cancelled;
* ``<checkpoint_dir>/model`` - the final task tensors (the best epoch's, when there is a
  validation score) with the task's metadata and the training summary, written at the end.

Both go through :mod:`medot.checkpoint` (safetensors + JSON, atomic as a pair, keeping the
previous complete version), never pickle; resuming falls back to that previous state when the
writer was killed between renaming the new tensors and the new sidecar. The data
order of epoch ``e`` comes from a generator seeded by ``(seed, e)`` (:mod:`medot.train.data`), so
resuming mid-epoch replays the epoch's batches and skips those already taken.

Under ``torchrun`` (process group initialised by :func:`medot.train.distributed.distributed_session`
or the caller) the task is wrapped in ``DistributedDataParallel``, each rank trains on its shard
with a per-rank batch size (global batch = per-rank batch x world size), a stop request on any
rank stops all of them at the same step, the validation score is rank 0's, and only rank 0 writes
checkpoints, shows progress bars and emits events.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn
from tqdm import tqdm

from medot.checkpoint import TRAINING_STATE_KEY, Checkpoint, checkpoint_exists, load_checkpoint, save_checkpoint
from medot.errors import CheckpointError, MedotError
from medot.train.config import TrainConfig
from medot.train.data import BatchFactory, EpochContext, move_to_device
from medot.train.distributed import (
    any_rank,
    broadcast_from_main,
    rank_and_world_size,
    resolve_device,
    wrap_for_training,
)
from medot.train.events import EventHandler, EventKind, TrainEvent
from medot.train.schedule import WarmupCosineSchedule, apply_learning_rate, build_optimizer
from medot.train.state import (
    capture_rng,
    epoch_generator,
    load_optimizer_state,
    optimizer_state,
    restore_rng,
    seed_everything,
)
from medot.train.task import TrainingTask

RunStatus = Literal["completed", "early_stopped", "cancelled"]


@dataclass
class TrainResult:
    """How a :meth:`Trainer.fit` call ended. ``history`` holds one record per finished epoch
    (``epoch``, epoch-mean loss terms, ``lr``, ``val_score`` when validated)."""

    status: RunStatus
    epochs_completed: int
    global_step: int
    best_score: float | None
    best_epoch: int | None
    history: list[dict[str, float]]
    model_path: Path | None
    resume_path: Path | None


@dataclass
class _Progress:
    """Position and bookkeeping of the loop; saved as JSON in the resume checkpoint."""

    epoch: int = 0
    step_in_epoch: int = 0
    global_step: int = 0
    steps_per_epoch: int = 0
    best_score: float | None = None
    best_epoch: int | None = None
    bad_epochs: int = 0
    stopped_early: bool = False
    history: list[dict[str, float]] = field(default_factory=list)
    loss_sums: dict[str, float] = field(default_factory=dict)

    def running_means(self) -> dict[str, float]:
        return {name: total / max(1, self.step_in_epoch) for name, total in self.loss_sums.items()}


class Trainer:
    """Runs :class:`TrainingTask` objects under one :class:`TrainConfig`."""

    def __init__(self, config: TrainConfig) -> None:
        self.config = config

    def fit(
        self,
        task: TrainingTask,
        train_batches: BatchFactory,
        *,
        on_event: EventHandler | None = None,
        should_stop: Callable[[], bool] | None = None,
        resume: bool = False,
    ) -> TrainResult:
        """Train ``task`` on the batches ``train_batches(EpochContext)`` returns for each epoch.

        ``on_event`` receives :class:`TrainEvent` s; ``should_stop()`` is polled before every step
        and, when it returns True, the run saves a resumable checkpoint (if ``checkpoint_dir`` is
        set), emits "cancelled" and returns. With ``resume=True`` the run continues from
        ``<checkpoint_dir>/resume`` when it exists (and starts afresh otherwise); it must use the
        same optimisation settings and data. The task ends holding the kept state (best epoch).
        """
        return _Run(self.config, task, train_batches, on_event, should_stop).execute(resume)


class _Run:
    """State of one :meth:`Trainer.fit` call."""

    def __init__(
        self,
        config: TrainConfig,
        task: TrainingTask,
        train_batches: BatchFactory,
        on_event: EventHandler | None,
        should_stop: Callable[[], bool] | None,
    ) -> None:
        self.config = config
        self.task = task
        self.train_batches = train_batches
        self.rank, self.world_size = rank_and_world_size()
        self.is_main = self.rank == 0
        self.on_event = on_event if self.is_main else None
        self.should_stop = should_stop  # polled on every rank; any_rank() makes the stop collective
        self.device = resolve_device(config.device)
        self.amp = config.amp and self.device.type == "cuda"
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.amp)
        self.progress = _Progress()
        self.best_tensors: dict[str, torch.Tensor] | None = None
        self.schedule: WarmupCosineSchedule | None = None
        self.optimizer: torch.optim.Optimizer
        directory = config.checkpoint_dir
        self.resume_path = directory / "resume" if directory is not None else None
        self.model_path = directory / "model" if directory is not None else None

    # ------------------------------------------------------------------ the loop
    def execute(self, resume: bool) -> TrainResult:
        config = self.config
        try:
            self.task.to(self.device).train()
            if resume and self.resume_path is not None and checkpoint_exists(self.resume_path):
                # a writer killed between its two renames leaves the previous state complete: use it
                state = load_checkpoint(self.resume_path, fallback=True)
                self._restore(state)
                start = f"resuming after epoch {self.progress.epoch}, step {self.progress.step_in_epoch}"
                if "loaded_from" in state.meta:
                    start += f", from the previous saved state {state.meta['loaded_from']}"
            else:
                seed_everything(config.seed)
                self.optimizer = build_optimizer(self.task.parameter_groups(), config)
                start = f"training {config.epochs} epochs on {self.device}"
            progress = self.progress
            model = wrap_for_training(self.task, self.device)
            self._emit("start", message=start)
            while progress.epoch < config.epochs and not progress.stopped_early:
                context = EpochContext(
                    progress.epoch, epoch_generator(config.seed, progress.epoch), self.rank, self.world_size
                )
                batches = self.train_batches(context)
                if not self._run_epoch(model, batches, self._count_steps(batches)):
                    return self._cancel()
                self._end_epoch()
            return self._finish()
        except Exception as error:
            self._emit("error", message=str(error))
            raise

    def _count_steps(self, batches: Any) -> int:
        progress = self.progress
        try:
            steps = len(batches)
        except TypeError:
            raise TypeError("train_batches must return a sized iterable (a list, TensorBatches or DataLoader)") from None
        if steps == 0:
            raise MedotError("the training data yields no batches: add training images or lower the batch size")
        if progress.steps_per_epoch not in (0, steps):
            raise MedotError(
                f"epoch {progress.epoch + 1} has {steps} batches but earlier epochs had {progress.steps_per_epoch}: "
                "the training data changed (a resumed run must use the same data and batch size)"
            )
        progress.steps_per_epoch = steps
        if self.schedule is None:
            self.schedule = WarmupCosineSchedule.from_config(self.config, steps)
        return steps

    def _run_epoch(self, model: nn.Module, batches: Any, steps: int) -> bool:
        """Steps of the current epoch from ``progress.step_in_epoch`` on; False when cancelled."""
        progress = self.progress
        skip = progress.step_in_epoch
        with tqdm(
            total=steps,
            initial=skip,
            desc=f"epoch {progress.epoch + 1}/{self.config.epochs}",
            unit="step",
            disable=not (self.config.progress and self.is_main),
        ) as bar:
            for index, batch in enumerate(batches):
                if index < skip:
                    continue
                cancel = self.should_stop is not None and bool(self.should_stop())
                if any_rank(cancel, self.device):
                    return False
                lr = self._step(model, batch, steps)
                postfix = {name: f"{value:.4f}" for name, value in progress.running_means().items()}
                bar.set_postfix({**postfix, "lr": f"{lr:.2e}"}, refresh=False)
                bar.update(1)
        return True

    def _step(self, model: nn.Module, batch: Any, steps: int) -> float:
        progress = self.progress
        lr = apply_learning_rate(self.optimizer, self.schedule, progress.global_step)
        batch = move_to_device(batch, self.device)
        autocast = torch.autocast(self.device.type, dtype=torch.float16) if self.amp else contextlib.nullcontext()
        with autocast:
            terms = model(batch)
        values = _loss_values(terms)
        if any_rank(not all(math.isfinite(v) for v in values.values()), self.device):
            raise self._diverged(values, steps)
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(terms["loss"]).backward()
        self.scaler.step(self.optimizer)
        self.scaler.update()
        progress.global_step += 1
        progress.step_in_epoch += 1
        for name, value in values.items():
            progress.loss_sums[name] = progress.loss_sums.get(name, 0.0) + value
        if progress.global_step % self.config.event_every_steps == 0:
            done = progress.global_step / (self.config.epochs * steps)
            self._emit("step", {**progress.running_means(), "lr": lr, "progress": done})
        return lr

    def _end_epoch(self) -> None:
        config, progress = self.config, self.progress
        record: dict[str, float] = {"epoch": progress.epoch + 1, **progress.running_means()}
        record["lr"] = self.schedule(progress.global_step - 1)
        progress.epoch += 1
        progress.step_in_epoch = 0
        progress.loss_sums = {}
        score = self._validate()
        if score is not None:
            record["val_score"] = score
            if progress.best_score is None or score > progress.best_score + config.min_delta:
                progress.best_score, progress.best_epoch, progress.bad_epochs = score, progress.epoch, 0
                self.best_tensors = {name: t.detach().clone() for name, t in self.task.checkpoint_tensors().items()}
            else:
                progress.bad_epochs += 1
                progress.stopped_early = config.patience is not None and progress.bad_epochs >= config.patience
        progress.history.append(record)
        metrics = dict(record) if progress.best_score is None else {**record, "best_score": progress.best_score}
        self._emit("epoch", metrics, _describe_epoch(record, progress, config.epochs))
        if progress.epoch % config.checkpoint_every == 0 or progress.epoch == config.epochs or progress.stopped_early:
            self._save_resume()
        if progress.stopped_early:
            self._emit(
                "early_stop",
                {"best_score": progress.best_score, "best_epoch": progress.best_epoch},
                f"no improvement for {config.patience} epochs: stopping and keeping epoch {progress.best_epoch} "
                f"(validation score {progress.best_score:.4f})",
            )

    def _validate(self) -> float | None:
        self.task.eval()
        with torch.no_grad():
            score = self.task.validation_score()
        self.task.train()
        if score is None:
            return None
        score = broadcast_from_main(float(score))  # every rank keeps and stops on rank 0's score
        if not math.isfinite(score):
            raise MedotError(
                f"the validation score after epoch {self.progress.epoch} is {score}: "
                "the model diverged or the validation set is empty"
            )
        return float(score)

    # ------------------------------------------------------------------ endings
    def _finish(self) -> TrainResult:
        progress = self.progress
        status: RunStatus = "early_stopped" if progress.stopped_early else "completed"
        if self.best_tensors is not None:
            self.task.load_checkpoint_tensors(self.best_tensors)
        if self.is_main and self.model_path is not None:
            summary = {
                "status": status,
                "config": self.config.to_dict(),
                "world_size": self.world_size,
                "epochs_completed": progress.epoch,
                "best_score": progress.best_score,
                "best_epoch": progress.best_epoch,
                "history": progress.history,
            }
            meta = {**self.task.checkpoint_meta(), "training": summary}
            save_checkpoint(self.model_path, Checkpoint(self.task.checkpoint_tensors(), meta))
            self._emit("checkpoint", message=f"saved the trained model to {self.model_path}")
        final = progress.history[-1] if progress.history else {}
        self._emit("done", dict(final), f"{status} after {progress.epoch} epochs ({progress.global_step} steps)")
        return self._result(status)

    def _cancel(self) -> TrainResult:
        self._save_resume()
        where = f"epoch {self.progress.epoch + 1}, step {self.progress.step_in_epoch}"
        if self.resume_path is None:
            message = f"cancelled at {where}; nothing saved (no checkpoint_dir)"
        else:
            message = f"cancelled at {where}; run again with resume=True to continue"
        self._emit("cancelled", message=message)
        return self._result("cancelled")

    def _result(self, status: RunStatus) -> TrainResult:
        progress = self.progress
        return TrainResult(
            status=status,
            epochs_completed=progress.epoch,
            global_step=progress.global_step,
            best_score=progress.best_score,
            best_epoch=progress.best_epoch,
            history=list(progress.history),
            model_path=self.model_path if status != "cancelled" else None,
            resume_path=self.resume_path,
        )

    def _diverged(self, values: dict[str, float], steps: int) -> MedotError:
        progress = self.progress
        terms = ", ".join(f"{name}={value:.4g}" for name, value in values.items())
        kept = "" if self.resume_path is None else f"; the last checkpoint in {self.resume_path.parent} is intact"
        return MedotError(
            f"training diverged at epoch {progress.epoch + 1}/{self.config.epochs}, step {progress.step_in_epoch + 1}"
            f"/{steps}: non-finite loss terms ({terms}). The parameters were not updated{kept}. "
            "Lower the learning rate or check the inputs for NaN/inf values."
        )

    # ------------------------------------------------------------------ checkpoints
    def _save_resume(self) -> None:
        if not self.is_main or self.resume_path is None:
            return
        tensors = {f"task.{name}": t for name, t in self.task.checkpoint_tensors().items()}
        if self.best_tensors is not None:
            tensors.update({f"best.{name}": t for name, t in self.best_tensors.items()})
        optim_tensors, optim_scalars = optimizer_state(self.optimizer)
        rng_tensors, rng_meta = capture_rng()
        trainer = {
            "config": self.config.to_dict(),
            "progress": asdict(self.progress),
            "optimizer_scalars": optim_scalars,
            "rng": rng_meta,
            "grad_scaler": self.scaler.state_dict(),
        }
        meta = {**self.task.checkpoint_meta(), TRAINING_STATE_KEY: trainer}
        save_checkpoint(self.resume_path, Checkpoint({**tensors, **optim_tensors, **rng_tensors}, meta))
        self._emit("checkpoint", message=f"saved the training state to {self.resume_path}")

    def _restore(self, checkpoint: Checkpoint) -> None:
        trainer = checkpoint.meta.get(TRAINING_STATE_KEY)
        if not isinstance(trainer, dict):
            raise CheckpointError(f"{self.resume_path} is not a training-state checkpoint")
        differences = self.config.optimisation_differences(trainer["config"])
        task_meta = self.task.checkpoint_meta()
        differences += [
            f"{key}: {checkpoint.meta.get(key)!r} -> {task_meta.get(key)!r}"
            for key in ("method", "backbone")
            if checkpoint.meta.get(key) != task_meta.get(key)
        ]
        if differences:
            raise CheckpointError(
                f"{self.resume_path} was written by a different run ({'; '.join(differences)}): "
                "resume with the same settings, or choose another checkpoint_dir"
            )
        self.task.load_checkpoint_tensors(_with_prefix(checkpoint.tensors, "task."))
        self.optimizer = build_optimizer(self.task.parameter_groups(), self.config)
        load_optimizer_state(self.optimizer, checkpoint.tensors, trainer["optimizer_scalars"])
        restore_rng(checkpoint.tensors, trainer["rng"])
        if self.amp and trainer["grad_scaler"]:
            self.scaler.load_state_dict(trainer["grad_scaler"])
        self.progress = _Progress(**trainer["progress"])
        best = _with_prefix(checkpoint.tensors, "best.")
        self.best_tensors = {name: t.to(self.device) for name, t in best.items()} or None

    def _emit(self, kind: EventKind, metrics: dict[str, float] | None = None, message: str = "") -> None:
        if self.on_event is None:
            return
        progress = self.progress
        epoch = progress.epoch + 1 if progress.step_in_epoch else progress.epoch
        self.on_event(TrainEvent(kind, epoch, progress.global_step, self.config.epochs, metrics or {}, message))


def _loss_values(terms: Any) -> dict[str, float]:
    """The loss terms as floats (one device synchronisation), checking their form."""
    if not isinstance(terms, dict) or "loss" not in terms:
        raise TypeError("training_step must return a dict of scalar tensors with the total under 'loss'")
    wrong = [name for name, value in terms.items() if not torch.is_tensor(value) or value.numel() != 1]
    if wrong:
        raise TypeError(f"training_step must return scalar tensors; {wrong} are not")
    values = torch.stack([value.detach().float().reshape(()) for value in terms.values()]).cpu().tolist()
    return dict(zip(terms, values))


def _with_prefix(tensors: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    return {name[len(prefix) :]: t for name, t in tensors.items() if name.startswith(prefix)}


def _describe_epoch(record: dict[str, float], progress: _Progress, epochs: int) -> str:
    terms = ", ".join(f"{name} {value:.4f}" for name, value in record.items() if name not in ("epoch", "lr", "val_score"))
    text = f"epoch {progress.epoch}/{epochs}: {terms}, lr {record['lr']:.2e}"
    if "val_score" in record:
        text += f", val {record['val_score']:.4f} (best {progress.best_score:.4f} at epoch {progress.best_epoch})"
    return text
