r"""MADPOT's baselines on the same code path: the MVFA model and text-only zero-shot scoring.

**Fixed prompt ensembles** (WinCLIP / April-GAN, used by MVFA): for class :math:`c` the text
embedding is :math:`t_c = \mathrm{norm}(\frac{1}{|S_c||T|}\sum_{s \in S_c, \tau \in T}
\mathrm{norm}(\theta(\tau(s(\text{object}))))`, states :math:`S_c` (:data:`NORMAL_STATES` /
:data:`ABNORMAL_STATES`) inside templates :math:`T` (:data:`TEMPLATES`).

**MVFA** (Huang et al., CVPR 2024): per layer a segmentation and a detection adapter. MVFA's adapter
is a bottleneck :math:`C \to D \to C` (1024 -> 768 -> 1024 on ViT-L/14) whose middle, in the joint
space, is compared with the text, and whose output is written back into the tower (residual 0.1)
so deeper layers see adapted tokens. medot trains on cached tokens of a frozen tower, so there is
no write-back: the up-projection would feed nothing, and only :math:`v = \mathrm{LeakyReLU}(W x)`,
:math:`W \in \mathbb{R}^{D\times C}`, is built (said in the docs and the training output).
Per layer the text map is :math:`p_i = \mathrm{softmax}_c(\tau^{-1}\cos(v^{seg}_i, t_c))_a`, the
detection probability the mean of the same on :math:`v^{det}`; losses: focal + Dice on the maps
where masks exist, binary cross-entropy on the detection probability. The memory bank holds the
adapted segmentation tokens of the normal shots (all views); a patch's memory score is
:math:`1 - \max_{m}\cos(v_i, m)`, and map = 0.5 text map + 0.5 memory map (``memory_weight``);
image score = 0.5 mean detection probability + 0.5 max memory score, or the map's maximum on data
with masks.

**Zero-shot**: the fixed ensembles against the tokens of the layers already in the joint space
(channels = D; ``lite``: ``head``), no adapter, no training.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from medot.backbones.base import VisionLanguageBackbone
from medot.methods.madpot.config import ABNORMAL_STATES, NORMAL_STATES, TEMPLATES, MadpotConfig, MadpotError
from medot.methods.madpot.model import ABNORMAL, layer_key

NO_WRITE_BACK = (
    "MVFA baseline: adapters act on cached tokens of the frozen tower, without MVFA's write-back of "
    "adapted tokens into deeper blocks (the tower is never run with adapters inside)"
)


@torch.no_grad()
def text_ensemble(backbone: VisionLanguageBackbone, object_name: str, templates: Sequence[str] = TEMPLATES) -> Tensor:
    """``[2, D]`` normalised normal / abnormal ensemble embeddings (module docstring)."""
    classes = []
    for states in (NORMAL_STATES, ABNORMAL_STATES):
        texts = [template.format(state.format(object_name)) for state in states for template in templates]
        embeddings = F.normalize(backbone.encode_text(texts).float(), dim=-1)
        classes.append(F.normalize(embeddings.mean(0), dim=-1))
    return torch.stack(classes)


def _text_probability(features: Tensor, text: Tensor, logit_scale: float) -> Tensor:
    """``[B, M, D]`` unit features, ``[2, D]`` text -> ``[B, M]`` abnormal probability."""
    return (logit_scale * features @ text.t()).softmax(-1)[..., ABNORMAL]


def _upsample_sum(per_layer: Mapping[str, Tensor], grids: Mapping[str, tuple[int, int]], size: tuple[int, int]) -> Tensor:
    maps = None
    for layer, values in per_layer.items():
        grid = values.view(values.shape[0], 1, *grids[layer])
        up = F.interpolate(grid, size=size, mode="bilinear", align_corners=False)[:, 0]
        maps = up if maps is None else maps + up
    return maps


class MvfaModel(nn.Module):
    """MVFA's adapters, fixed text ensembles and normal-shot memory bank (module docstring)."""

    def __init__(
        self,
        backbone: VisionLanguageBackbone,
        config: MadpotConfig,
        layers: Sequence[str],
        channels: Mapping[str, int],
        grids: Mapping[str, tuple[int, int]],
        object_name: str,
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
        self.object_name = object_name
        dim = backbone.embed_dim
        self.seg_adapters = nn.ModuleDict({layer_key(l): nn.Linear(self.channels[l], dim) for l in self.layers})
        self.det_adapters = nn.ModuleDict({layer_key(l): nn.Linear(self.channels[l], dim) for l in self.layers})
        self.register_buffer("text", text_ensemble(backbone, object_name))
        self.memory: dict[str, Tensor] = {}

    def features(self, tokens: Mapping[str, Tensor], layer: str) -> tuple[Tensor, Tensor]:
        x = tokens[layer].float()
        key = layer_key(layer)
        seg = F.normalize(F.leaky_relu(self.seg_adapters[key](x)), dim=-1)
        det = F.normalize(F.leaky_relu(self.det_adapters[key](x)), dim=-1)
        return seg, det

    def text_maps(self, tokens: Mapping[str, Tensor]) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
        """Per layer: segmentation map ``[B, M]`` and detection probability ``[B]`` from the text."""
        seg_maps, det_probs = {}, {}
        for layer in self.layers:
            seg, det = self.features(tokens, layer)
            seg_maps[layer] = _text_probability(seg, self.text, self.logit_scale)
            det_probs[layer] = _text_probability(det, self.text, self.logit_scale).mean(-1)
        return seg_maps, det_probs

    @torch.no_grad()
    def build_memory(self, normal_tokens: Mapping[str, Tensor]) -> None:
        """Store the adapted segmentation tokens of the normal shots ``{layer: [N, M, C]}``."""
        self.memory = {}
        for layer in self.layers:
            seg, _ = self.features(normal_tokens, layer)
            self.memory[layer] = seg.reshape(-1, seg.shape[-1])

    def memory_maps(self, tokens: Mapping[str, Tensor]) -> dict[str, Tensor]:
        """Per layer ``[B, M]``: :math:`1 - \\max_m \\cos(v_i, m)` against the memory bank."""
        maps = {}
        for layer in self.layers:
            seg, _ = self.features(tokens, layer)
            bank = self.memory[layer]
            best = torch.cat([(chunk @ bank.t()).amax(-1) for chunk in seg.split(4)])
            maps[layer] = 1.0 - best
        return maps

    @torch.no_grad()
    def forward(self, tokens: Mapping[str, Tensor], size: tuple[int, int]) -> tuple[Tensor, Tensor]:
        seg_maps, det_probs = self.text_maps(tokens)
        text_map = _upsample_sum(seg_maps, self.grids, size)
        det = torch.stack(list(det_probs.values())).mean(0)
        if not self.memory:
            maps, scores = text_map, det
        else:
            memory = self.memory_maps(tokens)
            w = self.config.memory_weight
            maps = (1 - w) * text_map + w * _upsample_sum(memory, self.grids, size)
            memory_score = torch.stack([m.amax(-1) for m in memory.values()]).mean(0)
            scores = (1 - w) * det + w * memory_score
        if self.localised:
            scores = maps.flatten(1).amax(-1)
        return maps, scores

    def learned_state(self) -> dict[str, Tensor]:
        state = {f"seg_adapters.{k}": v for k, v in self.seg_adapters.state_dict().items()}
        state.update({f"det_adapters.{k}": v for k, v in self.det_adapters.state_dict().items()})
        state.update({f"memory.{layer}": bank for layer, bank in self.memory.items()})
        return state

    def load_learned_state(self, state: Mapping[str, Tensor]) -> None:
        for prefix, module in (("seg_adapters.", self.seg_adapters), ("det_adapters.", self.det_adapters)):
            module.load_state_dict({k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}, strict=True)
        self.memory = {layer: state[f"memory.{layer}"] for layer in self.layers if f"memory.{layer}" in state}


class ZeroShotModel(nn.Module):
    """Text-only scores of joint-space patch tokens (module docstring)."""

    def __init__(
        self,
        backbone: VisionLanguageBackbone,
        layers: Sequence[str],
        grids: Mapping[str, tuple[int, int]],
        object_name: str,
        *,
        localised: bool = False,
    ) -> None:
        super().__init__()
        self.layers = tuple(layers)
        self.grids = {layer: tuple(grids[layer]) for layer in self.layers}
        self.logit_scale = float(backbone.logit_scale)
        self.localised = localised
        self.object_name = object_name
        self.register_buffer("text", text_ensemble(backbone, object_name))

    @torch.no_grad()
    def forward(self, tokens: Mapping[str, Tensor], size: tuple[int, int]) -> tuple[Tensor, Tensor]:
        per_layer = {
            layer: _text_probability(F.normalize(tokens[layer].float(), dim=-1), self.text, self.logit_scale)
            for layer in self.layers
        }
        maps = _upsample_sum(per_layer, self.grids, size)
        if self.localised:
            return maps, maps.flatten(1).amax(-1)
        return maps, torch.stack([p.mean(-1) for p in per_layer.values()]).mean(0)


def joint_space_layers(backbone: VisionLanguageBackbone, channels: Mapping[str, int]) -> tuple[str, ...]:
    """The backbone's layers whose tokens live in the joint space (channels = embed_dim)."""
    return tuple(layer for layer, width in channels.items() if width == backbone.embed_dim)


def require_joint_space_layers(backbone: VisionLanguageBackbone, channels: Mapping[str, int]) -> tuple[str, ...]:
    layers = joint_space_layers(backbone, channels)
    if not layers:
        raise MadpotError(
            f"the zero-shot baseline needs patch tokens in the joint space ({backbone.embed_dim} channels); "
            f"backbone {backbone.name} exposes none among {dict(channels)}"
        )
    return layers
