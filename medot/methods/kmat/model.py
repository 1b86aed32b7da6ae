r"""K-MaT's training task: factorised prompts, L = L_ce + lambda_anc L_anc + lambda_fgw L_fgw.

Per class :math:`i` and modality :math:`m \in \{H, L\}` the prompt
:math:`t_{i,m} = [v^1_{i,m}, \dots, v^4_{i,m}, c_i]` has class-specific (CSC) and modality-specific
(MSC) context (:class:`~medot.methods.prompt_learning.prompts.PromptLearner`), and

.. math:: \mathcal{L} = \mathcal{L}_{ce} + \lambda_{anc}\mathcal{L}_{anc} + \lambda_{fgw}\mathcal{L}_{fgw},
   \qquad \mathcal{L}_{ce} = -\log \frac{\exp(\cos(x_H, w_{y,H})/\tau)}{\sum_i \exp(\cos(x_H, w_{i,H})/\tau)}

on high-end images :math:`x_H` only (:mod:`medot.methods.kmat.losses` for the other two terms).
The low-end prompts are trained only through :math:`\mathcal{L}_{anc}` and :math:`\mathcal{L}_{fgw}`;
at test time low-end images are scored against :math:`w_{i,L}`. The switches of
:class:`KMaTConfig` give the ablation rows of the paper's Table 3; without MSC the same prompts
serve both modalities (:math:`w_{i,L} = w_{i,H}`).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from medot.methods.kmat.losses import (
    FGW_ALPHA,
    FGW_EPSILON,
    FGW_MAX_ITER,
    knowledge_anchor_loss,
    manifold_transport_loss,
)
from medot.methods.prompt_learning.knowledge import DescriptionEmbeddings
from medot.methods.prompt_learning.prompts import HIGH, LOW, PromptLearner, cosine_logits
from medot.methods.prompt_learning.task import PromptTask


@dataclass(frozen=True)
class KMaTConfig:
    """K-MaT's switches and weights (defaults: the full method).

    ``class_specific`` / ``modality_specific``: CSC / MSC contexts; ``anchor`` / ``transport``:
    include :math:`\\mathcal{L}_{anc}` / :math:`\\mathcal{L}_{fgw}` with weights ``lambda_anchor`` /
    ``lambda_transport`` (the paper selects them on high-end validation data; 1.0 is medot's
    default); ``fgw_*``: the FGW solve (paper: alpha 0.1, temperature 0.1, <= 100 iterations);
    ``fgw_gradient``: which loss and gradient :math:`\\mathcal{L}_{fgw}` is
    (:func:`~medot.methods.kmat.losses.manifold_transport_loss`).
    """

    n_ctx: int = 4
    class_specific: bool = True
    modality_specific: bool = True
    anchor: bool = True
    transport: bool = True
    lambda_anchor: float = 1.0
    lambda_transport: float = 1.0
    fgw_alpha: float = FGW_ALPHA
    fgw_epsilon: float = FGW_EPSILON
    fgw_max_iter: int = FGW_MAX_ITER
    fgw_gradient: str = "envelope"

    def __post_init__(self) -> None:
        if self.n_ctx < 1 or self.lambda_anchor < 0 or self.lambda_transport < 0:
            raise ValueError("n_ctx must be >= 1 and the lambdas >= 0")
        if self.fgw_gradient not in ("envelope", "unrolled"):
            raise ValueError(f"fgw_gradient must be 'envelope' or 'unrolled', got {self.fgw_gradient!r}")

    def prompt_learner(self, backbone, class_names) -> PromptLearner:
        return PromptLearner(
            backbone,
            class_names,
            n_ctx=self.n_ctx,
            class_specific=self.class_specific,
            modality_specific=self.modality_specific,
        )

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class KMaTTask(PromptTask):
    """K-MaT on cached high-end image embeddings; ``knowledge`` holds the description embeddings."""

    method = "kmat"

    def __init__(
        self,
        prompts: PromptLearner,
        knowledge: DescriptionEmbeddings,
        config: KMaTConfig,
        **kwargs: Any,
    ) -> None:
        super().__init__(prompts, **kwargs)
        self.config = config
        self.register_buffer("anchors", knowledge.anchors(), persistent=False)
        self.register_buffer("description_embeddings", knowledge.embeddings, persistent=False)
        self.register_buffer("description_class", knowledge.class_index, persistent=False)
        self.register_buffer("description_modality", knowledge.modality_index, persistent=False)

    def class_embeddings(self) -> tuple[Tensor, Tensor]:
        """``(w_H, w_L)``, each ``[C, D]`` (the same tensor without modality-specific context)."""
        high = self.prompts(HIGH)
        return high, self.prompts(LOW) if self.prompts.modality_specific else high

    def transport(self, high: Tensor, low: Tensor):
        config = self.config
        return manifold_transport_loss(
            high, low, alpha=config.fgw_alpha, epsilon=config.fgw_epsilon, max_iter=config.fgw_max_iter,
            gradient=config.fgw_gradient,
        )

    def training_step(self, batch: tuple[Tensor, Tensor]) -> dict[str, Tensor]:
        images, labels = batch
        config = self.config
        if config.anchor or config.transport:
            high, low = self.class_embeddings()
        else:
            high = self.prompts(HIGH)
        ce = F.cross_entropy(cosine_logits(images, high, self.logit_scale), labels)
        terms = {"ce": ce}
        loss = ce
        if config.anchor:
            terms["anc"] = knowledge_anchor_loss(torch.stack([high, low]), self.anchors)
            loss = loss + config.lambda_anchor * terms["anc"]
        if config.transport:
            terms["fgw"] = self.transport(high, low).loss
            loss = loss + config.lambda_transport * terms["fgw"]
        return {"loss": loss, **terms}

    @torch.no_grad()
    def artefacts(self) -> dict[str, Tensor]:
        """What the app shows: unit class embeddings ``w_high``/``w_low`` ``[C, D]``, anchors
        ``anchors_high``/``anchors_low`` ``[C, D]``, the description embeddings ``[K, D]`` with their
        class / modality indices ``[K]``, and the FGW plan :math:`\\Gamma` with :math:`D^H`, :math:`D^L`
        and :math:`M` (``[C, C]``) at the current prompts. Copies, so loading a checkpoint never writes
        into the task's buffers."""
        high, low = self.class_embeddings()
        transport = self.transport(high, low)
        return {
            "w_high": F.normalize(high, dim=-1),
            "w_low": F.normalize(low, dim=-1),
            "anchors_high": self.anchors[HIGH].clone(),
            "anchors_low": self.anchors[LOW].clone(),
            "description_embeddings": self.description_embeddings.clone(),
            "description_class": self.description_class.clone(),
            "description_modality": self.description_modality.clone(),
            "fgw_plan": transport.plan,
            "fgw_cost": transport.cost,
            "fgw_structure_high": transport.high_structure,
            "fgw_structure_low": transport.low_structure,
        }
