"""open_clip models - BiomedCLIP and any open_clip ViT - as a :class:`VisionLanguageBackbone`.

Names (see :func:`load_open_clip`):

* ``"biomedclip"`` - BiomedCLIP (Zhang et al., *NEJM AI* 2024; ViT-B/16 + PubMedBERT, 512-d joint
  space), from ``$MEDOT_BIOMEDCLIP_DIR`` when set, else from the Hugging Face hub cache;
* ``"hf-hub:ORG/REPO"`` - an open_clip repository in the Hugging Face hub cache;
* ``"local-dir:PATH"`` - a folder holding such a repository's files;
* ``"open_clip:MODEL/PRETRAINED"`` - an open_clip built-in architecture with a pretrained tag (weights
  from the hub cache) or a path to a weights file.

Nothing here downloads: every file is looked up on disk and a missing one raises
:class:`~medot.errors.BackboneUnavailableError` naming the files, where to get them and where to put
them. A local folder (``local-dir:PATH`` or ``$MEDOT_BIOMEDCLIP_DIR``) holds the hub repository's
files: ``open_clip_config.json``, ``open_clip_pytorch_model.bin`` or ``open_clip_model.safetensors``
and the tokenizer files. A text tower from ``transformers`` (BiomedCLIP's PubMedBERT) is built from
its own ``config.json``, which lives in another hub repository (``text_cfg.hf_model_name``); it is
read from a sub-folder named after that repository
(``PATH/BiomedNLP-BiomedBERT-base-uncased-abstract/config.json``, where that repository's tokenizer
files may go too) or from the hub cache.

The file checks live in :mod:`medot.backbones.open_clip_files` (no torch, no open_clip), so
:func:`biomedclip_status` stays instant; open_clip is imported on the first load only.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from medot.backbones.base import ImageFeatures, Preprocess, VisionLanguageBackbone
from medot.backbones.open_clip_files import (  # noqa: F401 - re-exported: the file checks live there
    BIOMEDCLIP_DIR_ENV,
    BIOMEDCLIP_REPO,
    BIOMEDCLIP_TEXT_REPO,
    CONFIG_FILE,
    HF_HUB_PREFIX,
    LOCAL_DIR_PREFIX,
    OPEN_CLIP_PREFIX,
    TEXT_CONFIG_FILE,
    TOKENIZER_MARKERS,
    WEIGHT_FILES,
    _LocalModel,
    _locate,
    biomedclip_status,
)
from medot.backbones.status import BIOMEDCLIP
from medot.errors import BackboneUnavailableError

#: number of intermediate blocks :attr:`OpenClipBackbone.default_layers` taps
N_DEFAULT_LAYERS = 4


# ====================================================================== the backbone
def evenly_spaced_blocks(n_blocks: int, count: int = N_DEFAULT_LAYERS) -> tuple[int, ...]:
    """1-based indices ``ceil(k * n_blocks / count)``, ``k = 1..count``: the last block and ``count - 1``
    evenly spaced ones below it (12 blocks -> 3, 6, 9, 12, as MVFA taps ViT-B; 24 -> 6, 12, 18, 24)."""
    return tuple(dict.fromkeys(math.ceil(k * n_blocks / count) for k in range(1, count + 1)))


def _count_image_blocks(visual: nn.Module) -> int:
    """Number of transformer blocks of a ViT image tower: open_clip's own or a timm trunk (BiomedCLIP)."""
    from open_clip.timm_model import TimmModel
    from open_clip.transformer import VisionTransformer

    if isinstance(visual, VisionTransformer):
        return len(visual.transformer.resblocks)
    blocks = getattr(getattr(visual, "trunk", None), "blocks", None)
    if isinstance(visual, TimmModel) and isinstance(blocks, (nn.Sequential, nn.ModuleList)):
        return len(blocks)
    raise BackboneUnavailableError(
        f"image tower {type(visual).__name__} is not a ViT: medot needs patch tokens from transformer blocks"
    )


