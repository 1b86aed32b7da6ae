"""Locating open_clip models' files offline (BiomedCLIP, ``hf-hub:``, ``local-dir:``, ``open_clip:``).

The file checks behind :func:`biomedclip_status` and the first step of
:func:`medot.backbones.open_clip_backbone.load_open_clip`, kept apart from the model code so that
they import neither torch nor open_clip (open_clip only for ``open_clip:MODEL/PRETRAINED``, whose
architecture list lives in open_clip). The folder layout is described in
:mod:`medot.backbones.open_clip_backbone`.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

from medot.backbones.status import BIOMEDCLIP, BackboneStatus
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


#: public name of :func:`_locate`
locate = _locate
