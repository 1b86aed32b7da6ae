"""Imaging modalities in plain words, and the DICOM Modality tag (0008,0060) mapped onto them.

A K-MaT task names its two modalities in lower-case keys (``"ct"`` / ``"xray"``,
``"dermoscopy"`` / ``"clinical"``, ``"mammography"`` / ``"ultrasound"``); :func:`display_name`
gives the words a clinician reads ("CT", "X-ray"). :func:`dicom_modality` reads the defined terms
of PS3.3 C.7.3.1.1.1 (``CT``, ``CR``, ``DX``, ``MG``, ``US``, ...) as one of those keys, and
:func:`match_modality` says which of a model's two modalities (``"high"`` / ``"low"``) an image with
that tag belongs to, or ``None`` when neither.
"""

from __future__ import annotations

from medot.errors import CheckpointError

#: modality key -> plain words
DISPLAY_NAMES = {
    "ct": "CT",
    "xray": "X-ray",
    "mri": "MRI",
    "mammography": "Mammography",
    "ultrasound": "Ultrasound",
    "dermoscopy": "Dermoscopy",
    "clinical": "Clinical photograph",
    "pet": "PET",
}

#: DICOM Modality defined term (PS3.3 C.7.3.1.1.1) -> modality key. CR, DX and RG are projection
#: radiography; MG is mammography (itself X-ray, but a task of its own here); XC is external-camera
#: photography, the clinical photographs of the skin tasks; DMS is dermoscopy.
DICOM_MODALITIES = {
    "CT": "ct",
    "CR": "xray",
    "DX": "xray",
    "RG": "xray",
    "MR": "mri",
    "MG": "mammography",
    "US": "ultrasound",
    "XC": "clinical",
    "DMS": "dermoscopy",
    "PT": "pet",
}


def display_name(key: str) -> str:
    """Plain words for a modality key (``"xray"`` -> ``"X-ray"``); unknown keys are shown as given."""
    return DISPLAY_NAMES.get(key.lower(), key)


def dicom_modality(tag: str | None) -> str | None:
    """The modality key of a DICOM Modality value (``"DX"`` -> ``"xray"``), ``None`` if unknown."""
    return DICOM_MODALITIES.get((tag or "").strip().upper())


def match_modality(tag: str | None, modalities: tuple[str, str]) -> str | None:
    """``"high"`` or ``"low"``: which of a model's ``(high, low)`` modality keys the DICOM tag names;
    ``None`` for no tag, an unknown tag, or a modality the model was not built for."""
    key = dicom_modality(tag)
    if key is None:
        return None
    for side, name in zip(("high", "low"), modalities, strict=True):
        if name.lower() == key:
            return side
    return None


def modality_side(modality: str, modalities: tuple[str, str], what: str = "this model") -> str:
    """``"high"`` or ``"low"`` for a modality given as ``high`` / ``low`` or by one of a model's own
    ``(high, low)`` names; a :class:`~medot.errors.CheckpointError` naming both otherwise."""
    sides = {"high": "high", "low": "low", modalities[0]: "high", modalities[1]: "low"}
    if modality not in sides:
        raise CheckpointError(
            f"unknown modality {modality!r}: {what} knows 'high' ({modalities[0]}) and 'low' ({modalities[1]})"
        )
    return sides[modality]
