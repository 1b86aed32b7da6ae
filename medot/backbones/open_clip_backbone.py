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

open_clip is imported on the first load only (it takes seconds), so :func:`biomedclip_status` stays
instant.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import torch
from torch import nn

from medot.backbones.base import ImageFeatures, Preprocess, VisionLanguageBackbone
from medot.backbones.factory import BIOMEDCLIP, BackboneStatus
from medot.errors import BackboneUnavailableError

BIOMEDCLIP_REPO = "microsoft/BiomedCLIP-PubMedBERT_256-vit_base_patch16_224"
#: BiomedCLIP's text tower (``text_cfg.hf_model_name``), named in messages before its config is read
BIOMEDCLIP_TEXT_REPO = "microsoft/BiomedNLP-BiomedBERT-base-uncased-abstract"
BIOMEDCLIP_DIR_ENV = "MEDOT_BIOMEDCLIP_DIR"

HF_HUB_PREFIX = "hf-hub:"
LOCAL_DIR_PREFIX = "local-dir:"
OPEN_CLIP_PREFIX = "open_clip:"

CONFIG_FILE = "open_clip_config.json"
#: open_clip's weight file names, preferred first (``open_clip.constants``)
WEIGHT_FILES = ("open_clip_model.safetensors", "open_clip_pytorch_model.bin")
TEXT_CONFIG_FILE = "config.json"
#: any one of these marks a folder holding a Hugging Face tokenizer
TOKENIZER_MARKERS = ("tokenizer.json", "tokenizer_config.json", "vocab.txt")
TEXT_CONFIG_TEXT = "config.json (the text tower's configuration)"
TOKENIZER_FILES_TEXT = (
    "the tokenizer: vocab.txt (or tokenizer.json), with tokenizer_config.json and special_tokens_map.json "
    "where the repository has them"
)
#: number of intermediate blocks :attr:`OpenClipBackbone.default_layers` taps
N_DEFAULT_LAYERS = 4


# ====================================================================== locating files offline
@dataclass(frozen=True)
class _Missing:
    """Files to fetch: ``what`` from hub repository ``repo`` into ``into``."""

    what: str
    repo: str | None  # None: not known (a local-dir of an unnamed repository)
    into: str

    def line(self) -> str:
        source = f"https://huggingface.co/{self.repo}" if self.repo else "the model's Hugging Face repository"
        return f"  - {self.what}\n    from {source}\n    into {self.into}"


@dataclass(frozen=True)
class _LocalModel:
    """Everything :func:`open_clip.create_model` needs, all on local disk."""

    create_name: str  # "local-dir:FOLDER" or an open_clip built-in architecture name
    origin: str  # where the files were found, for messages
    model_cfg: dict[str, Any]
    weights: Path | None = None  # built-in architectures only: local-dir folders hold their own
    tag_cfg: dict[str, Any] = field(default_factory=dict)  # preprocessing / quick_gelu of a pretrained tag
    text_config_dir: Path | None = None  # folder with the transformers text tower's config.json
    tokenizer_dir: Path | None = None  # folder with the transformers tokenizer files


def _repo_basename(repo_id: str) -> str:
    return repo_id.rstrip("/").split("/")[-1]


def _hub_cached(repo_id: str, filename: str) -> Path | None:
    """A file of ``repo_id`` in the Hugging Face hub cache (``$HF_HOME``), or None; no network."""
    from huggingface_hub import try_to_load_from_cache

    found = try_to_load_from_cache(repo_id, filename)
    return Path(found) if isinstance(found, str) else None


def _find_folder(names: Sequence[str], folders: Sequence[Path], repo_id: str | None) -> Path | None:
    """The first of ``folders`` holding one of ``names``, else the hub-cache snapshot of ``repo_id``
    holding one of them, else None."""
    for folder in folders:
        if any((folder / name).is_file() for name in names):
            return folder
    for name in names if repo_id else ():
        cached = _hub_cached(repo_id, name)
        if cached is not None:
            return cached.parent
    return None


def _read_model_cfg(config_path: Path) -> dict[str, Any]:
    try:
        return json.loads(config_path.read_text(encoding="utf-8"))["model_cfg"]
    except (OSError, ValueError, KeyError) as error:
        raise BackboneUnavailableError(
            f"{config_path} is not a valid open_clip config (it needs a 'model_cfg' entry): {error}"
        ) from error


