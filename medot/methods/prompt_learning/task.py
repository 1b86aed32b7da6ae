"""The training glue every prompt learner shares (:class:`PromptTask`, a :class:`medot.train.TrainingTask`).

A batch is ``(x [b, D], y [b])``: cached high-end image embeddings and labels. Subclasses define
:meth:`training_step` from the helpers here; this class provides

* :meth:`logits` - ``logit_scale * cos(x, w_{i,m})`` for modality ``m`` (:data:`HIGH` / :data:`LOW`);
* :meth:`validation_score` - high-end validation accuracy, when validation embeddings were given
  (then the trainer keeps the best epoch and may stop early); low-end data never enters a task;
* checkpoint metadata (method, backbone, classes, modalities, prompt-learner shape,
  hyper-parameters) and tensors: the learned parameters plus :meth:`artefacts`, tensors derived
  from them for display (stored under ``artefacts.``; loading a checkpoint recomputes them).
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor

from medot.methods.prompt_learning.prompts import HIGH, LOW, PromptLearner
from medot.train import TrainingTask

ARTEFACTS = "artefacts"


class PromptTask(TrainingTask):
    """A prompt learner trained on high-end images; ``method`` names it in checkpoints."""

    method: ClassVar[str]

    def __init__(
        self,
        prompts: PromptLearner,
        *,
        modalities: tuple[str, str],
        hyper_parameters: dict[str, Any],
        validation: tuple[Tensor, Tensor] | None = None,
    ) -> None:
        super().__init__()
        self.prompts = prompts
        self.logit_scale = float(prompts.backbone.logit_scale)
        self.modalities = tuple(modalities)
        self.hyper_parameters = dict(hyper_parameters)
        self.validates = validation is not None
        if validation is not None:
            self.register_buffer("val_embeddings", validation[0].float(), persistent=False)
            self.register_buffer("val_labels", validation[1].long(), persistent=False)

    # ------------------------------------------------------------------ scoring
    def logits(self, image_embedding: Tensor, modality: int) -> Tensor:
        """``[B, C]`` logits of images against the class embeddings of ``modality``."""
        return self.prompts.logits(image_embedding, modality, self.logit_scale)

    def validation_score(self) -> float | None:
        """High-end validation accuracy (None without validation embeddings)."""
        if not self.validates:
            return None
        predictions = self.logits(self.val_embeddings, HIGH).argmax(-1)
        return float((predictions == self.val_labels).float().mean())

    @torch.no_grad()
    def high_end_fit(self, embeddings: Tensor, labels: Tensor) -> dict[str, float]:
        """Accuracy and cross-entropy of the high-end prompts on ``(embeddings, labels)`` (for model
        selection on the validation split)."""
        logits = self.logits(embeddings.to(self.prompts.context.device), HIGH)
        labels = labels.to(logits.device)
        return {
            "accuracy": float((logits.argmax(-1) == labels).float().mean()),
            "cross_entropy": float(F.cross_entropy(logits, labels)),
        }

    # ------------------------------------------------------------------ checkpoints
    def checkpoint_meta(self) -> dict[str, Any]:
        high, low = self.modalities
        return {
            "method": self.method,
            "backbone": self.prompts.backbone.name,
            "class_names": list(self.prompts.class_names),
            "modalities": {"high": high, "low": low},
            "prompt_learner": self.prompts.config(),
            "logit_scale": self.logit_scale,
            "hyper_parameters": self.hyper_parameters,
        }

    def checkpoint_tensors(self) -> dict[str, Tensor]:
        artefacts = {f"{ARTEFACTS}.{name}": tensor for name, tensor in self.artefacts().items()}
        return {**super().checkpoint_tensors(), **artefacts}

    @torch.no_grad()
    def artefacts(self) -> dict[str, Tensor]:
        """Unit-norm class embeddings ``w_high`` / ``w_low`` ``[C, D]`` (none for image-conditioned
        prompts, which have no image-independent class embedding)."""
        if self.prompts.conditional:
            return {}
        return {
            "w_high": F.normalize(self.prompts(HIGH), dim=-1),
            "w_low": F.normalize(self.prompts(LOW), dim=-1),
        }
