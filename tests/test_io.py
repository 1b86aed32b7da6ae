"""Tests for medot.data.io: round trips per format, the DICOM display pipeline, every error."""

from __future__ import annotations

import io
import zlib
from pathlib import Path

import numpy as np
import pydicom
import pytest
from PIL import Image
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.pixels import apply_color_lut, convert_color_space, get_decoder
from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid

from medot.data.io import MedicalImage, read_image, validate_upload
from medot.errors import ImageReadError

DICOM_FILES = Path(pydicom.__file__).parent / "data" / "test_files"  # shipped in the wheel

H, W = 24, 40
GRAY8 = (np.add.outer(np.arange(H) * 4, np.arange(W) * 3) % 256).astype(np.uint8)
GRAY16 = np.linspace(0, 65535, H * W).round().astype(np.uint16).reshape(H, W)
RGB8 = np.stack([GRAY8, 255 - GRAY8, GRAY8 // 2 + 7], axis=-1)


def encode(array: np.ndarray | Image.Image, fmt: str, **options) -> bytes:
    image = array if isinstance(array, Image.Image) else Image.fromarray(array)
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **options)
    return buffer.getvalue()


def dicom_bytes(ds: Dataset, *, preamble: bool = True) -> bytes:
    buffer = io.BytesIO()
    if preamble:
        ds.save_as(buffer, enforce_file_format=True)
    else:
        pydicom.dcmwrite(buffer, ds, implicit_vr=False, little_endian=True)
    return buffer.getvalue()


def synthetic_dicom(
    pixels: np.ndarray, photometric: str = "MONOCHROME2", bits_stored: int = 12
) -> Dataset:
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID = SecondaryCaptureImageStorage
    ds.Modality = "OT"
    ds.set_pixel_data(pixels, photometric, bits_stored)
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    return ds


def linear_window(x: np.ndarray, center: float, width: float) -> np.ndarray:
    """PS3.3 C.11.2.1.2.1 (LINEAR) onto [0, 1], written out independently of pydicom."""
    c, w = center - 0.5, width - 1.0
    return np.clip((x - c) / w + 0.5, 0.0, 1.0) * (x > c - w / 2)


def assert_raises_read_error(match: str, function, *args, **kwargs) -> str:
    with pytest.raises(ImageReadError, match=match) as info:
        function(*args, **kwargs)
    return str(info.value)


# ----------------------------------------------------------------------------- raster round trips


@pytest.mark.parametrize(
    ("fmt", "array", "expected", "dtype"),
    [
        ("PNG", GRAY8, GRAY8 / 255, "uint8"),
        ("PNG", GRAY16, GRAY16 / 65535, "uint16"),
        ("PNG", RGB8, RGB8 / 255, "uint8"),
        ("BMP", RGB8, RGB8 / 255, "uint8"),
        ("BMP", GRAY8, GRAY8 / 255, "uint8"),
        ("TIFF", GRAY8, GRAY8 / 255, "uint8"),
        ("TIFF", GRAY16, GRAY16 / 65535, "uint16"),
        ("TIFF", RGB8, RGB8 / 255, "uint8"),
    ],
)
def test_lossless_round_trip_scales_by_dtype_maximum(fmt, array, expected, dtype):
    image = read_image(encode(array, fmt))
    assert image.format == fmt.lower()
    assert image.original_dtype == dtype
    assert image.pixels.dtype == np.float32 and image.pixels.shape == array.shape
    np.testing.assert_allclose(image.pixels, expected, rtol=0, atol=0.5 / 65535)


def test_png_with_alpha_is_composited_over_black():
    alpha = np.tile(np.linspace(0, 255, W).round().astype(np.uint8), (H, 1))
    rgba = read_image(encode(np.dstack([RGB8, alpha]), "PNG"))
    np.testing.assert_allclose(rgba.pixels, RGB8 / 255 * (alpha / 255)[..., None], atol=1e-6)
    assert rgba.pixels.shape == (H, W, 3) and np.all(rgba.pixels[:, 0] == 0)

    gray_alpha = read_image(encode(Image.fromarray(np.dstack([GRAY8, alpha]), "LA"), "PNG"))
    assert gray_alpha.pixels.shape == (H, W)
    np.testing.assert_allclose(gray_alpha.pixels, GRAY8 / 255 * alpha / 255, atol=1e-6)


def test_palette_png_becomes_rgb_through_its_palette():
    indices = (GRAY8 % 4).astype(np.uint8)
    palette = np.array([[0, 0, 0], [255, 0, 0], [10, 200, 30], [90, 90, 250]], dtype=np.uint8)
    image = Image.fromarray(indices, "P")
    image.putpalette(palette.ravel().tolist())
    result = read_image(encode(image, "PNG"))
    assert result.pixels.shape == (H, W, 3)
    np.testing.assert_array_equal(result.pixels, (palette[indices] / 255).astype(np.float32))


def test_jpeg_gray_and_rgb_decode_close_to_source():
    smooth = np.tile(np.linspace(20, 230, W), (H, 1)).astype(np.uint8)
    gray = read_image(encode(smooth, "JPEG", quality=95))
    assert gray.format == "jpeg" and gray.pixels.shape == (H, W)
    assert np.abs(gray.pixels - smooth / 255).mean() < 2 / 255
    rgb = read_image(encode(np.dstack([smooth, smooth[:, ::-1], smooth]), "JPEG", quality=95))
    assert rgb.pixels.shape == (H, W, 3)
    assert np.abs(rgb.pixels[..., 1] - smooth[:, ::-1] / 255).mean() < 3 / 255


def test_tiff_float_kept_in_unit_range_else_min_max():
    unit = (GRAY16 / 65535).astype(np.float32)
    np.testing.assert_array_equal(read_image(encode(unit, "TIFF")).pixels, unit)
    hounsfield = GRAY16.astype(np.float32) * 0.05 - 1000
    expected = (hounsfield - hounsfield.min()) / (hounsfield.max() - hounsfield.min())
    np.testing.assert_allclose(read_image(encode(hounsfield, "TIFF")).pixels, expected, atol=1e-6)


def test_multipage_tiff_gives_middle_page():
    pages = [Image.fromarray((GRAY8 // (k + 1)).astype(np.uint8)) for k in range(3)]
    data = encode(pages[0], "TIFF", save_all=True, append_images=pages[1:])
    image = read_image(data)
    np.testing.assert_array_equal(image.pixels, (GRAY8 // 2 / 255).astype(np.float32))
    assert image.metadata["frame_index"] == 1 and image.metadata["number_of_frames"] == 3


def test_format_comes_from_content_and_path_equals_bytes(tmp_path):
    data = encode(GRAY16, "PNG")
    path = tmp_path / "scan.jpg"
    path.write_bytes(data)
    from_path, from_bytes = read_image(path), read_image(data, name="scan.jpg")
    assert from_path.format == from_bytes.format == "png"
    np.testing.assert_array_equal(from_path.pixels, from_bytes.pixels)
    assert validate_upload(data, "scan.jpg") == "png"


def test_rgb_helper_repeats_gray_and_keeps_colour():
    gray = read_image(encode(GRAY8, "PNG"))
    assert gray.rgb().shape == (H, W, 3)
    assert all(np.array_equal(gray.rgb()[..., c], gray.pixels) for c in range(3))
    colour = read_image(encode(RGB8, "PNG"))
    np.testing.assert_array_equal(colour.rgb(), colour.pixels)


# ----------------------------------------------------------------------------------------- .npy


def npy_bytes(array: np.ndarray, allow_pickle: bool = False) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=allow_pickle)
    return buffer.getvalue()


@pytest.mark.parametrize(
    ("array", "expected"),
    [
        (GRAY16, GRAY16 / 65535),
        (GRAY16.astype(">u2"), GRAY16 / 65535),
        (np.asfortranarray(RGB8), RGB8 / 255),
        ((GRAY16 / 65535).astype(np.float32), GRAY16 / 65535),
        (GRAY8.astype(np.int16) - 500, GRAY8 / GRAY8.max()),
        (GRAY8 > 100, (GRAY8 > 100).astype(float)),
        (GRAY8[..., None], GRAY8 / 255),
        (np.dstack([RGB8, np.full((H, W), 255, np.uint8)]), RGB8 / 255),
    ],
)
def test_npy_round_trip(array, expected):
    image = read_image(npy_bytes(array))
    assert image.format == "npy" and image.original_dtype == str(array.dtype)
    np.testing.assert_allclose(image.pixels, expected, rtol=0, atol=1e-6)


# --------------------------------------------------------------------------------------- DICOM


def test_ct_rescale_then_window_matches_hand_computation():
    ds = pydicom.dcmread(DICOM_FILES / "CT_small.dcm")
    ds.WindowCenter, ds.WindowWidth = 40, 400  # soft-tissue window, in Hounsfield units
    image = read_image(dicom_bytes(ds), name="CT_small.dcm")
    hounsfield = ds.pixel_array * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
    np.testing.assert_allclose(image.pixels, linear_window(hounsfield, 40, 400), atol=1e-6)
    assert 0 < np.mean(image.pixels == 0) < 1 and 0 < np.mean(image.pixels == 1) < 1
    meta = image.metadata
    assert meta["modality"] == "CT" and meta["modality_transform"] == "rescale"
    assert (meta["rescale_slope"], meta["rescale_intercept"]) == (1.0, -1024.0)
    window = (meta["voi_transform"], meta["window_center"], meta["window_width"])
    assert window == ("window", 40.0, 400.0)
    assert image.original_dtype == "int16"


def test_ct_without_window_is_min_max_of_hounsfield_units():
    image = read_image(DICOM_FILES / "CT_small.dcm")
    ds = pydicom.dcmread(DICOM_FILES / "CT_small.dcm")
    hounsfield = ds.pixel_array * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
    expected = (hounsfield - hounsfield.min()) / (hounsfield.max() - hounsfield.min())
    np.testing.assert_allclose(image.pixels, expected, atol=1e-6)
    assert image.metadata["voi_transform"] == "min-max"


def test_mr_window_from_file_and_tiff_preamble_still_read_as_dicom():
    ds = pydicom.dcmread(DICOM_FILES / "MR_small.dcm")
    image = read_image(DICOM_FILES / "MR_small.dcm")
    np.testing.assert_allclose(image.pixels, linear_window(ds.pixel_array, 600, 1600), atol=1e-6)
    assert image.metadata["modality_transform"] == "none"
    assert (DICOM_FILES / "MR_small_implicit.dcm").read_bytes()[:4] == b"II*\x00"  # TIFF preamble
    implicit = read_image(DICOM_FILES / "MR_small_implicit.dcm")
    assert implicit.format == "dicom"
    np.testing.assert_array_equal(implicit.pixels, image.pixels)


def test_window_the_standard_forbids_falls_back_to_min_max():
    ds = pydicom.dcmread(DICOM_FILES / "CT_small.dcm")
    ds.WindowCenter, ds.WindowWidth = 40, 0  # LINEAR needs width >= 1 (PS3.3 C.11.2.1.2.1)
    image = read_image(dicom_bytes(ds))
    stored = ds.pixel_array
    np.testing.assert_allclose(image.pixels, (stored - stored.min()) / np.ptp(stored), atol=1e-6)
    assert image.metadata["voi_transform"].startswith("min-max (window ignored")


def test_voi_lut_sequence_is_applied():
    stored = np.tile(np.arange(6, dtype=np.uint16), (4, 1))
    ds = synthetic_dicom(stored)
    lut = [0, 50, 200, 255]
    item = Dataset()
    item.LUTDescriptor = [len(lut), 1, 8]  # 4 entries, first mapped value 1, 8-bit output
    item.add_new("LUTData", "US", lut)
    ds.VOILUTSequence = [item]
    image = read_image(dicom_bytes(ds))
    expected = np.array(lut)[np.clip(stored.astype(int) - 1, 0, len(lut) - 1)] / 255
    np.testing.assert_allclose(image.pixels, expected, atol=1e-7)
    assert image.metadata["voi_transform"] == "VOI LUT"


def test_monochrome1_is_inverted():
    stored = (np.arange(H * W).reshape(H, W) % 4096).astype(np.uint16)
    image = read_image(dicom_bytes(synthetic_dicom(stored, "MONOCHROME1")))
    np.testing.assert_allclose(image.pixels, 1 - stored / stored.max(), atol=1e-6)
    assert image.metadata["photometric_interpretation"] == "MONOCHROME1"


def test_enhanced_multiframe_uses_middle_frame_and_its_functional_groups():
    stored = np.stack([GRAY8.astype(np.uint16) * 10 + k for k in range(3)])
    ds = synthetic_dicom(stored)
    slopes, intercepts = [1.0, 2.0, 3.0], [0.0, -100.0, 5.0]
    per_frame = []
    for slope, intercept in zip(slopes, intercepts):
        transform = Dataset()
        transform.RescaleSlope, transform.RescaleIntercept = slope, intercept
        transform.RescaleType = "US"
        frame = Dataset()
        frame.PixelValueTransformationSequence = [transform]
        per_frame.append(frame)
    window, shared = Dataset(), Dataset()
    window.WindowCenter, window.WindowWidth = 2000, 3000
    shared.FrameVOILUTSequence = [window]
    ds.SharedFunctionalGroupsSequence = [shared]
    ds.PerFrameFunctionalGroupsSequence = per_frame
    image = read_image(dicom_bytes(ds))
    expected = linear_window(stored[1] * 2.0 - 100.0, 2000, 3000)
    np.testing.assert_allclose(image.pixels, expected, atol=1e-6)
    assert (image.metadata["frame_index"], image.metadata["number_of_frames"]) == (1, 3)
    assert image.metadata["rescale_slope"] == 2.0


def test_rle_multiframe_rgb_gives_middle_frame():
    ds = pydicom.dcmread(DICOM_FILES / "SC_rgb_rle_2frame.dcm")
    image = read_image(DICOM_FILES / "SC_rgb_rle_2frame.dcm")
    np.testing.assert_allclose(image.pixels, ds.pixel_array[1] / 255, atol=1e-7)
    assert image.metadata["frame_index"] == 1 and image.pixels.shape == (100, 100, 3)


def test_ybr_is_converted_to_rgb():
    path = DICOM_FILES / "SC_ybr_full_422_uncompressed.dcm"
    ds = pydicom.dcmread(path)
    raw, _ = get_decoder(ds.file_meta.TransferSyntaxUID).as_array(ds, index=0, raw=True)
    image = read_image(path)
    expected = convert_color_space(raw, "YBR_FULL", "RGB") / 255
    np.testing.assert_allclose(image.pixels, expected, atol=1e-7)
    assert image.metadata["photometric_interpretation"] == "YBR_FULL_422"
    assert image.metadata["decoded_as"] == "RGB"


def test_palette_color_dicom_goes_through_its_lut():
    path = DICOM_FILES / "examples_palette.dcm"
    ds = pydicom.dcmread(path)
    image = read_image(path)
    np.testing.assert_allclose(image.pixels, apply_color_lut(ds.pixel_array, ds) / 65535, atol=1e-7)


def test_preamble_less_dicom_read_only_with_dcm_name():
    stored = (np.arange(H * W).reshape(H, W) % 3000).astype(np.uint16)
    data = dicom_bytes(synthetic_dicom(stored), preamble=False)
    assert data[128:132] != b"DICM"
    image = read_image(data, name="slice.DCM")
    np.testing.assert_allclose(image.pixels, stored / stored.max(), atol=1e-6)
    assert validate_upload(data, "slice.dcm") == "dicom"
    assert_raises_read_error("not an image", read_image, data, name="slice.bin")


# -------------------------------------------------------------------------------------- errors


def test_missing_empty_and_folder(tmp_path):
    assert_raises_read_error("not found", read_image, tmp_path / "absent.png")
    (tmp_path / "empty.png").write_bytes(b"")
    assert_raises_read_error("empty", read_image, tmp_path / "empty.png")
    assert_raises_read_error("empty", read_image, b"")
    assert_raises_read_error("empty", validate_upload, b"", "x.png")
    assert_raises_read_error("not a file", read_image, tmp_path)


@pytest.mark.parametrize("name", ["notes.png", "notes.dcm", "notes.npy"])
def test_text_file_with_image_name_is_not_an_image(tmp_path, name):
    path = tmp_path / name
    path.write_text("patient notes, not pixels\n" * 20)
    message = assert_raises_read_error("not an image", read_image, path)
    assert name in message
    assert_raises_read_error("not an image", validate_upload, path.read_bytes(), name)


@pytest.mark.parametrize(
    ("fmt", "channels"), [("PNG", ()), ("JPEG", (3,)), ("BMP", (3,)), ("TIFF", ())]
)
def test_truncated_raster_raises_but_header_validates(fmt, channels):
    noise = np.random.default_rng(0).integers(0, 256, (128, 128, *channels), dtype=np.uint8)
    data = encode(noise, fmt)  # noise: the header is a small part of the file
    cut = data[: len(data) // 2]
    assert validate_upload(cut, "cut") == fmt.lower()  # the header alone is fine
    assert_raises_read_error("truncated", read_image, cut, name="cut")


def test_corrupt_png_header_and_truncated_npy_and_dicom():
    png = encode(GRAY8, "PNG")
    assert_raises_read_error("truncated or corrupt", read_image, png[:8] + b"\x00" * 40)
    assert_raises_read_error("truncated", read_image, npy_bytes(GRAY16)[:-100])
    assert_raises_read_error("truncated", read_image, DICOM_FILES / "MR_truncated.dcm")


@pytest.mark.parametrize(
    "data",
    [
        encode(GRAY8, "PNG"),
        encode(RGB8, "JPEG"),
        encode(RGB8, "BMP"),
        encode(GRAY16, "TIFF"),
        npy_bytes(GRAY16),
        (DICOM_FILES / "CT_small.dcm").read_bytes(),
    ],
    ids=["png", "jpeg", "bmp", "tiff", "npy", "dicom"],
)
def test_pixel_limit_checked_from_header(data):
    message = assert_raises_read_error("pixels", validate_upload, data, "big", max_pixels=100)
    assert "more than the limit of 100 pixels" in message
    assert_raises_read_error("pixels", read_image, data, max_pixels=100)


def test_decompression_bomb_png_refused_before_decoding():
    png = bytearray(encode(GRAY8, "PNG"))
    png[16:24] = (100_000).to_bytes(4, "big") * 2  # IHDR width and height
    png[29:33] = zlib.crc32(bytes(png[12:29])).to_bytes(4, "big")
    assert_raises_read_error("pixels", validate_upload, bytes(png), "bomb.png")
    assert_raises_read_error("pixels", read_image, bytes(png))


def test_byte_limit(tmp_path):
    data = encode(GRAY16, "PNG")
    assert_raises_read_error("bytes", validate_upload, data, "x.png", max_bytes=100)
    (tmp_path / "x.png").write_bytes(data)
    assert_raises_read_error("bytes", read_image, tmp_path / "x.png", max_bytes=100)


def test_dicom_without_pixel_data():
    message = assert_raises_read_error("no pixel data", read_image, DICOM_FILES / "rtplan.dcm")
    assert "RT Plan Storage" in message
    ds = synthetic_dicom(GRAY8.astype(np.uint16))
    del ds.PixelData
    assert_raises_read_error("no pixel data", validate_upload, dicom_bytes(ds), "x.dcm")


def test_dicom_compressed_without_decoder_says_what_is_missing():
    path = DICOM_FILES / "JPEGLSNearLossless_08.dcm"
    syntax = pydicom.dcmread(path, stop_before_pixels=True).file_meta.TransferSyntaxUID
    if get_decoder(syntax).is_available:
        pytest.skip("a JPEG-LS decoder is installed here")
    assert_raises_read_error("JPEG-LS.*no decoder", validate_upload, path.read_bytes(), "ls.dcm")


@pytest.mark.parametrize(
    "data",
    [
        npy_bytes(np.where(GRAY8 > 100, np.nan, GRAY8 / 255)),
        encode(np.where(GRAY8 > 100, np.inf, GRAY8).astype(np.float32), "TIFF"),
    ],
    ids=["npy-nan", "tiff-inf"],
)
def test_non_finite_values_refused(data):
    assert_raises_read_error("NaN or infinity", read_image, data)


def test_constant_images_refused():
    assert_raises_read_error("constant", read_image, encode(np.full((H, W), 128, np.uint8), "PNG"))
    assert_raises_read_error("constant", read_image, npy_bytes(np.zeros((H, W), np.float32)))
    ds = pydicom.dcmread(DICOM_FILES / "CT_small.dcm")
    ds.WindowCenter, ds.WindowWidth = 5000, 10  # far above every Hounsfield value
    assert_raises_read_error("constant", read_image, dicom_bytes(ds))


@pytest.mark.parametrize(
    ("array", "match"),
    [
        (np.array([[object(), 1]], dtype=object), "dtype object"),
        (np.ones((H, W), np.complex64), "dtype complex64"),
        (np.ones((H, W, 2), np.uint8), r"shape \(24, 40, 2\)"),
        (np.ones((3, H, W), np.uint8), "shape"),
        (np.ones((2, H, W, 3), np.uint8), "shape"),
        (np.ones(W, np.uint8), "shape"),
    ],
)
def test_unsupported_npy_refused_from_header(array, match):
    data = npy_bytes(array, allow_pickle=True)
    assert_raises_read_error(match, validate_upload, data, "x.npy")
    assert_raises_read_error(match, read_image, data)


def test_medical_image_is_frozen():
    image = read_image(encode(GRAY8, "PNG"))
    assert isinstance(image, MedicalImage)
    with pytest.raises(AttributeError):
        image.format = "jpeg"