def _locate_text_files(
    text_cfg: dict[str, Any], folder: Path | None, into: str | None
) -> tuple[Path | None, Path | None, list[_Missing]]:
    """Config folder and tokenizer folder of a transformers text tower (None for open_clip's own tower
    and BPE tokenizer). Each is looked up in ``folder``'s sub-folder named after its hub repository
    (the tokenizer first in ``folder`` itself, open_clip's local-dir layout), at the name itself when
    it is a local path, then in the hub cache. Missing files are to go into ``into/<repository>/``
    (``into`` None: into the hub cache)."""
    missing: list[_Missing] = []
    text_config_dir = tokenizer_dir = None
    local = [folder] if folder is not None else []

    def destination(repo_id: str) -> str:
        return f"{into}/{_repo_basename(repo_id)}/" if into else "the Hugging Face cache"

    model_repo = text_cfg.get("hf_model_name")
    if model_repo:
        folders = [f / _repo_basename(model_repo) for f in local] + [Path(model_repo)]
        text_config_dir = _find_folder((TEXT_CONFIG_FILE,), folders, model_repo)
        if text_config_dir is None:
            missing.append(_Missing(TEXT_CONFIG_TEXT, model_repo, destination(model_repo)))
    tokenizer_repo = text_cfg.get("hf_tokenizer_name")
    if tokenizer_repo:
        folders = local + [f / _repo_basename(tokenizer_repo) for f in local] + [Path(tokenizer_repo)]
        tokenizer_dir = _find_folder(TOKENIZER_MARKERS, folders, tokenizer_repo)
        if tokenizer_dir is None:
            missing.append(_Missing(TOKENIZER_FILES_TEXT, tokenizer_repo, destination(tokenizer_repo)))
    return text_config_dir, tokenizer_dir, missing


def _unavailable(what: str, missing: list[_Missing], advice: str) -> BackboneUnavailableError:
    lines = "\n".join(item.line() for item in missing)
    return BackboneUnavailableError(
        f"{what} cannot be loaded: files are missing (medot never downloads weights).\n"
        f"Download these files:\n{lines}\n{advice}"
    )


def _locate_repo(folder: Path | None, repo_id: str | None, what: str, advice: str,
                 default_text_cfg: dict[str, Any] | None = None) -> _LocalModel:
    """Files of an open_clip hub repository: in ``folder`` when given, else in the hub cache of
    ``repo_id``. ``default_text_cfg`` names the text tower in messages while the config is missing."""
    into = str(folder) if folder is not None else "DIR"
    repo_items = [
        _Missing(CONFIG_FILE, repo_id, f"{into}/"),
        _Missing(f"{WEIGHT_FILES[1]} (or {WEIGHT_FILES[0]})", repo_id, f"{into}/"),
    ]
    if folder is not None:
        config_dir = folder if (folder / CONFIG_FILE).is_file() else None
        present = [config_dir is not None, _find_folder(WEIGHT_FILES, [folder], None) is not None]
    else:
        config_dir = _find_folder((CONFIG_FILE,), [], repo_id)
        if config_dir is not None and _find_folder(WEIGHT_FILES, [config_dir], None) is None:
            config_dir = None
        present = [config_dir is not None] * 2
    model_cfg = _read_model_cfg(config_dir / CONFIG_FILE) if config_dir is not None else None
    text_cfg = model_cfg["text_cfg"] if model_cfg is not None else (default_text_cfg or {})
    text_config_dir, tokenizer_dir, missing = _locate_text_files(text_cfg, config_dir or folder, into)
    if folder is None and missing:
        present = [False, False]  # the hub cache is not completed by hand: ask for a whole folder DIR
    missing = [item for item, found in zip(repo_items, present) if not found] + missing
    if missing:
        raise _unavailable(what, missing, advice)
    return _LocalModel(
        create_name=LOCAL_DIR_PREFIX + str(config_dir),
        origin=str(config_dir),
        model_cfg=model_cfg,
        text_config_dir=text_config_dir,
        tokenizer_dir=tokenizer_dir,
    )


def _locate_local_dir(folder: Path) -> _LocalModel:
    what = f"'{LOCAL_DIR_PREFIX}{folder}'"
    if not folder.is_dir():
        raise BackboneUnavailableError(f"{what}: {folder} is not a folder")
    return _locate_repo(folder, None, what, f"Then load it again with '{LOCAL_DIR_PREFIX}{folder}'.")


def _locate_hub(repo_id: str) -> _LocalModel:
    advice = (
        f"Put them in one folder DIR and use the backbone '{LOCAL_DIR_PREFIX}DIR' (files already in the "
        f"Hugging Face cache, e.g. from `hf download {repo_id}`, are used as they are)."
    )
    return _locate_repo(None, repo_id, f"'{HF_HUB_PREFIX}{repo_id}'", advice)


_BIOMEDCLIP_TEXT_CFG = {"hf_model_name": BIOMEDCLIP_TEXT_REPO, "hf_tokenizer_name": BIOMEDCLIP_TEXT_REPO}


