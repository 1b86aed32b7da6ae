r"""MADPOT's model: visual adapters, multi-prompt learning, partial OT and contrastive scoring.

Notation (per image, per layer :math:`l`): :math:`x_i \in \mathbb{R}^{C_l}`, :math:`i = 1..M`, the
frozen patch tokens; :math:`t_{ck} \in \mathbb{R}^D` the :math:`K` learnable prompts of class
:math:`c \in \{n, a\}` (normal, abnormal) through the frozen text tower; :math:`\tau^{-1}` the
backbone's logit scale.

**Adapter** (MadCLIP's form, one per layer): :math:`h_i = \mathrm{IN}(\mathrm{LeakyReLU}(W_l x_i))`,
:math:`W_l \in \mathbb{R}^{C_l \times C_l}`, IN an instance norm of each channel over the image's
patches; two heads :math:`v^{det}_i = \mathrm{norm}(\mathrm{LeakyReLU}(P^{det}_l h_i))` and
:math:`v^{seg}_i` likewise, :math:`P_l \in \mathbb{R}^{D \times C_l}`. Nothing is written back into
the frozen tower, so the adapters train on cached tokens.

**Fused prompts**: :math:`\bar t_c = \mathrm{norm}(\frac1K\sum_k t_{ck})`.

**Partial OT** per image, layer and class between the patches (mass :math:`1/M` each) and the
prompts of the class (mass :math:`1/K` each), cost :math:`C_{ik} = 1 - \cos(v_i, t_{ck})`,
transported mass :math:`\gamma`, entropic :math:`\varepsilon` (:func:`medot.ot.entropic_partial_wasserstein`,
both marginals upper bounds); the plan :math:`\Gamma^c` carries no gradient. POT logit:

.. math:: z_c = \tau^{-1} \frac{1}{\gamma}\sum_{ik} \Gamma^c_{ik}\cos(v_i, t_{ck}).

With ``balanced_prompts`` every prompt must receive exactly :math:`\gamma/K` (rows still at most
:math:`1/M`): a balanced OT problem with one zero-cost dummy column of mass :math:`1-\gamma`
(:func:`medot.ot.sinkhorn`), the form that keeps all prompts in use.

**Contrastive branch**: :math:`s_i = \cos(v_i, \bar t_a) - \cos(v_i, \bar t_n)`; image logit
:math:`\tau^{-1}\frac1M\sum_i s_i`, patch map :math:`\sigma(\tau^{-1}s_i)`.

**Scores**: image score = mean over layers of :math:`\frac12(\mathrm{softmax}(z)_a +
\sigma(\tau^{-1}\bar s))` on the detection features; pixel map = per layer :math:`\frac12`(CL map +
POT map) on the segmentation features, where the POT map of patch :math:`i` is
:math:`\mathrm{softmax}_c(\tau^{-1}\sum_k\Gamma^c_{ik}\cos(v_i,t_{ck}) / \sum_k\Gamma^c_{ik})_a`
(the prompts that took its mass, weighted by how much), upsampled bilinearly and summed over
layers. On data with masks the image score is the map's maximum (as MVFA). A disabled branch drops
out of both averages.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from medot.backbones.base import VisionLanguageBackbone
from medot.methods.madpot.config import ABNORMAL_STATES, NORMAL_STATES, MadpotConfig
from medot.methods.prompt_learning.prompts import PromptLearner
from medot.ot import entropic_partial_wasserstein, sinkhorn

NORMAL, ABNORMAL = 0, 1


# ---------------------------------------------------------------------------------- adapters
class LayerAdapter(nn.Module):
    """Linear(C, C) + LeakyReLU + InstanceNorm, then detection / segmentation heads
    Linear(C, D) + LeakyReLU, L2-normalised."""

    def __init__(self, channels: int, joint_dim: int) -> None:
        super().__init__()
        self.adapter = nn.Linear(channels, channels)
        self.norm = nn.InstanceNorm1d(channels)
        self.det = nn.Linear(channels, joint_dim)
        self.seg = nn.Linear(channels, joint_dim)

    def forward(self, tokens: Tensor) -> tuple[Tensor, Tensor]:
        """``[B, M, C]`` tokens -> ``(v_det, v_seg)``, each ``[B, M, D]`` with unit rows."""
        det, seg = self.heads(tokens)
        return F.normalize(det, dim=-1), F.normalize(seg, dim=-1)

    def heads(self, tokens: Tensor) -> tuple[Tensor, Tensor]:
        """The two heads before the L2 normalisation (``[B, M, D]`` each)."""
        hidden = F.leaky_relu(self.adapter(tokens))
        hidden = self.norm(hidden.transpose(1, 2)).transpose(1, 2)
        return F.leaky_relu(self.det(hidden)), F.leaky_relu(self.seg(hidden))


def layer_key(layer: str) -> str:
    """A module-dict key for a backbone layer name (no dots)."""
    return layer.replace(".", "_")


# ---------------------------------------------------------------------------------- prompts
def prompt_phrases(object_name: str, n_prompts: int) -> list[str]:
    """K normal then K abnormal phrases: state ``k mod 7`` of each list with the object name."""
    normal = [NORMAL_STATES[k % len(NORMAL_STATES)].format(object_name) for k in range(n_prompts)]
    abnormal = [ABNORMAL_STATES[k % len(ABNORMAL_STATES)].format(object_name) for k in range(n_prompts)]
    return normal + abnormal


class MultiPrompts(nn.Module):
    """K normal and K abnormal CoOp prompts (``n_ctx`` learnable context tokens each, class-specific)
    around the state phrases of one or more objects; the contexts are shared by every object, so a
    new object name (zero-shot) reuses them with its own phrases.

    Built on :class:`~medot.methods.prompt_learning.prompts.PromptLearner` (one per object, all
    holding the same context parameter ``[1, 2K, n_ctx, E]``).
    """

    def __init__(self, backbone: VisionLanguageBackbone, object_names: Sequence[str], n_prompts: int, n_ctx: int):
        super().__init__()
        if not object_names:
            raise ValueError("MultiPrompts needs at least one object name")
        self.n_prompts, self.n_ctx = n_prompts, n_ctx
        self.object_names: list[str] = []
        self.learners = nn.ModuleList()
        for name in object_names:
            if name not in self.object_names:
                self._append(backbone, name)

    @property
    def context(self) -> nn.Parameter:
        return self.learners[0].context

    def add_object(self, name: str) -> int:
        """Index of object ``name``, building its prompts (sharing the contexts) if new."""
        if name in self.object_names:
            return self.object_names.index(name)
        return self._append(self.learners[0].backbone, name)

    def _append(self, backbone: VisionLanguageBackbone, name: str) -> int:
        learner = PromptLearner(backbone, prompt_phrases(name, self.n_prompts), n_ctx=self.n_ctx, class_specific=True)
        if len(self.learners):
            learner.context = self.learners[0].context
        self.learners.append(learner)
        self.object_names.append(name)
        return len(self.object_names) - 1

    def forward(self, index: int) -> Tensor:
        """Normalised prompts ``[2, K, D]`` of object ``index`` (normal first)."""
        embeddings = self.learners[index](0)
        return F.normalize(embeddings, dim=-1).view(2, self.n_prompts, -1)


def fuse_prompts(prompts: Tensor) -> Tensor:
    """``[..., 2, K, D]`` prompts -> class prompts :math:`\\bar t_c` ``[..., 2, D]`` (normalised mean)."""
    return F.normalize(prompts.mean(-2), dim=-1)


# ---------------------------------------------------------------------------------- partial OT
@dataclass
class TransportOutput:
    """POT outputs of one layer: ``logits [B, 2]``, ``plan [B, 2, M, K]`` (no gradient),
    ``patch_logits [B, M, 2]`` (transport-weighted per-patch logits)."""

    logits: Tensor
    plan: Tensor
    patch_logits: Tensor


def transport_plans(
    similarity: Tensor, *, mass: float, epsilon: float, max_iter: int, balanced_prompts: bool = False
) -> Tensor:
    """Plans ``[..., M, K]`` for similarities ``[..., M, K]`` (cost ``1 - cos``), without gradient.

    Partial OT: rows at most ``1/M``, columns at most ``1/K``, total ``mass``. Balanced prompts:
    columns exactly ``mass/K`` via a zero-cost dummy column of mass ``1 - mass`` (rows exactly ``1/M``
    over the K + 1 columns, so at most ``1/M`` over the prompts).
    """
    shape = similarity.shape
    rows, cols = shape[-2:]
    cost = (1.0 - similarity.detach()).reshape(-1, rows, cols)
    if cost.dtype not in (torch.float32, torch.float64):
        cost = cost.float()
    if not balanced_prompts:
        a = cost.new_full((rows,), 1.0 / rows)
        b = cost.new_full((cols,), 1.0 / cols)
        plan = entropic_partial_wasserstein(
            cost, a, b, mass=mass, epsilon=epsilon, max_iter=max_iter, gradient="envelope"
        ).plan
        return plan.detach().reshape(shape)
    a = cost.new_full((rows,), 1.0 / rows)
    if mass >= 1.0:
        b = cost.new_full((cols,), 1.0 / cols)
        plan = sinkhorn(cost, a, b, epsilon=epsilon, max_iter=max_iter, gradient="envelope").plan
        return plan.detach().reshape(shape)
    augmented = torch.cat([cost, cost.new_zeros(cost.shape[0], rows, 1)], dim=-1)
    b = torch.cat([cost.new_full((cols,), mass / cols), cost.new_full((1,), 1.0 - mass)])
    plan = sinkhorn(augmented, a, b, epsilon=epsilon, max_iter=max_iter, gradient="envelope").plan
    return plan[..., :cols].detach().reshape(shape)


def transport_logits(
    features: Tensor, prompts: Tensor, logit_scale: float, config: MadpotConfig
) -> TransportOutput:
    """POT logits of ``features [B, M, D]`` (unit rows) against ``prompts [B, 2, K, D]`` (unit rows)."""
    similarity = torch.einsum("bmd,bckd->bcmk", features, prompts)
    return pot_from_similarity(similarity, _plans(similarity, config), logit_scale)


def _plans(similarity: Tensor, config: MadpotConfig) -> Tensor:
    return transport_plans(
        similarity,
        mass=config.mass,
        epsilon=config.epsilon,
        max_iter=config.ot_iterations,
        balanced_prompts=config.balanced_prompts,
    ).to(similarity.dtype)


def pot_from_similarity(similarity: Tensor, plan: Tensor, logit_scale: float) -> TransportOutput:
    r"""POT outputs from cosines ``[B, 2, M, K]`` and their plans (same shape, no gradient):
    :math:`z_c = \tau^{-1}\sum_{ik}\Gamma^c_{ik}\cos_{ik} / \sum_{ik}\Gamma^c_{ik}` and the per-patch
    :math:`\tau^{-1}\sum_k\Gamma^c_{ik}\cos_{ik} / \sum_k\Gamma^c_{ik}`."""
    weighted = plan * similarity
    moved = plan.sum((-2, -1)).clamp_min(1e-12)
    logits = logit_scale * weighted.sum((-2, -1)) / moved
    per_patch = weighted.sum(-1) / plan.sum(-1).clamp_min(1e-12)
    return TransportOutput(logits, plan, logit_scale * per_patch.transpose(-2, -1))


def contrast(features: Tensor, fused: Tensor) -> Tensor:
    """Per-patch :math:`s_i = \\cos(v_i, \\bar t_a) - \\cos(v_i, \\bar t_n)`: ``[B, M, D]``, ``[B, 2, D]`` -> ``[B, M]``."""
    similarity = torch.einsum("bmd,bcd->bmc", features, fused)
    return similarity[..., ABNORMAL] - similarity[..., NORMAL]


# ---------------------------------------------------------------------------------- model
@dataclass
class LayerOutput:
    """Everything one layer contributes: POT and CL outputs (None when a branch is off)."""

    pot_det: TransportOutput | None
    pot_seg: TransportOutput | None
    cl_logits: Tensor | None
    cl_patch_logits: Tensor | None

    def image_probability(self) -> Tensor:
        """``[B]``: mean of the enabled branches' abnormal probabilities."""
        parts = []
        if self.pot_det is not None:
            parts.append(self.pot_det.logits.softmax(-1)[:, ABNORMAL])
        if self.cl_logits is not None:
            parts.append(torch.sigmoid(self.cl_logits))
        return torch.stack(parts).mean(0)

    def patch_probability(self) -> Tensor:
        """``[B, M]``: mean of the enabled branches' per-patch abnormal probabilities."""
        parts = []
        if self.pot_seg is not None:
            parts.append(self.pot_seg.patch_logits.softmax(-1)[..., ABNORMAL])
        if self.cl_patch_logits is not None:
            parts.append(torch.sigmoid(self.cl_patch_logits))
        return torch.stack(parts).mean(0)


