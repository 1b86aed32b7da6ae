"""Every error a user can cause reaches the screen as one readable line, never a stack trace."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import gradio as gr

from medot.data.io import DEFAULT_MAX_PIXELS, MedicalImage, read_image, validate_upload
from medot.errors import MedotError

UPLOAD_KINDS = "PNG, JPEG, BMP, TIFF, DICOM or .npy"
#: longest side kept after decoding (the backbones see 224 px; a map overlay needs no more)
MAX_SIDE = 1024
_limits = {"max_pixels": DEFAULT_MAX_PIXELS}


def set_upload_limits(max_pixels: int) -> None:
    """The largest upload (pixels) this app decodes (:func:`app.deployment.pixel_limit`)."""
    _limits["max_pixels"] = int(max_pixels)


@contextmanager
def user_errors() -> Iterator[None]:
    """Turn medot's user errors (and ValueErrors from parsing what was typed) into ``gr.Error``."""
    try:
        yield
    except (MedotError, ValueError) as error:
        raise gr.Error(str(error), print_exception=False) from None


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
