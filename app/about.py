"""The first screen's header (what medot does, intended use, disclaimer, the backbone in use, how to
add other backbones in a collapsed accordion) and the About tab (the four papers)."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import gradio as gr

from medot import __version__
from medot.backbones import BackboneStatus

DESCRIPTION = (
    "medot runs optimal-transport methods on frozen vision-language backbones: it scores an image "
    "against class labels (zero-shot, or with prompts trained by K-MaT and its baselines), shows how "
    "the learned prompts of two modalities relate, localises anomalies with PRADOT (normal images only) "
    "or MADPOT (a few labelled normal and abnormal images), and shows the dense correspondences an "
    "OPTiML-pretrained encoder learned. The Train tab fits these models on images of your own."
)
INTENDED_USE = (
    "**Intended use:** research and teaching, on de-identified images. "
    "**Not a medical device: not for diagnosis, triage or any clinical decision.**"
)
#: (method, citation, where in medot)
PAPERS = (
    ("K-MaT", "Zeng & Albarqouni. *K-MaT: Knowledge-Anchored Manifold Transport for Cross-Modal Prompt "
     "Learning in Medical Imaging.* arXiv:2603.06340, 2026.", "Classify, Prompt manifolds, FGW coupling, Train"),
    ("PRADOT", "Trombetta & Lartizien. *Learning local and global prototypes with optimal transport for "
     "unsupervised anomaly detection and localization.* arXiv:2508.12927, 2025.", "Anomaly localisation, Train"),
    ("MADPOT", "Shiri, Beyan & Murino. *MADPOT: Medical Anomaly Detection with CLIP Adaptation and Partial "
     "Optimal Transport.* arXiv:2507.06733, 2025.", "planned (its partial-OT solver is in medot.ot)"),
    ("OPTiML", "Singh, Gorade & Mishra. *OPTiML: Dense Semantic Invariance Using Optimal Transport for "
     "Self-Supervised Medical Image Representation.* arXiv:2404.11868, 2024.", "planned"),
)


def backbone_line(default: str, statuses: Sequence[BackboneStatus]) -> str:
    """One line: the backbone in use and whether it is a clinical model."""
    clinical = default != "lite"
    return f"**Backbone in use:** {default}" + (
        " (biomedical vision-language model)." if clinical
        else " - general-purpose ImageNet/sentence weights, **not a clinical model**: for exploring the methods only."
    )


def build_header(default: str, statuses: Sequence[BackboneStatus], home: Path | None = None) -> None:
    """The top of every page: title, description, intended use, backbone, a storage warning on a
    Space without persistent storage; download recipes folded."""
    notice = storage_notice(home) if home is not None else None
    gr.Markdown(
        f"# medot {__version__}\n{DESCRIPTION}\n\n{INTENDED_USE}\n\n{backbone_line(default, statuses)}"
        + (f"\n\n{notice}" if notice else ""),
        elem_id="medot-header",
    )
    unavailable = [s for s in statuses if not s.available]
    if unavailable:
        with gr.Accordion("Other backbones: how to install them", open=False, elem_id="backbone-recipes"):
            gr.Markdown("\n\n".join(f"**{s.name}**\n\n```\n{s.detail}\n```" for s in unavailable))


def build_about_tab() -> None:
    rows = "\n".join(f"| {name} | {citation} | {where} |" for name, citation, where in PAPERS)
    gr.Markdown(
        f"## About medot {__version__}\n\n{DESCRIPTION}\n\n{INTENDED_USE}\n\n"
        "Uploads are processed in memory and in the server's temporary folder; upload only "
        "de-identified images.\n\n### The papers medot implements\n\n"
        f"| method | paper | in medot |\n|---|---|---|\n{rows}\n",
        elem_id="about",
    )


PERSISTENT_MOUNT = Path("/data")


def storage_notice(settings_home: Path, environ: Mapping[str, str] | None = None) -> str | None:
    """A warning on a Hugging Face Space (``SPACE_ID`` set) whose ``MEDOT_HOME`` is not on the
    persistent disk (mounted at ``/data`` when the Space has persistent storage): jobs, imported
    datasets and trained models then vanish when the container restarts. ``None`` elsewhere."""
    environ = os.environ if environ is None else environ
    if not environ.get("SPACE_ID"):
        return None
    home = Path(settings_home)
    if PERSISTENT_MOUNT in home.parents or home == PERSISTENT_MOUNT:
        if PERSISTENT_MOUNT.is_dir():
            return None
        return (f"**Storage:** MEDOT_HOME is {home}, but {PERSISTENT_MOUNT} is not mounted: turn on the Space's "
                "persistent storage, or jobs and models vanish when the Space restarts.")
    return (
        "**Storage: this Hugging Face Space keeps nothing.** Jobs, imported datasets and trained models live in "
        f"{home}, inside the container, and vanish when the Space restarts or sleeps. To keep them, turn on "
        f"persistent storage and set MEDOT_HOME={PERSISTENT_MOUNT}/medot (docs/space.md); to train for yourself, "
        "run the app locally (`python app.py --share` gives others a temporary link)."
    )