class MadpotModel(nn.Module):
    """Adapters, prompts and scoring of MADPOT on the patch tokens of ``layers``.

    ``channels`` gives each layer's token width, ``grids`` its patch grid. :meth:`forward`
    ``(tokens, size) -> (maps [B, *size], scores [B])`` scores images of :attr:`object_index`
    (change it with :meth:`set_object`, which also accepts an unseen name: zero-shot).
    ``localised``: the image score is the map's maximum (the training data had masks).
    """

    def __init__(
        self,
        backbone: VisionLanguageBackbone,
        config: MadpotConfig,
        layers: Sequence[str],
        channels: Mapping[str, int],
        grids: Mapping[str, tuple[int, int]],
        object_names: Sequence[str],
        *,
        localised: bool = False,
    ) -> None:
        super().__init__()
        self.config = config
        self.layers = tuple(layers)
        self.channels = {layer: int(channels[layer]) for layer in self.layers}
        self.grids = {layer: (int(grids[layer][0]), int(grids[layer][1])) for layer in self.layers}
        self.logit_scale = float(backbone.logit_scale)
        self.localised = localised
        self.adapters = nn.ModuleDict(
            {layer_key(layer): LayerAdapter(self.channels[layer], backbone.embed_dim) for layer in self.layers}
        )
        self.prompts = MultiPrompts(backbone, object_names, config.n_prompts, config.n_ctx)
        self.object_index = 0
        self._prompt_cache: dict[int, tuple[tuple, Tensor]] = {}

    @property
    def object_names(self) -> list[str]:
        return self.prompts.object_names

    def set_object(self, name: str) -> None:
        """Score images as object ``name`` (a new name gets prompts on the learned contexts)."""
        self.object_index = self.prompts.add_object(name)

    def learned_state(self) -> dict[str, Tensor]:
        """Adapters and the shared prompt context (what a checkpoint stores)."""
        state = {f"adapters.{k}": v for k, v in self.adapters.state_dict().items()}
        state["prompts.context"] = self.prompts.context.detach()
        return state

    def load_learned_state(self, state: Mapping[str, Tensor]) -> None:
        adapters = {k[len("adapters.") :]: v for k, v in state.items() if k.startswith("adapters.")}
        self.adapters.load_state_dict(adapters, strict=True)
        with torch.no_grad():
            self.prompts.context.copy_(state["prompts.context"])

    def object_prompts(self, object_index: Tensor) -> Tensor:
        """``[B, 2, K, D]`` prompts of each image's object (text tower run once per distinct object)."""
        unique = object_index.unique().tolist()
        encoded = {index: self._object_prompts(int(index)) for index in unique}
        return torch.stack([encoded[int(index)] for index in object_index.tolist()])

    def _object_prompts(self, index: int) -> Tensor:
        """``[2, K, D]`` prompts of one object; without autograd (scoring) they are kept until the
        context changes (an optimiser step or a loaded checkpoint bumps its version) or moves."""
        if torch.is_grad_enabled():
            return self.prompts(index)
        context = self.prompts.context
        key = (index, context._version, context.data_ptr(), context.device)
        cached = self._prompt_cache.get(index)
        if cached is None or cached[0] != key:
            cached = (key, self.prompts(index))
            self._prompt_cache[index] = cached
        return cached[1]

    def layer_outputs(self, tokens: Mapping[str, Tensor], prompts: Tensor) -> dict[str, LayerOutput]:
        """Per layer: adapted features and the enabled branches' logits.

        Same values as :func:`transport_logits` and :func:`contrast` per head, computed with fewer
        passes over the ``[B, M, D]`` features: the heads are not normalised in place (their
        products are divided by their norms), one product per head with the ``2K`` prompts and the
        two fused prompts together (a single matrix when every image is of one object), and one
        partial-OT solve per layer for the detection and segmentation heads together."""
        batch, _, k, _ = prompts.shape
        fused = fuse_prompts(prompts)
        text = torch.cat([prompts.flatten(1, 2), fused], dim=1)  # [B, 2K + 2, D]
        shared = bool((text[1:] == text[:1]).all()) if batch > 1 else True

        def cosines(head: Tensor) -> Tensor:  # [B, M, 2K + 2]: cos(v_i, .) = <h_i, .> / max(|h_i|, 1e-12)
            products = head @ text[0].t() if shared else torch.einsum("bmd,bcd->bmc", head, text)
            return products / head.norm(dim=-1, keepdim=True).clamp_min(1e-12)

        outputs = {}
        for layer in self.layers:
            det, seg = self.adapters[layer_key(layer)].heads(tokens[layer].float())
            det_cos, seg_cos = cosines(det), cosines(seg)
            pot_det = pot_seg = cl_logits = cl_patch = None
            if self.config.pot:
                pot = torch.stack([c[..., : 2 * k] for c in (det_cos, seg_cos)])  # [2, B, M, 2K]
                pot = pot.unflatten(-1, (2, k)).transpose(2, 3)  # [2, B, 2, M, K]
                plans = _plans(pot, self.config)
                pot_det = pot_from_similarity(pot[0], plans[0], self.logit_scale)
                pot_seg = pot_from_similarity(pot[1], plans[1], self.logit_scale)
            if self.config.cl:
                cl_logits = self.logit_scale * (det_cos[..., 2 * k + ABNORMAL] - det_cos[..., 2 * k + NORMAL]).mean(-1)
                cl_patch = self.logit_scale * (seg_cos[..., 2 * k + ABNORMAL] - seg_cos[..., 2 * k + NORMAL])
            outputs[layer] = LayerOutput(pot_det, pot_seg, cl_logits, cl_patch)
        return outputs

    def score(
        self, tokens: Mapping[str, Tensor], size: tuple[int, int], object_index: Tensor | None = None
    ) -> tuple[Tensor, Tensor, dict[str, LayerOutput]]:
        """``(maps [B, *size], image scores [B], per-layer outputs)``."""
        batch = next(iter(tokens.values())).shape[0]
        device = next(iter(tokens.values())).device
        if object_index is None:
            object_index = torch.full((batch,), self.object_index, dtype=torch.long, device=device)
        outputs = self.layer_outputs(tokens, self.object_prompts(object_index))
        maps = torch.zeros(batch, *size, device=device)
        for layer, output in outputs.items():
            grid = output.patch_probability().view(batch, 1, *self.grids[layer])
            maps = maps + F.interpolate(grid, size=size, mode="bilinear", align_corners=False)[:, 0]
        if self.localised:
            scores = maps.flatten(1).amax(-1)
        else:
            scores = torch.stack([output.image_probability() for output in outputs.values()]).mean(0)
        return maps, scores, outputs

    @torch.no_grad()
    def forward(self, tokens: Mapping[str, Tensor], size: tuple[int, int]) -> tuple[Tensor, Tensor]:
        maps, scores, _ = self.score(tokens, size)
        return maps, scores

    @torch.no_grad()
    def assignments(self, tokens: Mapping[str, Tensor], layer: str, branch: str = "seg") -> dict[str, Tensor]:
        """The partial-OT assignment of every patch of ``layer``: ``prompt [B, M]`` (index 0..2K-1,
        normal prompts first) that took most of its mass, ``mass [B, M]`` the mass it sent
        (times M, so 1 = fully transported) and ``plan [B, 2, M, K]``."""
        if not self.config.pot:
            raise ValueError("this model was trained without the partial-OT branch (--no-pot)")
        _, _, outputs = self.score(tokens, (1, 1))
        output = outputs[layer].pot_seg if branch == "seg" else outputs[layer].pot_det
        plan = output.plan
        batch, _, patches, k = plan.shape
        flat = plan.permute(0, 2, 1, 3).reshape(batch, patches, 2 * k)
        sent = flat.sum(-1)
        return {"prompt": flat.argmax(-1), "mass": sent * patches / 2, "plan": plan}


__all__ = [
    "LayerAdapter",
    "LayerOutput",
    "MadpotModel",
    "MultiPrompts",
    "TransportOutput",
    "contrast",
    "fuse_prompts",
    "pot_from_similarity",
    "prompt_phrases",
    "transport_logits",
    "transport_plans",
]