class _TransformersText:
    """open_clip's ``HFTextEncoder`` (BiomedCLIP's PubMedBERT) run on token embeddings.

    ``HFTextEncoder(ids) = proj(pool(BERT(ids, m)))`` with ``m = ids != pad``; BERT takes
    ``inputs_embeds`` in place of ``ids`` (its embedding layer adds position and type embeddings to
    them), so the same tower runs on learnt context vectors. Padding is masked out of attention, so
    columns that are padding in every row are dropped before the run: the result is unchanged and a
    256-token BiomedCLIP context costs what the longest prompt costs.
    """

    def __init__(self, encoder: nn.Module):
        self.encoder = encoder
        self.pad_id = int(encoder.config.pad_token_id)

    @property
    def token_embedding(self) -> nn.Embedding:
        return self.encoder.transformer.get_input_embeddings()

    def encode(self, embeddings: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor
               ) -> torch.Tensor:
        length = int(attention_mask.any(dim=0).nonzero().max()) + 1
        mask = attention_mask[:, :length]
        out = self.encoder.transformer(inputs_embeds=embeddings[:, :length], attention_mask=mask)
        return self.encoder.proj(self.encoder.pooler(out, mask))


class _OpenClipText:
    """open_clip's own text transformer (CLIP, Radford et al. 2021) run on token embeddings.

    ``x = E + P``, ``x = LN(Transformer(x, causal mask))``, pooled at the end-of-text token (the
    largest id for CLIP's BPE, or ``eos_id``) and multiplied by the text projection, exactly as
    ``CLIP.encode_text`` / ``TextTransformer.forward`` do after their embedding lookup.
    """

    def __init__(self, owner: nn.Module, pool_type: str, eos_id: int | None, pad_id: int):
        from open_clip.transformer import text_global_pool

        self.owner = owner
        self.pool_type = pool_type
        self.eos_id = eos_id
        self.pad_id = pad_id
        self._pool = text_global_pool

    @property
    def token_embedding(self) -> nn.Embedding:
        return self.owner.token_embedding

    def encode(self, embeddings: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor
               ) -> torch.Tensor:
        length = embeddings.shape[1]
        x = embeddings + self.owner.positional_embedding[:length].to(embeddings.dtype)
        causal = self.owner.attn_mask
        x = self.owner.transformer(x, attn_mask=None if causal is None else causal[:length, :length])
        x = self.owner.ln_final(x)
        pooled = self._pool(x, input_ids, self.pool_type, eos_token_id=self.eos_id)
        projection = self.owner.text_projection
        if projection is None:
            return pooled
        return projection(pooled) if isinstance(projection, nn.Linear) else pooled @ projection


def _text_tower(model: nn.Module) -> _TransformersText | _OpenClipText:
    from open_clip.hf_model import HFTextEncoder
    from open_clip.transformer import TextTransformer

    text = getattr(model, "text", None)
    if isinstance(text, HFTextEncoder):
        return _TransformersText(text)
    if isinstance(text, TextTransformer) and text.cls_emb is None and not text.use_pad_mask:
        return _OpenClipText(text, text.pool_type, text.eos_id, text.pad_id)
    if text is None and hasattr(model, "token_embedding"):
        # open_clip.CLIP keeps its text tower on the model itself; SimpleTokenizer pads with 0
        return _OpenClipText(model, model.text_pool_type, model.text_eos_id, pad_id=0)
    raise BackboneUnavailableError(f"text tower {type(text).__name__} is not supported by medot")


def _preprocess(cfg: dict[str, Any]) -> Preprocess:
    size = cfg["size"]
    height, width = (size, size) if isinstance(size, int) else size
    if height != width:
        raise BackboneUnavailableError(f"non-square input size {size} is not supported")
    return Preprocess(int(height), tuple(cfg["mean"]), tuple(cfg["std"]), cfg.get("interpolation", "bicubic"))


