r"""Learnable prompt contexts run through a frozen text tower (CoOp, CoCoOp, K-MaT's factorisation).

A prompt for class :math:`i` in modality :math:`m` is the token sequence

.. math:: t_{i,m} = [v^1_{i,m}, \dots, v^{n}_{i,m}, c_i]

(CoOp, Zhou et al., IJCV 2022, Eq. 2): ``n`` learnable context vectors in the word-embedding space
followed by the frozen embedding :math:`c_i` of the class name, inside the tower's start/end tokens.
Its class embedding is :math:`w_{i,m} = \theta(t_{i,m})`, the frozen text tower :math:`\theta` run on
the continuous embeddings (:meth:`VisionLanguageBackbone.encode_token_embeddings`).

:class:`PromptLearner` holds one context tensor ``[M', C', n, E]`` whose two leading axes say what
is shared:

* ``class_specific`` (CSC): :math:`C' = C`, one context per class; else :math:`C' = 1`, shared;
* ``modality_specific`` (MSC): :math:`M' = 2`, separate high-end / low-end contexts (K-MaT's
  factorisation); else :math:`M' = 1` and the same prompts serve both modalities;
* ``conditional`` (CoCoOp, Zhou et al., CVPR 2022, Eq. 4): a meta-network
  :math:`h_\phi` = Linear(:math:`d`, :math:`h`)-ReLU-Linear(:math:`h`, :math:`E`), hidden width
  :math:`h` = ``meta_hidden`` (default :math:`d/16`, CoCoOp's), maps the
  L2-normalised image embedding :math:`x` to :math:`\pi = h_\phi(x)`, added to every context token,
  :math:`v^k(x) = v^k + \pi`, so every image gets its own class embeddings.

Contexts start from CoOp's random initialisation :math:`v \sim \mathcal{N}(0, 0.02^2)`, drawn from
the global torch generator (seed it first for reproducible initial prompts).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from medot.backbones.base import VisionLanguageBackbone

HIGH, LOW = 0, 1
"""Modality indices: high-end (trained on) and low-end (transferred to)."""

CONTEXT_INIT_STD = 0.02
META_NET_REDUCTION = 16
CONDITIONAL_CHUNK = 64
"""Images per text-tower pass when scoring with image-conditioned prompts (``C`` prompts each)."""


def default_meta_hidden(embed_dim: int) -> int:
    """CoCoOp's meta-net width: ``embed_dim // 16`` (at least 1)."""
    return max(1, embed_dim // META_NET_REDUCTION)


def prompt_name(class_name: str) -> str:
    """The class name as written in a prompt: ``basal_cell_carcinoma`` -> ``basal cell carcinoma``."""
    return " ".join(class_name.replace("_", " ").split())


class PromptLearner(nn.Module):
    """Learnable contexts for ``C`` classes and the frozen tower that turns them into :math:`w_{i,m}`.

    ``backbone`` is kept as a frozen sub-module (none of its weights are trained or checkpointed).
    """

    def __init__(
        self,
        backbone: VisionLanguageBackbone,
        class_names: Sequence[str],
        *,
        n_ctx: int = 4,
        class_specific: bool = False,
        modality_specific: bool = False,
        conditional: bool = False,
        meta_hidden: int | None = None,
    ) -> None:
        super().__init__()
        if len(class_names) < 2:
            raise ValueError("a prompt learner needs at least two classes")
        if meta_hidden is not None and (not conditional or meta_hidden < 1):
            raise ValueError("meta_hidden (the CoCoOp meta-net width) must be >= 1 and needs conditional=True")
        self.backbone = backbone
        self.class_names = tuple(class_names)
        self.n_ctx = n_ctx
        self.class_specific = class_specific
        self.modality_specific = modality_specific
        tokens = backbone.prompt_tokens([prompt_name(name) for name in class_names], n_ctx)
        with torch.no_grad():
            embedded = backbone.token_embedding(tokens.input_ids).float()
        start, stop = tokens.context_slice.start, tokens.context_slice.stop
        self.register_buffer("input_ids", tokens.input_ids, persistent=False)
        self.register_buffer("attention_mask", tokens.attention_mask, persistent=False)
        self.register_buffer("token_prefix", embedded[:, :start].clone(), persistent=False)
        self.register_buffer("token_suffix", embedded[:, stop:].clone(), persistent=False)
        width = embedded.shape[-1]
        shape = (2 if modality_specific else 1, len(class_names) if class_specific else 1, n_ctx, width)
        self.context = nn.Parameter(torch.randn(shape, device=embedded.device) * CONTEXT_INIT_STD)
        self.meta_net: nn.Sequential | None = None
        if conditional:
            hidden = meta_hidden or default_meta_hidden(backbone.embed_dim)
            self.meta_net = nn.Sequential(
                nn.Linear(backbone.embed_dim, hidden), nn.ReLU(inplace=True), nn.Linear(hidden, width)
            ).to(embedded.device)

    @property
    def conditional(self) -> bool:
        return self.meta_net is not None

    def config(self) -> dict[str, object]:
        """The constructor's keyword arguments, JSON-ready (to rebuild the learner from a checkpoint)."""
        return {
            "n_ctx": self.n_ctx,
            "class_specific": self.class_specific,
            "modality_specific": self.modality_specific,
            "conditional": self.conditional,
            **({"meta_hidden": self.meta_net[0].out_features} if self.meta_net is not None else {}),
        }

    def modality_context(self, modality: int) -> Tensor:
        """Context vectors of ``modality`` for every class, ``[C, n, E]`` (shared slices expanded)."""
        context = self.context[modality if self.modality_specific else 0]
        return context.expand(len(self.class_names), -1, -1)

    def forward(self, modality: int, image_embedding: Tensor | None = None) -> Tensor:
        """Class embeddings :math:`w_{i,m}` (not normalised): ``[C, D]``, or ``[B, C, D]`` for a
        conditional learner given the images' embeddings ``[B, D]``."""
        context = self.modality_context(modality)
        if self.meta_net is None:
            return self._encode(context)
        if image_embedding is None:
            raise ValueError("a conditional (CoCoOp) prompt learner needs the image embeddings")
        shift = self.meta_net(F.normalize(image_embedding.float(), dim=-1))
        conditioned = context.unsqueeze(0) + shift[:, None, None, :]
        batch, classes = conditioned.shape[:2]
        embeddings = self._encode(conditioned.flatten(0, 1), repeat=batch)
        return embeddings.view(batch, classes, -1)

    def logits(self, image_embedding: Tensor, modality: int, logit_scale: float) -> Tensor:
        """``[B, C]`` logits ``logit_scale * cos(x_b, w_{i,m})`` (conditional prompts: in chunks of
        :data:`CONDITIONAL_CHUNK` images)."""
        if self.meta_net is None:
            return cosine_logits(image_embedding, self(modality), logit_scale)
        chunks = image_embedding.split(CONDITIONAL_CHUNK)
        return torch.cat([cosine_logits(x, self(modality, x), logit_scale) for x in chunks])

    def _encode(self, context: Tensor, repeat: int = 1) -> Tensor:
        """Run the frozen tower on ``[prefix, context, suffix]`` for ``repeat`` copies of the classes."""
        prefix, suffix = self.token_prefix.repeat(repeat, 1, 1), self.token_suffix.repeat(repeat, 1, 1)
        embeddings = torch.cat([prefix, context, suffix], dim=1).to(self.backbone.dtype)
        input_ids = self.input_ids.repeat(repeat, 1)
        attention_mask = self.attention_mask.repeat(repeat, 1)
        return self.backbone.encode_token_embeddings(embeddings, input_ids, attention_mask).float()


def cosine_logits(image_embedding: Tensor, class_embedding: Tensor, logit_scale: float) -> Tensor:
    """``logit_scale * cos(x_b, w_c)``: ``[B, D]`` with ``[C, D]`` (or per-image ``[B, C, D]``) -> ``[B, C]``.

    With :math:`\\tau = 1/\\text{logit\\_scale}` this is CoOp's :math:`\\cos(x, w_i)/\\tau`."""
    image = F.normalize(image_embedding.float(), dim=-1)
    text = F.normalize(class_embedding.float(), dim=-1)
    if text.dim() == 3:
        return logit_scale * torch.einsum("bd,bcd->bc", image, text)
    return logit_scale * image @ text.t()
