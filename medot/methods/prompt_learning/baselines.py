r"""The baselines of K-MaT's Table 2 on the same code path: zero-shot, CoOp, CoCoOp, KgCoOp, BiomedCoOp.

All are trained on high-end images only, with the cross-entropy of :mod:`.losses`; none has
modality-specific prompts, so the same prompts serve both modalities at test time.

* **Zero-shot** (:class:`ZeroShotClassifier`): hand-crafted templates
  (:func:`medot.zeroshot.class_text_embeddings`, the same for both modalities), or the description
  ensemble :math:`\bar p_{i,m}` of each modality.
* **CoOp** (Zhou et al., IJCV 2022): one context shared by all classes (:class:`CoOpTask`).
* **CoCoOp** (Zhou et al., CVPR 2022): CoOp's context shifted by a meta-network of the image
  embedding (:class:`CoCoOpTask`; see :class:`~.prompts.PromptLearner`).
* **KgCoOp** (Yao et al., CVPR 2023): :math:`\mathcal{L}_{ce} + \lambda\mathcal{L}_{kg}` with
  :math:`\mathcal{L}_{kg} = \frac1C\sum_i(1 - \cos(w_i, w^{clip}_i))` and :math:`\lambda = 8`, the
  form and weight of the authors' code (:class:`KgCoOpTask`).
* **BiomedCoOp** (Koleilat et al., CVPR 2025): :math:`\mathcal{L}_{ce} + \lambda_1\mathcal{L}_{SCCM}
  + \lambda_2\mathcal{L}_{KDSP}` with the authors' defaults :math:`\lambda_1 = \lambda_2 = 1`,
  :math:`\tau = 1.5` (:class:`BiomedCoOpTask`). Its descriptions are the high-end ones (it knows
  no other modality). The outlier rule is per class and image-independent
  (:func:`~.losses.prune_descriptions`); the authors' code instead scores description *number k*
  of every class jointly on each batch, which needs equal description counts per class.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from medot.methods.prompt_learning.knowledge import DescriptionEmbeddings, normalised_mean
from medot.methods.prompt_learning.losses import (
    distillation_loss,
    knowledge_guidance_loss,
    prompt_cross_entropy,
    prune_descriptions,
    semantic_consistency_loss,
)
from medot.methods.prompt_learning.prompts import HIGH, PromptLearner, cosine_logits
from medot.methods.prompt_learning.task import PromptTask

KGCOOP_LAMBDA = 8.0
BIOMEDCOOP_LAMBDA_SCCM = 1.0
BIOMEDCOOP_LAMBDA_KDSP = 1.0
BIOMEDCOOP_TAU = 1.5


@dataclass(frozen=True)
class BaselineConfig:
    r"""The baselines' own weights (defaults: their authors'). ``kgcoop_lambda``: KgCoOp's
    :math:`\lambda` (8); ``biomedcoop_lambda_sccm`` / ``biomedcoop_lambda_kdsp``: BiomedCoOp's
    :math:`\lambda_1`, :math:`\lambda_2` (1, 1); ``biomedcoop_tau``: its outlier-pruning threshold
    (1.5); ``cocoop_meta_hidden``: CoCoOp's meta-net width (None: ``embed_dim // 16``)."""

    kgcoop_lambda: float = KGCOOP_LAMBDA
    biomedcoop_lambda_sccm: float = BIOMEDCOOP_LAMBDA_SCCM
    biomedcoop_lambda_kdsp: float = BIOMEDCOOP_LAMBDA_KDSP
    biomedcoop_tau: float = BIOMEDCOOP_TAU
    cocoop_meta_hidden: int | None = None

    def __post_init__(self) -> None:
        weights = (self.kgcoop_lambda, self.biomedcoop_lambda_sccm, self.biomedcoop_lambda_kdsp)
        if min(weights) < 0 or self.biomedcoop_tau <= 0:
            raise ValueError("the baselines' lambdas must be >= 0 and the BiomedCoOp pruning threshold > 0")
        if self.cocoop_meta_hidden is not None and self.cocoop_meta_hidden < 1:
            raise ValueError("the CoCoOp meta-net width must be >= 1")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class ZeroShotClassifier:
    """Fixed class embeddings ``[2, C, D]`` (modality, class) scored by ``logit_scale * cos``."""

    def __init__(self, class_embeddings: Tensor, logit_scale: float) -> None:
        self.class_embeddings = F.normalize(class_embeddings.float(), dim=-1)
        self.logit_scale = float(logit_scale)

    def logits(self, image_embedding: Tensor, modality: int) -> Tensor:
        text = self.class_embeddings[modality].to(image_embedding.device)
        return cosine_logits(image_embedding, text, self.logit_scale)


