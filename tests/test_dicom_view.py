"""DICOM as DICOM: a chosen frame, window presets (PS3.3 C.11.2.1.2.1 against pydicom) and the
metadata panel's rows."""

from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.pixels import apply_modality_lut, apply_windowing

from medot.data.io import read_image
from medot.data.windows import CT_PRESETS, FILE_WINDOW, apply_window, dicom_summary, window_presets
from medot.errors import ImageReadError

DICOM_FILES = Path(pydicom.__file__).parent / "data" / "test_files"


def write_multiframe_ct(path: Path, frames: int = 3) -> Path:
    """CT_small repeated as ``frames`` frames, frame k shifted by +200 k stored values."""
    ds = pydicom.dcmread(DICOM_FILES / "CT_small.dcm")
    stored = ds.pixel_array
    stack = np.stack([stored.astype(np.int32) + 200 * k for k in range(frames)]).astype(stored.dtype)
    ds.NumberOfFrames = frames
    ds.PixelData = stack.tobytes()
    ds.save_as(path)
    return path


@pytest.mark.parametrize(("center", "width"), [(40.0, 400.0), (-600.0, 1500.0), (0.0, 2.0), (100.5, 1.0)])
def test_window_is_pydicoms_linear_window_mapped_onto_unit_range(center, width):
    ds = pydicom.dcmread(DICOM_FILES / "CT_small.dcm")
    values = apply_modality_lut(ds.pixel_array, ds)
    ds.WindowCenter, ds.WindowWidth, ds.VOILUTFunction = center, width, "LINEAR"
    low, high = apply_windowing(np.array([-np.inf, np.inf]), ds)
    expected = (apply_windowing(values, ds) - low) / (high - low)
    np.testing.assert_allclose(apply_window(values, center, width), expected, atol=1e-6)


def test_window_narrower_than_one_is_refused():
    with pytest.raises(ValueError, match="at least 1"):
        apply_window(np.zeros(3), 0.0, 0.5)


def test_reading_ct_through_a_preset_window_and_the_metadata_it_records():
    ds = pydicom.dcmread(DICOM_FILES / "CT_small.dcm")
    center, width = CT_PRESETS["mediastinum"]
    image = read_image(DICOM_FILES / "CT_small.dcm", window=(center, width))
    np.testing.assert_allclose(image.pixels, apply_window(apply_modality_lut(ds.pixel_array, ds), center, width))
    rows = dict(dicom_summary(image.metadata))
    assert rows["Modality"] == "CT"
    assert rows["Pixel spacing (mm, row × column)"] == "0.661468 × 0.661468"
    assert rows["Rescale (slope, intercept)"] == "1, -1024"
    assert rows["Window applied (centre / width)"] == "40 / 400 (chosen)"
    assert rows["Size (rows × columns)"] == "128 × 128"
    assert list(window_presets(image.metadata)) == [FILE_WINDOW, "lung", "mediastinum", "bone"]


def test_mr_offers_only_its_own_window():
    image = read_image(DICOM_FILES / "MR_small.dcm")
    assert window_presets(image.metadata) == {FILE_WINDOW: None}
    assert dict(dicom_summary(image.metadata))["Window applied (centre / width)"] == "600 / 1600 (the file's)"


def test_a_chosen_frame_of_a_multiframe_file(tmp_path):
    path = write_multiframe_ct(tmp_path / "multi.dcm")
    window = (0.0, 4000.0)
    frames = [read_image(path, frame=k, window=window) for k in range(3)]
    assert [f.metadata["frame_index"] for f in frames] == [0, 1, 2]
    assert read_image(path).metadata["frame_index"] == 1  # the middle frame by default
    # frame k is frame 0 shifted by 200 k HU: through one window, by 200 k / (w - 1)
    np.testing.assert_allclose(frames[2].pixels.mean() - frames[0].pixels.mean(), 400 / 3999, atol=2e-3)
    assert dict(dicom_summary(frames[2].metadata))["Frame"] == "3 of 3"
    with pytest.raises(ImageReadError, match="frame 3 does not exist; the file has frames 0 to 2"):
        read_image(path, frame=3)
