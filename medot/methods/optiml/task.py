"""OPTiML (and its baselines) as a :class:`medot.train.TrainingTask` on the shared engine.

A batch is ``(view_s, view_t, box_s, box_t)`` (:class:`medot.methods.optiml.data.ViewPairBatches`);
the step returns every loss term and the correspondence diagnostics, the trainer back-propagates
``"loss"`` (under ``torchrun`` through ``DistributedDataParallel``) and refuses a non-finite term
before any update, naming the terms. The learned state is the model's full ``state_dict``
(BatchNorm running statistics included). Parameter groups follow VICReg's LARS recipe: biases and
normalisation parameters (every 1-D parameter) get no weight decay and, with timm's ``Lars``
(which adapts only groups with weight decay), no layer-wise adaptation either.
"""

from __future__ import annotations

from typing import Any

from torch import Tensor

from medot.methods.optiml.config import OptimlConfig
from medot.methods.optiml.model import OptimlModel
from medot.train.task import TrainingTask


class OptimlTask(TrainingTask):
    def __init__(self, model: OptimlModel, hyper_parameters: dict[str, Any] | None = None) -> None:
        super().__init__()
        self.model = model
        self.hyper_parameters = dict(hyper_parameters or {})

    @property
    def config(self) -> OptimlConfig:
        return self.model.config

    def training_step(self, batch: tuple[Tensor, Tensor, Tensor, Tensor]) -> dict[str, Tensor]:
        view_s, view_t, box_s, box_t = batch
        return self.model(view_s, view_t, box_s, box_t)

    def parameter_groups(self) -> list[dict[str, Any]]:
        decayed = [p for p in self.parameters() if p.requires_grad and p.ndim > 1]
        plain = [p for p in self.parameters() if p.requires_grad and p.ndim <= 1]
        return [{"params": decayed}, {"params": plain, "weight_decay": 0.0}]

    def checkpoint_tensors(self) -> dict[str, Tensor]:
        return dict(self.state_dict())

    def checkpoint_meta(self) -> dict[str, Any]:
        return {
            "method": self.config.method,
            "backbone": f"encoder:{self.config.encoder}",
            "optiml": self.config.to_dict(),
            **self.hyper_parameters,
        }


def load_task(tensors: dict[str, Tensor], meta: dict[str, Any]) -> OptimlTask:
    """Rebuild a task from a ``model`` checkpoint written by the trainer (no weights package)."""
    from medot.methods.optiml.encoder import Encoder

    config = OptimlConfig.from_dict(meta["optiml"])
    model = OptimlModel(config, Encoder(config.encoder, pretrained=False))
    task = OptimlTask(model, {k: v for k, v in meta.items() if k not in ("method", "backbone", "optiml", "training")})
    task.load_checkpoint_tensors({name: t for name, t in tensors.items()})
    return task


__all__ = ["OptimlTask", "load_task"]
