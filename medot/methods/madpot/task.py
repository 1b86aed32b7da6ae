r"""MADPOT and the MVFA baseline as :class:`medot.train.TrainingTask` s, and the few-shot training run.

MADPOT's loss per batch (the issue's item 6; MadCLIP's weighting):

.. math:: \mathcal{L} = \sum_l \Big[\mathrm{CE}(z^{(l)}, y) + \lambda_{CL}\,\mathcal{L}^{(l)}_{CL}
   + \mathbb{1}_{masks}\big(\mathrm{Focal} + \mathrm{Dice}\big)(p^{(l)}, \text{mask})\Big]
   + \lambda_{div}\,\mathrm{div}(t)

with :math:`z^{(l)}` the POT logits, :math:`\mathcal{L}_{CL}` the sigmoid contrastive loss and
:math:`p^{(l)}` the layer's per-patch abnormal probability on the segmentation features (both
terms only for the rows whose masks are ground truth). ``--no-pot`` / ``--no-cl`` drop the CE /
CL terms (and the branch from the maps), ``seg_loss=False`` drops focal + Dice.

Training runs on cached tokens (:mod:`.data`), Adam (AdamW with weight decay 0) at lr 1e-3, betas
(0.5, 0.999), batch 16, 60 epochs, and keeps the **last** epoch: no model selection on test data.
With a validation set carved from ``valid/`` (disjoint from the support set) the best epoch by its
image AUROC is kept instead.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from medot.backbones.base import VisionLanguageBackbone
from medot.methods.madpot.baselines import MvfaModel
from medot.methods.madpot.config import MADPOT, MVFA_BASELINE, MadpotConfig, MadpotError
from medot.methods.madpot.data import EncodedSupport
from medot.methods.madpot.losses import (
    contrastive_loss,
    pot_cross_entropy,
    prompt_diversity,
    segmentation_loss,
    soft_masks,
)
from medot.methods.madpot.model import MadpotModel
from medot.train import EventHandler, TensorBatches, TrainConfig, Trainer, TrainingTask, TrainResult, seed_everything


class _ValidationMixin:
    """Image AUROC on a validation set carved from ``valid/`` (disjoint from the support set), when
    one is given: the trainer then keeps the best epoch by it. Never the test split."""

    validation: EncodedSupport | None = None

    def validation_score(self) -> float | None:
        if self.validation is None:
            return None
        from medot.eval import image_auroc

        model = self.model
        grid = max(model.grids.values(), key=lambda hw: hw[0] * hw[1])
        device = next(model.parameters()).device
        tokens = {layer: t.to(device) for layer, t in self.validation.tokens.items()}
        _, scores = model(tokens, grid)
        return image_auroc(scores.cpu().numpy(), self.validation.labels.numpy())


class MadpotTask(_ValidationMixin, TrainingTask):
    """MADPOT's loss on batches ``(labels, masks, has_mask, object_index, *tokens per layer)``."""

    def __init__(self, model: MadpotModel, backbone_name: str = "") -> None:
        super().__init__()
        self.model = model
        self.backbone_name = backbone_name
        self.last_prompt_mass: Tensor | None = None

    def training_step(self, batch: Sequence[Tensor]) -> dict[str, Tensor]:
        labels, masks, has_mask, object_index, *layer_tokens = batch
        model, config = self.model, self.model.config
        tokens = dict(zip(model.layers, layer_tokens, strict=True))
        prompts = model.object_prompts(object_index)
        outputs = model.layer_outputs(tokens, prompts)
        zero = labels.new_zeros((), dtype=torch.float32)
        ce, cl, seg = zero, zero, zero
        masses = []
        for layer, output in outputs.items():
            if output.pot_det is not None:
                ce = ce + pot_cross_entropy(output.pot_det.logits, labels)
                masses.append(output.pot_det.plan.sum(-2))  # [B, 2, K] mass per prompt
            if output.cl_logits is not None:
                cl = cl + contrastive_loss(output.cl_logits, labels)
            if config.seg_loss and bool(has_mask.any()):
                probability = output.patch_probability()[has_mask].view(-1, *model.grids[layer])
                seg = seg + segmentation_loss(probability, soft_masks(masks[has_mask], model.grids[layer]))
        loss = ce + config.lambda_cl * cl + seg
        terms = {"ce": ce.detach(), "cl": cl.detach(), "seg": seg.detach()}
        if config.lambda_diversity > 0:
            diversity = torch.stack([prompt_diversity(p) for p in prompts.unbind(0)]).mean()
            loss = loss + config.lambda_diversity * diversity
            terms["diversity"] = diversity.detach()
        if masses:
            per_prompt = torch.stack(masses).mean((0, 1))  # [2, K]
            self.last_prompt_mass = per_prompt.detach().cpu()
            terms["prompt_mass_max"] = (per_prompt.amax(-1) / config.mass).mean().detach()
        return {"loss": loss, **terms}

    def checkpoint_tensors(self) -> dict[str, Tensor]:
        return self.model.learned_state()

    def load_checkpoint_tensors(self, tensors: dict[str, Tensor]) -> None:
        self.model.load_learned_state(tensors)

    def parameter_groups(self) -> list[dict[str, Any]]:
        params = list(self.model.adapters.parameters()) + [self.model.prompts.context]
        return [{"params": params}]

    def checkpoint_meta(self) -> dict[str, Any]:
        return {"method": MADPOT, "backbone": self.backbone_name, "objects": list(self.model.object_names)}


