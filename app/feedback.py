"""Every error a user can cause reaches the screen as one readable line, never a stack trace."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import gradio as gr

from medot.data.io import MedicalImage, read_image, validate_upload
from medot.errors import MedotError

UPLOAD_KINDS = "PNG, JPEG, BMP, TIFF, DICOM or .npy"


@contextmanager
def user_errors() -> Iterator[None]:
    """Turn medot's user errors (and ValueErrors from parsing what was typed) into ``gr.Error``."""
    try:
        yield
    except (MedotError, ValueError) as error:
        raise gr.Error(str(error), print_exception=False) from None


def read_upload(path: str | None, frame: int | None = None, window: tuple[float, float] | None = None) -> MedicalImage:
    """The uploaded file, checked by :func:`validate_upload` (size, magic bytes, header) before its
    pixels are decoded; ``frame`` and ``window`` as in :func:`medot.data.io.read_image`."""
    if not path:
        raise gr.Error(f"Upload an image first ({UPLOAD_KINDS}) or pick an example.", print_exception=False)
    name = Path(path).name
    with user_errors():
        data = Path(path).read_bytes()
        validate_upload(data, name)
        return read_image(data, name=name, frame=frame, window=window)