class CoOpTask(PromptTask):
    """CoOp: cross-entropy on high-end images."""

    method = "coop"

    def training_step(self, batch: tuple[Tensor, Tensor]) -> dict[str, Tensor]:
        images, labels = batch
        ce = F.cross_entropy(self.logits(images, HIGH), labels)
        return {"loss": ce, "ce": ce}


class CoCoOpTask(CoOpTask):
    """CoCoOp: CoOp's loss with an image-conditioned (meta-network) prompt learner."""

    method = "cocoop"

    def __init__(self, prompts: PromptLearner, **kwargs: Any) -> None:
        if not prompts.conditional:
            raise ValueError("CoCoOp needs a conditional prompt learner (conditional=True)")
        super().__init__(prompts, **kwargs)


class KgCoOpTask(PromptTask):
    """KgCoOp: cross-entropy + ``lambda_kg`` x distance to the hand-crafted prompts' embeddings."""

    method = "kgcoop"

    def __init__(self, prompts: PromptLearner, reference: Tensor, lambda_kg: float = KGCOOP_LAMBDA, **kwargs: Any):
        super().__init__(prompts, **kwargs)
        self.lambda_kg = lambda_kg
        self.register_buffer("reference", reference.float(), persistent=False)

    def training_step(self, batch: tuple[Tensor, Tensor]) -> dict[str, Tensor]:
        images, labels = batch
        class_embedding = self.prompts(HIGH)
        ce = prompt_cross_entropy(images, class_embedding, labels, self.logit_scale)
        kg = knowledge_guidance_loss(class_embedding, self.reference)
        return {"loss": ce + self.lambda_kg * kg, "ce": ce, "kg": kg}


def pruned_teacher(knowledge: DescriptionEmbeddings, modality: int, tau: float) -> tuple[Tensor, list[int]]:
    """Per-class normalised means ``[C, D]`` of the descriptions kept by :func:`prune_descriptions`,
    and how many were kept per class."""
    means, kept = [], []
    for index in range(knowledge.n_classes):
        rows = knowledge.rows(modality, index)
        mask = prune_descriptions(rows, tau)
        means.append(normalised_mean(rows[mask]))
        kept.append(int(mask.sum()))
    return torch.stack(means), kept


class BiomedCoOpTask(PromptTask):
    """BiomedCoOp: cross-entropy + SCCM (to the description mean) + KDSP (from the pruned
    description ensemble's zero-shot logits), on the high-end descriptions."""

    method = "biomedcoop"

    def __init__(
        self,
        prompts: PromptLearner,
        knowledge: DescriptionEmbeddings,
        *,
        lambda_sccm: float = BIOMEDCOOP_LAMBDA_SCCM,
        lambda_kdsp: float = BIOMEDCOOP_LAMBDA_KDSP,
        tau: float = BIOMEDCOOP_TAU,
        **kwargs: Any,
    ) -> None:
        super().__init__(prompts, **kwargs)
        self.lambda_sccm, self.lambda_kdsp = lambda_sccm, lambda_kdsp
        teacher, self.kept_descriptions = pruned_teacher(knowledge, HIGH, tau)
        self.register_buffer("anchors", knowledge.anchors()[HIGH], persistent=False)
        self.register_buffer("teacher", teacher, persistent=False)

    def training_step(self, batch: tuple[Tensor, Tensor]) -> dict[str, Tensor]:
        images, labels = batch
        class_embedding = self.prompts(HIGH)
        logits = cosine_logits(images, class_embedding, self.logit_scale)
        ce = F.cross_entropy(logits, labels)
        sccm = semantic_consistency_loss(class_embedding, self.anchors)
        kdsp = distillation_loss(logits, cosine_logits(images, self.teacher, self.logit_scale))
        loss = ce + self.lambda_sccm * sccm + self.lambda_kdsp * kdsp
        return {"loss": loss, "ce": ce, "sccm": sccm, "kdsp": kdsp}
