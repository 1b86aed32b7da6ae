r"""Losses of the prompt-learning baselines (K-MaT's own are in :mod:`medot.methods.kmat.losses`).

Notation: :math:`x` image embedding, :math:`w_i` learned class embedding, tildes are L2-normalised
vectors, :math:`\tau` = 1 / logit scale, :math:`C` classes.

* CoOp (Zhou et al., IJCV 2022, Eq. 3): cross-entropy of :math:`p(y=i|x) =
  \mathrm{softmax}_i(\cos(x, w_i)/\tau)`; :func:`prompt_cross_entropy`.
* KgCoOp (Yao et al., CVPR 2023): in the form of the authors' code (``trainers/kgcoop.py``:
  ``score = 1.0 - torch.mean(cos(text_features, text_features_old)); loss = ce + 8.0 * score``),
  :math:`\mathcal{L}_{kg} = \frac1C\sum_i (1 - \cos(w_i, w^{clip}_i))` with :math:`w^{clip}_i` the
  hand-crafted prompt's embedding; :func:`knowledge_guidance_loss`. The paper's Eq. 6 writes
  :math:`\frac1C\sum_i\|\tilde w_i - \tilde w^{clip}_i\|_2^2`, which for unit vectors is
  :math:`2(1-\cos)`, twice the code's term; :math:`\lambda = 8` was tuned with the code's form.
* BiomedCoOp (Koleilat et al., CVPR 2025): semantic consistency
  :math:`\mathcal{L}_{SCCM} = \mathrm{MSE}(\tilde w, \bar p)` over all :math:`C \times D` entries,
  with :math:`\bar p_i` the mean description embedding (:func:`semantic_consistency_loss`), and
  distillation :math:`\mathcal{L}_{KDSP} = \mathrm{KL}(p_{zs} \| p)` summed and divided by the
  number of logits, as in the authors' code (:func:`distillation_loss`), from zero-shot logits of
  the descriptions that survive :func:`prune_descriptions`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from medot.methods.prompt_learning.prompts import cosine_logits

MAD_TO_SIGMA = 1.4826
"""Scale making the median absolute deviation a consistent estimate of a normal's sigma."""


def prompt_cross_entropy(
    image_embedding: Tensor, class_embedding: Tensor, labels: Tensor, logit_scale: float
) -> Tensor:
    """CoOp's loss: ``F.cross_entropy(logit_scale * cos(x, w), y)``."""
    return F.cross_entropy(cosine_logits(image_embedding, class_embedding, logit_scale), labels)


def knowledge_guidance_loss(class_embedding: Tensor, reference: Tensor) -> Tensor:
    r"""KgCoOp's :math:`\frac1C \sum_i (1 - \cos(w_i, w^{clip}_i))` for ``[C, D]`` inputs (the
    authors' code; half the paper's :math:`\frac1C \sum_i \|\tilde w_i - \tilde w^{clip}_i\|^2`)."""
    cosine = (F.normalize(class_embedding, dim=-1) * F.normalize(reference, dim=-1)).sum(-1)
    return (1.0 - cosine).mean()


def semantic_consistency_loss(class_embedding: Tensor, anchors: Tensor) -> Tensor:
    r"""BiomedCoOp's SCCM term: mean over the ``C x D`` entries of :math:`(\tilde w - \bar p)^2`."""
    return F.mse_loss(F.normalize(class_embedding, dim=-1), anchors)


def distillation_loss(student_logits: Tensor, teacher_logits: Tensor) -> Tensor:
    r""":math:`\sum_{b,i} p^{t}_{bi}(\log p^{t}_{bi} - \log p^{s}_{bi}) / (B\,C)`: BiomedCoOp's KDSP term."""
    return F.kl_div(
        F.log_softmax(student_logits, dim=-1),
        F.log_softmax(teacher_logits, dim=-1),
        reduction="sum",
        log_target=True,
    ) / student_logits.numel()


def prune_descriptions(embeddings: Tensor, tau: float = 1.5) -> Tensor:
    r"""Keep-mask ``[K]`` over one class's description embeddings ``[K, D]``: drop the outliers.

    Each description is scored by its cosine :math:`s_k` to the class's normalised mean direction
    and standardised robustly, :math:`z_k = (s_k - \mathrm{med}\,s) / (1.4826\,\mathrm{MAD}(s))`;
    descriptions with :math:`z_k < -\tau` (far below the typical agreement with the class) are
    dropped. With no spread (MAD 0) nothing is dropped. ``tau`` defaults to BiomedCoOp's 1.5.
    """
    unit = F.normalize(embeddings, dim=-1)
    scores = unit @ F.normalize(unit.mean(0), dim=-1)
    median = scores.median()
    spread = MAD_TO_SIGMA * (scores - median).abs().median()
    if float(spread) == 0.0:
        return torch.ones_like(scores, dtype=torch.bool)
    return (scores - median) / spread >= -tau

