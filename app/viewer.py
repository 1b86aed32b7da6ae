"""The uploaded image as a reader sees it: the full image (not only the backbone's 224-px crop), a
metadata panel (:func:`medot.data.windows.dicom_summary`), window presets
(:func:`medot.data.windows.window_presets`) and a frame slider for multi-frame files. The frame
and window chosen here are also what the classification reads."""

from __future__ import annotations

import gradio as gr
import numpy as np

from app.feedback import read_upload, user_errors
from medot.data.io import MedicalImage
from medot.data.windows import FILE_WINDOW, dicom_summary, preset_window, window_presets

DEIDENTIFY = (
    "Upload **de-identified** images only: DICOM headers can carry names, dates and identifiers. "
    "Uploads are kept in the server's temporary folder while the app runs."
)


def chosen_image(file_path: str | None, preset: str | None, frame: float | None) -> MedicalImage:
    """The upload at the chosen frame through the chosen window preset."""
    with user_errors():
        window = preset_window(preset)
    return read_upload(file_path, frame=None if frame is None else int(frame), window=window)


def _metadata_table(image: MedicalImage) -> str:
    rows = dicom_summary(image.metadata) if image.format == "dicom" else []
    height, width = image.pixels.shape[:2]
    rows = [("Format", image.format.upper()), *([] if rows else [("Size (rows × columns)", f"{height} × {width}")]), *rows]
    return "| field | value |\n|---|---|\n" + "\n".join(f"| {name} | {value} |" for name, value in rows)


def render(image: MedicalImage) -> np.ndarray:
    return (np.clip(image.pixels, 0.0, 1.0) * 255).round().astype(np.uint8)


def view_upload(file_path: str | None, preset: str | None, frame: float | None, reset: bool = False):
    """(full image, metadata table, preset dropdown, frame slider) of the upload; ``reset`` (a new
    upload) goes back to the file's own window and its middle frame."""
    if not file_path:
        return None, "", gr.update(choices=[FILE_WINDOW], value=FILE_WINDOW), gr.update(visible=False)
    image = chosen_image(file_path, None if reset else preset, None if reset else frame)
    presets = list(window_presets(image.metadata))
    frames = int(image.metadata.get("number_of_frames") or 1)
    slider = gr.update(minimum=0, maximum=max(frames - 1, 1), value=int(image.metadata.get("frame_index", 0)),
                       visible=frames > 1)
    value = preset if (not reset and preset in presets) else FILE_WINDOW
    return render(image), _metadata_table(image), gr.update(choices=presets, value=value), slider


def build_viewer(upload: gr.File) -> tuple[gr.Dropdown, gr.Slider]:
    """Lay out the viewer under the tab's inputs; returns (window preset, frame) for the classifier."""
    with gr.Accordion("The uploaded image (full size, metadata, window, frame)", open=True, elem_id="viewer"):
        with gr.Row():
            full = gr.Image(label="As uploaded (full image, with the window below)", type="numpy", format="png",
                            interactive=False, height=420, elem_id="viewer-image")
            with gr.Column():
                preset = gr.Dropdown([FILE_WINDOW], value=FILE_WINDOW, label="Window / level preset",
                                     allow_custom_value=True, elem_id="viewer-window")
                frame = gr.Slider(0, 1, value=0, step=1, label="Frame / slice (0-based)", visible=False,
                                  elem_id="viewer-frame")
                metadata = gr.Markdown(elem_id="viewer-metadata")
    outputs = [full, metadata, preset, frame]
    upload.change(lambda f, p, n: view_upload(f, p, n, reset=True), inputs=[upload, preset, frame], outputs=outputs,
                  api_name="view_upload")
    preset.input(view_upload, inputs=[upload, preset, frame], outputs=outputs, api_name="view_window")
    frame.release(view_upload, inputs=[upload, preset, frame], outputs=outputs, api_name=False)
    return preset, frame