class OpenClipBackbone(VisionLanguageBackbone):
    """An open_clip ``CLIP`` / ``CustomTextCLIP`` with a ViT image tower behind the medot interface.

    Image side: one forward pass gives the joint-space embedding (``model.encode_image``) and the
    outputs of the chosen transformer blocks ``"block1".."blockN"`` (1-based, before any final
    norm), with the class / register tokens removed. :attr:`default_layers` are
    :func:`evenly_spaced_blocks` - block 3, 6, 9, 12 of BiomedCLIP's ViT-B/16 (14 x 14 grid) - the
    four-stage tapping of MVFA (Huang et al., CVPR 2024).

    Text side: ``tokenize`` is open_clip's tokenizer (fixed context length, padded and truncated as
    open_clip does; mask = ids != pad id), and :meth:`encode_token_embeddings` reproduces
    ``model.encode_text`` from embeddings so that prompt context vectors can be learnt.
    """

    def __init__(self, model: nn.Module, tokenizer: Any, name: str, embed_dim: int, is_clinical: bool):
        super().__init__()
        self.model = model
        self._tokenizer = tokenizer
        self._text = _text_tower(model)
        self.name = name
        self.embed_dim = embed_dim
        self.is_clinical = is_clinical
        self.preprocess = _preprocess(model.visual.preprocess_cfg)
        n_blocks = _count_image_blocks(model.visual)
        self.feature_layers = tuple(f"block{i}" for i in range(1, n_blocks + 1))
        self.default_layers = tuple(f"block{i}" for i in evenly_spaced_blocks(n_blocks))
        self._logit_scale = float(model.logit_scale.detach().exp().item())

    @property
    def logit_scale(self) -> float:
        return self._logit_scale

    def encode_image(self, images: torch.Tensor, layers: Sequence[str] | None = None) -> ImageFeatures:
        chosen = self._check_layers(layers)
        if not chosen:
            return ImageFeatures(self.model.encode_image(images))
        indices = sorted({self.feature_layers.index(layer) for layer in chosen})
        out = self.model.visual.forward_intermediates(images, indices=indices, output_fmt="NCHW")
        maps = dict(zip(indices, out["image_intermediates"]))  # returned shallow to deep
        features = ImageFeatures(out["image_features"])
        for layer in chosen:
            feature_map = maps[self.feature_layers.index(layer)]
            features.patch_tokens[layer] = feature_map.flatten(2).transpose(1, 2)
            features.grids[layer] = (feature_map.shape[-2], feature_map.shape[-1])
        return features

    def tokenize(self, texts: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        input_ids = self._tokenizer(list(texts)).to(self.device)
        return input_ids, (input_ids != self._text.pad_id).long()

    @property
    def token_embedding(self) -> nn.Embedding:
        return self._text.token_embedding

    def encode_token_embeddings(
        self, embeddings: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor
    ) -> torch.Tensor:
        return self._text.encode(embeddings, input_ids, attention_mask)


# ====================================================================== loading
def _tokenizer(located: _LocalModel) -> Any:
    from open_clip import get_tokenizer
    from open_clip.tokenizer import DEFAULT_CONTEXT_LENGTH, HFTokenizer

    if located.tokenizer_dir is None:
        return get_tokenizer(located.create_name)  # CLIP's BPE, shipped with open_clip
    text_cfg = located.model_cfg["text_cfg"]
    return HFTokenizer(
        str(located.tokenizer_dir),
        context_length=text_cfg.get("context_length", DEFAULT_CONTEXT_LENGTH),
        tokenizer_mode=text_cfg.get("tokenizer_mode"),
        **(text_cfg.get("tokenizer_kwargs") or {}),
    )


def load_open_clip(spec: str) -> OpenClipBackbone:
    """Build the backbone named ``spec`` (module docstring) from local files, in eval mode and frozen."""
    spec = spec.strip()
    located = _locate(spec)
    import open_clip

    overrides: dict[str, Any] = {}
    if located.text_config_dir is not None:
        text_cfg = located.model_cfg["text_cfg"]
        # build the transformers tower from its local config.json; its weights are in the checkpoint
        overrides["text_cfg"] = {
            **text_cfg, "hf_model_name": str(located.text_config_dir), "hf_model_pretrained": False
        }
    try:
        model = open_clip.create_model(
            located.create_name,
            pretrained=None if located.weights is None else str(located.weights),
            pretrained_text=False,
            force_quick_gelu=bool(located.tag_cfg.get("quick_gelu", False)),
            force_preprocess_cfg=located.tag_cfg,
            **overrides,
        )
        tokenizer = _tokenizer(located)
    except (OSError, RuntimeError, ValueError, KeyError, TypeError) as error:
        raise BackboneUnavailableError(f"could not load {spec} from {located.origin}: {error}") from error
    is_biomedclip = spec in (BIOMEDCLIP, HF_HUB_PREFIX + BIOMEDCLIP_REPO)
    backbone = OpenClipBackbone(
        model, tokenizer, name=spec, embed_dim=int(located.model_cfg["embed_dim"]), is_clinical=is_biomedclip
    )
    return backbone.freeze()