def _locate_biomedclip() -> _LocalModel:
    """BiomedCLIP from ``$MEDOT_BIOMEDCLIP_DIR`` (when set and complete), else from the hub cache."""
    folder = os.environ.get(BIOMEDCLIP_DIR_ENV, "").strip()
    advice = (
        f"Put them in one folder DIR and set {BIOMEDCLIP_DIR_ENV}=DIR (or choose the backbone "
        f"'{LOCAL_DIR_PREFIX}DIR'); files already in the Hugging Face cache are used as they are."
    )
    folder_error = None
    if folder:
        what = f"BiomedCLIP (from {BIOMEDCLIP_DIR_ENV}={folder})"
        try:
            return _locate_repo(Path(folder).expanduser(), BIOMEDCLIP_REPO, what,
                                "Then BiomedCLIP loads from that folder.", _BIOMEDCLIP_TEXT_CFG)
        except BackboneUnavailableError as error:
            folder_error = error
    try:
        return _locate_repo(None, BIOMEDCLIP_REPO, "BiomedCLIP", advice, _BIOMEDCLIP_TEXT_CFG)
    except BackboneUnavailableError as hub_error:
        raise (folder_error or hub_error) from None


def _locate_builtin(name: str) -> _LocalModel:
    """``MODEL/PRETRAINED``: an open_clip architecture with a pretrained tag or a weights file."""
    import open_clip

    model, _, pretrained = name.partition("/")
    what = f"'{OPEN_CLIP_PREFIX}{name}'"
    model_cfg = open_clip.get_model_config(model)
    if model_cfg is None or not pretrained:
        raise BackboneUnavailableError(
            f"{what}: expected '{OPEN_CLIP_PREFIX}MODEL/PRETRAINED' with MODEL one of "
            "open_clip.list_models() and PRETRAINED a tag of open_clip.list_pretrained() or a weights file"
        )
    tag_cfg: dict[str, Any] = {}
    weights = Path(pretrained).expanduser()
    missing: list[_Missing] = []
    if not weights.is_file():
        tag_cfg = open_clip.get_pretrained_cfg(model, pretrained)
        if not tag_cfg:
            tags = open_clip.list_pretrained_tags_by_model(model)
            raise BackboneUnavailableError(
                f"{what}: '{pretrained}' is neither a file nor a tag of {model} ({', '.join(tags)})"
            )
        repo_id, filename = os.path.split(tag_cfg.get("hf_hub", ""))
        if not repo_id:
            raise BackboneUnavailableError(
                f"{what}: download {tag_cfg.get('url')} and use '{OPEN_CLIP_PREFIX}{model}/PATH_TO_THAT_FILE'"
            )
        names = (filename,) if filename else WEIGHT_FILES
        weights = next((path for path in map(partial(_hub_cached, repo_id), names) if path), None)
        if weights is None:
            missing.append(_Missing(" or ".join(names), repo_id, "the Hugging Face cache"))
    text_config_dir, tokenizer_dir, text_missing = _locate_text_files(model_cfg["text_cfg"], None, None)
    missing += text_missing
    if missing:
        advice = (
            "For example `hf download REPO FILE` fills the cache; "
            f"or use '{OPEN_CLIP_PREFIX}{model}/PATH_TO_WEIGHTS'."
        )
        raise _unavailable(what, missing, advice)
    return _LocalModel(
        create_name=model,
        origin=str(weights),
        model_cfg=model_cfg,
        weights=weights,
        tag_cfg=tag_cfg,
        text_config_dir=text_config_dir,
        tokenizer_dir=tokenizer_dir,
    )


def _locate(spec: str) -> _LocalModel:
    if spec == BIOMEDCLIP:
        return _locate_biomedclip()
    if spec.startswith(LOCAL_DIR_PREFIX):
        return _locate_local_dir(Path(spec[len(LOCAL_DIR_PREFIX):]).expanduser())
    if spec.startswith(HF_HUB_PREFIX):
        return _locate_hub(spec[len(HF_HUB_PREFIX):])
    if spec.startswith(OPEN_CLIP_PREFIX):
        return _locate_builtin(spec[len(OPEN_CLIP_PREFIX):])
    raise BackboneUnavailableError(
        f"unknown open_clip backbone {spec!r}: use '{BIOMEDCLIP}', '{HF_HUB_PREFIX}ORG/REPO', "
        f"'{OPEN_CLIP_PREFIX}MODEL/PRETRAINED' or '{LOCAL_DIR_PREFIX}PATH'"
    )


def biomedclip_status() -> BackboneStatus:
    """Whether BiomedCLIP's files are on this machine (checks files only: downloads and loads nothing)."""
    try:
        located = _locate_biomedclip()
    except BackboneUnavailableError as error:
        return BackboneStatus(BIOMEDCLIP, False, str(error))
    return BackboneStatus(BIOMEDCLIP, True, f"BiomedCLIP files found in {located.origin}")


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
