"""The bundled examples as a thumbnail gallery: clicking one loads a neutrally named copy into the
tab's upload (the bundled file names give the expected class away; the copies do not)."""

from __future__ import annotations

import functools
import tempfile
from pathlib import Path

import gradio as gr

from medot.data.examples import GalleryExample, example_gallery


@functools.cache
def gallery_examples() -> tuple[GalleryExample, ...]:
    """Written once per process into a temporary folder (Gradio serves files from the temp dir)."""
    return tuple(example_gallery(Path(tempfile.mkdtemp(prefix="medot-examples-"))))


def build_example_gallery(upload: gr.File) -> gr.Gallery:
    """A row of example thumbnails under ``upload``; a click puts that example into ``upload``."""
    examples = gallery_examples()
    gallery = gr.Gallery(
        [(str(example.thumbnail), example.caption) for example in examples],
        label="Examples: synthetic phantoms and a DICOM CT (click one to load it)",
        columns=4,
        height=320,
        allow_preview=False,
        object_fit="contain",
        interactive=False,
    )

    def pick(event: gr.SelectData) -> str:
        return str(examples[event.index].file)

    gallery.select(pick, outputs=[upload], api_name=False)
    return gallery
