"""Every error a user can cause reaches the screen as one readable line, never a stack trace."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import gradio as gr

import medot
from medot.data.io import DEFAULT_MAX_PIXELS, MedicalImage, read_image, validate_upload
from medot.errors import MedotError

UPLOAD_KINDS = "PNG, JPEG, BMP, TIFF, DICOM or .npy"
#: longest side kept after decoding (the backbones see 224 px; a map overlay needs no more)
MAX_SIDE = 1024
_limits = {"max_pixels": DEFAULT_MAX_PIXELS}
#: the server's own folders, by the name users see instead (:func:`set_private_paths`)
_private: dict[str, str] = {}


def set_upload_limits(max_pixels: int) -> None:
    """The largest upload (pixels) this app decodes (:func:`app.deployment.pixel_limit`)."""
    _limits["max_pixels"] = int(max_pixels)


def private_paths(home: str | os.PathLike, data_root: str | os.PathLike) -> dict[str, str]:
    """``{server path: name shown}`` for the app's folders: ``$MEDOT_DATA_ROOT``, ``$MEDOT_HOME``
    (as given and resolved), the folder medot is installed in (``$MEDOT_INSTALL``: its bundled files,
    e.g. the example class descriptions, are named in job logs) and the Python interpreter
    (``python``), longest first."""
    names: dict[str, str] = {}
    install = Path(medot.__file__).resolve().parent.parent
    for path, name in ((data_root, "$MEDOT_DATA_ROOT"), (home, "$MEDOT_HOME"), (install, "$MEDOT_INSTALL")):
        for variant in {str(Path(path)), str(Path(path).expanduser().resolve())}:
            if variant not in ("/", "."):
                names.setdefault(variant, name)
    names[sys.executable] = "python"
    return dict(sorted(names.items(), key=lambda item: -len(item[0])))


def redact_paths(text: str, paths: dict[str, str] | None = None) -> str:
    """``text`` with the server's folders (``paths``, default: those of :func:`set_private_paths`)
    replaced by their names, e.g. ``/srv/medot/jobs/3/train.log`` -> ``$MEDOT_HOME/jobs/3/train.log``."""
    for path, name in (_private if paths is None else paths).items():
        text = text.replace(path, name)
    return text


def set_private_paths(home: str | os.PathLike, data_root: str | os.PathLike) -> None:
    """The folders that error messages must not show (:func:`redact_paths`)."""
    _private.clear()
    _private.update(private_paths(home, data_root))


@contextmanager
def user_errors() -> Iterator[None]:
    """Turn medot's user errors (and ValueErrors from parsing what was typed) into ``gr.Error``,
    the server's folders named, not shown (:func:`redact_paths`)."""
    try:
        yield
    except (MedotError, ValueError) as error:
        raise gr.Error(redact_paths(str(error)), print_exception=False) from None


def read_upload(path: str | None, frame: int | None = None, window: tuple[float, float] | None = None) -> MedicalImage:
    """The uploaded file, checked by :func:`validate_upload` (size, magic bytes, header, at most the
    app's pixel limit) before its pixels are decoded, and downscaled to :data:`MAX_SIDE` right
    after; ``frame`` and ``window`` as in :func:`medot.data.io.read_image`."""
    if not path:
        raise gr.Error(f"Upload an image first ({UPLOAD_KINDS}) or pick an example.", print_exception=False)
    name = Path(path).name
    with user_errors():
        data = Path(path).read_bytes()
        validate_upload(data, name, max_pixels=_limits["max_pixels"])
        return read_image(data, name=name, max_pixels=_limits["max_pixels"], max_side=MAX_SIDE, frame=frame,
                          window=window)