class MvfaTask(_ValidationMixin, TrainingTask):
    """The MVFA baseline's loss: focal + Dice on the text maps (rows with masks) + BCE on the
    detection probabilities, summed over layers."""

    def __init__(self, model: MvfaModel, backbone_name: str = "") -> None:
        super().__init__()
        self.model = model
        self.backbone_name = backbone_name

    def training_step(self, batch: Sequence[Tensor]) -> dict[str, Tensor]:
        labels, masks, has_mask, _object_index, *layer_tokens = batch
        model = self.model
        tokens = dict(zip(model.layers, layer_tokens, strict=True))
        seg_maps, det_probs = model.text_maps(tokens)
        zero = labels.new_zeros((), dtype=torch.float32)
        seg, det = zero, zero
        for layer in model.layers:
            probability = det_probs[layer].clamp(1e-6, 1 - 1e-6)
            det = det + torch.nn.functional.binary_cross_entropy(probability, labels.float())
            if model.config.seg_loss and bool(has_mask.any()):
                maps = seg_maps[layer][has_mask].view(-1, *model.grids[layer])
                seg = seg + segmentation_loss(maps, soft_masks(masks[has_mask], model.grids[layer]))
        return {"loss": seg + det, "seg": seg.detach(), "det": det.detach()}

    def checkpoint_tensors(self) -> dict[str, Tensor]:
        state = self.model.learned_state()
        return {k: v for k, v in state.items() if not k.startswith("memory.")}

    def load_checkpoint_tensors(self, tensors: dict[str, Tensor]) -> None:
        self.model.load_learned_state(tensors)

    def checkpoint_meta(self) -> dict[str, Any]:
        return {"method": MVFA_BASELINE, "backbone": self.backbone_name}


# ---------------------------------------------------------------------------------- training
@dataclass
class FitResult:
    """A trained model and how its training went."""

    model: MadpotModel | MvfaModel
    result: TrainResult
    prompt_mass: list[list[float]] | None


def token_channels(support: EncodedSupport) -> dict[str, int]:
    return {layer: int(tokens.shape[-1]) for layer, tokens in support.tokens.items()}


def support_batches(supports: Sequence[EncodedSupport], batch_size: int) -> TensorBatches:
    """Shuffled batches over the union of ``supports`` (object ``i`` = ``supports[i]``)."""
    layers = list(supports[0].tokens)
    labels = torch.cat([s.labels for s in supports])
    masks = torch.cat([s.masks for s in supports])
    has_mask = torch.cat([s.has_mask for s in supports])
    objects = torch.cat([torch.full((len(s.labels),), i, dtype=torch.long) for i, s in enumerate(supports)])
    tokens = [torch.cat([s.tokens[layer] for s in supports]) for layer in layers]
    return TensorBatches(labels, masks, has_mask, objects, *tokens, batch_size=batch_size)


def train_config(config: MadpotConfig, *, device: str, progress: bool, out_dir: Path | None) -> TrainConfig:
    """Adam (AdamW, weight decay 0), constant lr (no warm-up, min lr = lr), last epoch kept."""
    return TrainConfig(
        epochs=config.epochs, optimizer="adamw", lr=config.lr, betas=config.betas, weight_decay=0.0,
        warmup_epochs=0, min_lr=config.lr, seed=config.seed, device=device, progress=progress,
        checkpoint_dir=out_dir,
    )


def fit(
    method: str,
    backbone: VisionLanguageBackbone,
    supports: Sequence[EncodedSupport],
    object_names: Sequence[str],
    config: MadpotConfig,
    *,
    device: str = "cpu",
    progress: bool = True,
    out_dir: Path | None = None,
    on_event: EventHandler | None = None,
    should_stop: Callable[[], bool] | None = None,
    resume: bool = False,
    validation: EncodedSupport | None = None,
) -> FitResult:
    """Train ``method`` (``madpot`` or ``mvfa``) on the encoded support sets of ``object_names``.

    ``supports`` are all that training sees (tokens of the support images only). The MVFA baseline
    takes one object; its memory bank is then filled with the normal shots' adapted tokens.
    """
    if not supports or len(supports) != len(object_names):
        raise MadpotError("fit needs one encoded support set per object name")
    seed_everything(config.seed)
    first = supports[0]
    layers = tuple(first.tokens)
    localised = any(bool(s.has_mask.any()) for s in supports)
    if method == MADPOT:
        model = MadpotModel(backbone, config, layers, token_channels(first), first.grids, object_names,
                            localised=localised)
        task: TrainingTask = MadpotTask(model, backbone.name)
    elif method == MVFA_BASELINE:
        if len(supports) != 1:
            raise MadpotError("the MVFA baseline trains on one object at a time")
        model = MvfaModel(backbone, config, layers, token_channels(first), first.grids, object_names[0],
                          localised=localised)
        task = MvfaTask(model, backbone.name)
    else:
        raise MadpotError(f"unknown trained method {method!r}; choose madpot or mvfa")
    task.validation = validation
    task.to(device)
    trainer = Trainer(train_config(config, device=device, progress=progress, out_dir=out_dir))
    result = trainer.fit(task, support_batches(supports, config.batch_size), on_event=on_event,
                         should_stop=should_stop, resume=resume)
    model.eval()
    prompt_mass = None
    if isinstance(task, MadpotTask):
        if task.last_prompt_mass is not None:
            prompt_mass = task.last_prompt_mass.tolist()
    else:
        normal = first.labels == 0
        model.build_memory({layer: t[normal].to(device) for layer, t in first.tokens.items()})
    return FitResult(model, result, prompt_mass)

