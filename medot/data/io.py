"""Read medical images (PNG, JPEG, BMP, TIFF, DICOM, ``.npy``) into float32 arrays in [0, 1].

:func:`read_image` takes a path or the bytes of an upload and returns a :class:`MedicalImage`
whose ``pixels`` (``HxW`` gray or ``HxWx3`` RGB) can go straight into a backbone's ``transform``.
:func:`validate_upload` runs only the cheap checks (size, magic bytes, header dimensions) so an app
can refuse a bad upload before anything is decoded. Every bad input raises
:class:`~medot.errors.ImageReadError` with a message that says what is wrong.

The format is detected from the content, never from the file name: DICOM (``DICM`` at byte 128,
checked first because a DICOM preamble may itself be a TIFF header), PNG, JPEG, BMP, TIFF, NPY.
A DICOM data set without the 128-byte preamble is accepted only when the name ends in ``.dcm``.

Intensity scaling to [0, 1]:

* **DICOM, grayscale** -- the display pipeline of PS3.3 C.11: Modality LUT or rescale
  :math:`v = m\\,s + b` (C.11.1), then the VOI LUT (C.11.2.1.1) or the window (C.11.2.1.2, first
  centre/width pair) mapped from its output range onto [0, 1]; with neither, min--max over the
  frame. ``MONOCHROME1`` is inverted afterwards (minimum displayed white, C.7.6.3.1.2).
  Multi-frame objects give the middle frame; for enhanced objects the frame's own Pixel Value
  Transformation and Frame VOI LUT functional groups are used (C.7.6.16).
* **DICOM, colour** -- YBR is converted to RGB by pydicom's decoder, ``PALETTE COLOR`` goes through
  its LUTs; values are divided by :math:`2^{\\text{BitsStored}} - 1` (by the LUT entry maximum for
  palettes).
* **PNG, JPEG, BMP, TIFF, NPY** -- one rule by dtype. Unsigned integers are divided by the dtype's
  maximum (255, 65535, ...): PNG defines samples on the full bit-depth scale, and a fixed scale
  keeps intensities comparable across the images of a data set, which per-image min--max would
  not. Signed integers have no such scale and are min--max scaled; floats already inside [0, 1]
  are kept, other floats are min--max scaled; booleans become 0/1.
  16-bit gray keeps full precision. Pillow decodes colour channels deeper than 8 bits at 8 bits.

Channels: gray stays ``HxW``; palettes become RGB; an alpha channel is composited over black,
:math:`C' = \\alpha C`, which matches the black background of radiographs and scans.
Multi-page TIFFs give the middle page, as multi-frame DICOM does (at most
:data:`DEFAULT_MAX_FRAMES` TIFF pages are accepted); EXIF orientation is applied.

Downscaling (``max_side``): an image whose longer side exceeds ``max_side`` is reduced right after
decoding by the integer factor :math:`k = \\lceil \\max(H, W) / \\text{max\\_side} \\rceil`, each output
pixel the mean of a :math:`k \\times k` box (the last row/column of boxes averages the pixels it
has) - Pillow's ``Image.reduce`` on the decoded samples where the mode allows, the same box mean on
the scaled array otherwise. Backbones resize to 224 px anyway; the box mean avoids aliasing.
"""

from __future__ import annotations

import io
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
from PIL import Image, ImageOps
from pydicom.multival import MultiValue
from pydicom.pixels import (
    apply_color_lut,
    apply_modality_lut,
    apply_voi,
    apply_windowing,
    get_decoder,
)

from medot.data.windows import apply_window
from medot.errors import ImageReadError

DEFAULT_MAX_PIXELS = 64 * 1024 * 1024
"""Largest image (pixels per frame) read by default: 8192 x 8192, above any radiograph.

Checked from the header before decoding. Pillow's own guard (``Image.MAX_IMAGE_PIXELS``, refusing
above twice its value) still caps PNG/JPEG/BMP/TIFF when a larger ``max_pixels`` is passed."""

DEFAULT_MAX_BYTES = 512 * 1024 * 1024
"""Largest file or upload read by default."""

DEFAULT_MAX_FRAMES = 1000
"""Most pages a TIFF may have: Pillow counts pages by walking every one, so the directory chain is
walked first and the walk stops here."""

_REDUCIBLE_MODES = frozenset({"L", "LA", "RGB", "RGBA", "I", "F"})  # modes Image.reduce accepts

SUPPORTED_FORMATS = ("png", "jpeg", "bmp", "tiff", "dicom", "npy")

_PIL_FORMATS = {"png": "PNG", "jpeg": "JPEG", "bmp": "BMP", "tiff": "TIFF"}
_SIGNATURES = (
    (b"\x89PNG\r\n\x1a\n", "png"),
    (b"\xff\xd8\xff", "jpeg"),
    (b"II*\x00", "tiff"),
    (b"MM\x00*", "tiff"),
    (b"\x93NUMPY", "npy"),
)
_BMP_INFO_HEADER_SIZES = (12, 40, 52, 56, 64, 108, 124)
# First element of a preamble-less DICOM data set: group 0002 (file meta) or 0008, either endian.
_BARE_DICOM_STARTS = (b"\x02\x00", b"\x08\x00", b"\x00\x08")
_DICOM_PIXEL_KEYWORDS = ("PixelData", "FloatPixelData", "DoubleFloatPixelData")
_DICOM_FRAME_MACROS = ("PixelValueTransformationSequence", "FrameVOILUTSequence")
# Pillow modes whose numpy view is already gray, gray+alpha, RGB or RGBA samples.
_ARRAY_MODES = frozenset({"1", "L", "LA", "RGB", "RGBA", "I;16", "I;16L", "I;16B", "I", "F"})


@dataclass(frozen=True)
class MedicalImage:
    """A decoded image: ``pixels`` is float32 ``HxW`` (gray) or ``HxWx3`` (RGB) in [0, 1].

    ``format`` is one of :data:`SUPPORTED_FORMATS`, ``original_dtype`` the dtype of the stored
    samples before scaling, ``metadata`` what was done on the way (frame chosen, DICOM rescale
    and window, ...).
    """

    pixels: np.ndarray
    format: str
    original_dtype: str
    metadata: dict[str, Any] = field(default_factory=dict)

    def rgb(self) -> np.ndarray:
        """The pixels as ``HxWx3`` (gray repeated on the three channels)."""
        if self.pixels.ndim == 3:
            return self.pixels
        return np.repeat(self.pixels[..., None], 3, axis=2)


def validate_upload(
    data: bytes,
    name: str | None = None,
    *,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    max_bytes: int = DEFAULT_MAX_BYTES,
) -> str:
    """Check an upload without decoding its pixels; return its format.

    Checks the byte size, the magic bytes and the header (image size against ``max_pixels``,
    DICOM pixel data present and decodable here, ``.npy`` dtype and shape). Raises
    :class:`ImageReadError` on the first problem.
    """
    label = name or "upload"
    _check_byte_size(len(data), label, max_bytes)
    return _inspect(bytes(data), label, name, max_pixels)[0]


def read_image(
    source: str | os.PathLike[str] | bytes,
    *,
    name: str | None = None,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    max_bytes: int = DEFAULT_MAX_BYTES,
    frame: int | None = None,
    window: tuple[float, float] | None = None,
    max_side: int | None = None,
) -> MedicalImage:
    """Read an image from a path or from the bytes of an upload (``name`` labels messages).

    The header is checked first (as in :func:`validate_upload`), then the pixels are decoded and
    scaled to [0, 1] as described in the module docstring; with ``max_side``, an image with a longer
    side is box-downscaled right after decoding (module docstring). Raises :class:`ImageReadError`
    for a missing, empty, oversized, truncated, corrupt, non-image, NaN/Inf-containing or constant
    input.

    ``frame`` (0-based) picks a frame of a multi-frame DICOM or a page of a multi-page TIFF instead
    of the middle one; ``window`` = (centre, width) replaces a grayscale DICOM's own VOI
    transform by that LINEAR window (:func:`medot.data.windows.apply_window`).
    """
    if isinstance(source, (bytes, bytearray, memoryview)):
        data = bytes(source)
        label = name or "upload"
        _check_byte_size(len(data), label, max_bytes)
    else:
        path = Path(source)
        label = name or str(path)
        data = _read_file(path, label, max_bytes)
        name = name or path.name
    fmt, opened = _inspect(data, label, name, max_pixels)
    if fmt == "dicom":
        array, original_dtype, metadata = _decode_dicom(opened, label, frame, window)
    else:
        array, original_dtype, metadata = _decode_raster(opened, fmt, label, max_side, frame)
    if max_side is not None and max(array.shape[:2]) > max_side:
        metadata.setdefault("downscaled_from", tuple(array.shape[:2]))
        array = box_downscale(array, -(-max(array.shape[:2]) // max_side))
    return MedicalImage(_checked_pixels(array, label), fmt, original_dtype, metadata)


def box_downscale(pixels: np.ndarray, factor: int) -> np.ndarray:
    """Mean of each ``factor x factor`` box of ``pixels`` (``HxW`` or ``HxWxC``); the last row and
    column of boxes average the pixels they hold. Output ``ceil(H/k) x ceil(W/k)``."""
    if factor <= 1:
        return pixels
    height, width = pixels.shape[:2]
    rows, cols = np.arange(0, height, factor), np.arange(0, width, factor)
    sums = np.add.reduceat(np.add.reduceat(pixels.astype(np.float32), rows, axis=0), cols, axis=1)
    counts = np.outer(np.diff(np.append(rows, height)), np.diff(np.append(cols, width))).astype(np.float32)
    return sums / (counts if pixels.ndim == 2 else counts[..., None])


def _read_file(path: Path, label: str, max_bytes: int) -> bytes:
    try:
        size = path.stat().st_size
        if not path.is_file():
            raise ImageReadError(f"{label}: not a file (a folder?); give an image file's path.")
        _check_byte_size(size, label, max_bytes)
        return path.read_bytes()
    except FileNotFoundError as exc:
        raise ImageReadError(f"{label}: file not found; check the path.") from exc
    except PermissionError as exc:
        raise ImageReadError(f"{label}: permission denied when reading the file.") from exc


def _check_byte_size(size: int, label: str, max_bytes: int) -> None:
    if size == 0:
        raise ImageReadError(f"{label}: the file is empty (0 bytes).")
    if size > max_bytes:
        raise ImageReadError(
            f"{label}: {size:,} bytes is more than the limit of {max_bytes:,} bytes; "
            "downsample or crop the image first."
        )


def _check_pixel_count(height: int, width: int, label: str, max_pixels: int) -> None:
    if height * width == 0:
        raise ImageReadError(f"{label}: the image has no pixels ({height}x{width}).")
    if height * width > max_pixels:
        raise ImageReadError(
            f"{label}: {height}x{width} = {height * width:,} pixels is more than the limit of "
            f"{max_pixels:,} pixels; downsample the image first (or raise max_pixels if this size "
            "is expected)."
        )


@contextmanager
def _decoder_errors(label: str, what: str) -> Iterator[None]:
    """Report any failure of a third-party decoder on the bytes as a truncated or corrupt file.

    Parsers of untrusted bytes (Pillow, pydicom, numpy) raise many exception types (OSError,
    ValueError, SyntaxError, EOFError, struct.error, ...); the block this wraps holds only their
    calls.
    """
    try:
        yield
    except Exception as exc:
        raise ImageReadError(
            f"{label}: the {what} data is truncated or corrupt ({exc}); re-export the image or "
            "upload the complete file."
        ) from exc


def _detect_format(data: bytes, label: str, name: str | None) -> str:
    if data[128:132] == b"DICM":
        return "dicom"
    for signature, fmt in _SIGNATURES:
        if data.startswith(signature):
            return fmt
    if data.startswith(b"BM") and int.from_bytes(data[14:18], "little") in _BMP_INFO_HEADER_SIZES:
        return "bmp"
    if name is not None and name.lower().endswith(".dcm") and data[:2] in _BARE_DICOM_STARTS:
        return "dicom"
    raise ImageReadError(
        f"{label}: not an image in a supported format ({', '.join(SUPPORTED_FORMATS)}); "
        f"the content starts with {data[:8]!r}."
    )


def _inspect(data: bytes, label: str, name: str | None, max_pixels: int) -> tuple[str, Any]:
    """Detect the format and check the header; return it with the opened, undecoded source."""
    fmt = _detect_format(data, label, name)
    if fmt == "dicom":
        return fmt, _inspect_dicom(data, label, max_pixels)
    if fmt == "npy":
        _inspect_npy(data, label, max_pixels)
        return fmt, data
    return fmt, _inspect_pil(data, fmt, label, max_pixels)


def _inspect_pil(data: bytes, fmt: str, label: str, max_pixels: int) -> Image.Image:
    """Open lazily (Pillow reads only the header here) and check the size before decoding."""
    try:
        image = Image.open(io.BytesIO(data), formats=[_PIL_FORMATS[fmt]])
    except Image.DecompressionBombError as exc:
        raise ImageReadError(
            f"{label}: the header declares more pixels than the limit ({exc}); "
            "downsample the image first."
        ) from exc
    except Exception as exc:
        raise ImageReadError(
            f"{label}: the {fmt.upper()} header is truncated or corrupt ({exc})."
        ) from exc
    _check_pixel_count(image.height, image.width, label, max_pixels)
    if fmt == "tiff":
        _count_tiff_pages(data, label)
    return image


def _inspect_npy(data: bytes, label: str, max_pixels: int) -> None:
    """Check the ``.npy`` header: a numeric dtype and an ``HxW`` or ``HxWx{1,3,4}`` shape."""
    stream = io.BytesIO(data)
    with _decoder_errors(label, ".npy"):
        version = np.lib.format.read_magic(stream)
        if version == (1, 0):
            shape, _, dtype = np.lib.format.read_array_header_1_0(stream)
        else:
            shape, _, dtype = np.lib.format.read_array_header_2_0(stream)
    if dtype.hasobject or dtype.kind not in "buif":
        raise ImageReadError(
            f"{label}: unsupported .npy dtype {dtype}; save a bool, integer or float array."
        )
    if not (len(shape) == 2 or (len(shape) == 3 and shape[2] in (1, 3, 4))):
        raise ImageReadError(
            f"{label}: unsupported .npy shape {shape}; save an HxW array or HxWxC with C = 1, 3 "
            "or 4 (channels last)."
        )
    _check_pixel_count(shape[0], shape[1], label, max_pixels)


def _inspect_dicom(data: bytes, label: str, max_pixels: int) -> pydicom.Dataset:
    """Parse the data set and check pixel data presence, frame size and decoder availability."""
    with _decoder_errors(label, "DICOM"):
        ds = pydicom.dcmread(io.BytesIO(data), force=data[128:132] != b"DICM")
    if not any(keyword in ds for keyword in _DICOM_PIXEL_KEYWORDS):
        kind = ds.SOPClassUID.name if "SOPClassUID" in ds else "DICOM"
        raise ImageReadError(f"{label}: no pixel data in this {kind} object; it is not an image.")
    _check_pixel_count(int(ds.get("Rows") or 0), int(ds.get("Columns") or 0), label, max_pixels)
    if "TransferSyntaxUID" not in ds.file_meta:
        implicit_vr, little_endian = ds.original_encoding
        ds.file_meta.TransferSyntaxUID = (
            pydicom.uid.ImplicitVRLittleEndian if implicit_vr
            else pydicom.uid.ExplicitVRLittleEndian if little_endian
            else pydicom.uid.ExplicitVRBigEndian
        )
    syntax = ds.file_meta.TransferSyntaxUID
    try:
        decoder = get_decoder(syntax)
    except NotImplementedError as exc:
        raise ImageReadError(
            f"{label}: the DICOM transfer syntax {syntax.name} ({syntax}) is not supported; "
            "convert the file to uncompressed DICOM."
        ) from exc
    if not decoder.is_available:
        raise ImageReadError(
            f"{label}: the DICOM pixel data is compressed as {syntax.name}, and no decoder for it "
            f"is installed ({'; '.join(decoder.missing_dependencies)}); install one or convert "
            "the file to uncompressed DICOM."
        )
    return ds


def _frame_index(frame: int | None, frames: int, label: str) -> int:
    """The requested 0-based frame, or the middle one; a frame outside the file is refused."""
    if frame is None:
        return frames // 2
    if not 0 <= frame < frames:
        raise ImageReadError(f"{label}: frame {frame} does not exist; the file has frames 0 to {frames - 1}.")
    return int(frame)


def _decode_raster(
    source: Image.Image | bytes, fmt: str, label: str, max_side: int | None = None, frame: int | None = None
) -> tuple[np.ndarray, str, dict]:
    """Decode a Pillow image or ``.npy`` bytes to unit-range samples (module docstring rules)."""
    if fmt == "npy":
        with _decoder_errors(label, ".npy"):
            array = np.load(io.BytesIO(source), allow_pickle=False)
        metadata: dict[str, Any] = {}
    else:
        array, metadata = _pil_array(source, fmt, label, max_side, frame)
    if array.ndim == 3 and array.shape[2] == 1:
        array = array[..., 0]
    _check_finite(array, label)
    if array.ndim == 3 and array.shape[2] in (2, 4):
        pixels = _to_unit_range(array[..., :-1]) * _to_unit_range(array[..., -1:])
        metadata["alpha"] = "composited over black"
    else:
        pixels = _to_unit_range(array)
    if pixels.ndim == 3 and pixels.shape[2] == 1:
        pixels = pixels[..., 0]
    return pixels, str(array.dtype), metadata


def _pil_array(
    image: Image.Image, fmt: str, label: str, max_side: int | None = None, frame: int | None = None
) -> tuple[np.ndarray, dict]:
    with _decoder_errors(label, fmt.upper()):
        frames = getattr(image, "n_frames", 1)
    index = _frame_index(frame, frames, label)
    with _decoder_errors(label, fmt.upper()):
        image.seek(index)
        image.load()
        image = ImageOps.exif_transpose(image)
    metadata = {"mode": image.mode, "frame_index": index, "number_of_frames": frames}
    if image.mode not in _ARRAY_MODES:
        image = image.convert("RGBA" if image.has_transparency_data else "RGB")
    if max_side is not None and max(image.size) > max_side and image.mode in _REDUCIBLE_MODES:
        metadata["downscaled_from"] = (image.height, image.width)
        image = image.reduce(-(-max(image.size) // max_side))  # before the float copy: the memory peak
    return np.asarray(image), metadata


def _count_tiff_pages(data: bytes, label: str) -> None:
    """Walk the chain of image file directories (TIFF 6.0 section 2; BigTIFF) and refuse a file with
    more than :data:`DEFAULT_MAX_FRAMES` pages before Pillow counts them one by one."""
    order = "little" if data[:2] == b"II" else "big"
    big = int.from_bytes(data[2:4], order) == 43
    offset = int.from_bytes(data[8:16] if big else data[4:8], order)
    count_size, entry_size, offset_size = (8, 20, 8) if big else (2, 12, 4)
    seen: set[int] = set()
    while offset and offset not in seen and offset + count_size <= len(data):
        seen.add(offset)
        if len(seen) > DEFAULT_MAX_FRAMES:
            raise ImageReadError(
                f"{label}: more than {DEFAULT_MAX_FRAMES} pages; medot reads one page (the middle one): save "
                "that page, or a smaller stack, as its own file."
            )
        entries = int.from_bytes(data[offset : offset + count_size], order)
        start = offset + count_size + entries * entry_size
        offset = int.from_bytes(data[start : start + offset_size], order)


def _to_unit_range(array: np.ndarray) -> np.ndarray:
    """Scale samples to [0, 1] by dtype: unsigned / max, bool as 0/1, signed and float min-max.

    Floats already within [0, 1] are returned unchanged.
    """
    if array.dtype == np.bool_:
        return array.astype(np.float32)
    if array.dtype.kind == "u":
        return (array / np.iinfo(array.dtype).max).astype(np.float32)
    if array.dtype.kind == "f" and array.min() >= 0.0 and array.max() <= 1.0:
        return array.astype(np.float32)
    return _min_max(array)


def _min_max(array: np.ndarray) -> np.ndarray:
    """:math:`(x - \\min x) / (\\max x - \\min x)`; a constant array maps to zeros."""
    values = array.astype(np.float64)
    low, high = values.min(), values.max()
    if high == low:
        return np.zeros(values.shape, np.float32)
    return ((values - low) / (high - low)).astype(np.float32)


def _check_finite(array: np.ndarray, label: str) -> None:
    if array.dtype.kind == "f" and not np.isfinite(array).all():
        raise ImageReadError(
            f"{label}: the pixel values contain NaN or infinity; fix or mask them before loading."
        )


def _checked_pixels(pixels: np.ndarray, label: str) -> np.ndarray:
    if pixels.min() == pixels.max():
        raise ImageReadError(
            f"{label}: the image is constant (every pixel has the same value after scaling to "
            "[0, 1]: a blank image, or a display window that holds none of it); it carries "
            "nothing to analyse."
        )
    return np.ascontiguousarray(pixels, dtype=np.float32)


def _decode_dicom(
    ds: pydicom.Dataset, label: str, frame: int | None = None, window: tuple[float, float] | None = None
) -> tuple[np.ndarray, str, dict]:
    """Decode the middle (or the requested) frame and map it to [0, 1] (module docstring, PS3.3
    C.11), through ``window`` instead of the file's VOI transform when one is given."""
    frames = int(ds.get("NumberOfFrames") or 1)
    index = _frame_index(frame, frames, label)
    decoder = get_decoder(ds.file_meta.TransferSyntaxUID)
    try:
        stored, info = decoder.as_array(ds, index=index)
    except Exception as exc:
        if ds.file_meta.TransferSyntaxUID.is_compressed and decoder.missing_dependencies:
            # the installed plugins cannot decode this variant (e.g. Pillow and 12-bit JPEG Extended):
            # the file is fine, a decoder package is missing
            raise ImageReadError(
                f"{label}: the DICOM pixel data is {ds.file_meta.TransferSyntaxUID.name} with "
                f"{ds.get('BitsStored', '?')} bits stored, which the installed decoder(s) "
                f"({', '.join(decoder.available_plugins)}) cannot decode ({_first_line(exc)}); install one of: "
                f"{'; '.join(decoder.missing_dependencies)} (e.g. pip install pylibjpeg pylibjpeg-libjpeg), "
                "or convert the file to uncompressed DICOM."
            ) from exc
        with _decoder_errors(label, "DICOM"):
            raise
    photometric = str(info["photometric_interpretation"])
    metadata: dict[str, Any] = {
        "modality": str(ds.get("Modality", "")),
        "photometric_interpretation": str(ds.get("PhotometricInterpretation", photometric)),
        "decoded_as": photometric,
        "frame_index": index,
        "number_of_frames": frames,
        "body_part": str(ds.get("BodyPartExamined", "")),
        "rows": int(ds.get("Rows") or 0),
        "columns": int(ds.get("Columns") or 0),
    }
    spacing = ds.get("PixelSpacing") or ds.get("ImagerPixelSpacing")
    if spacing:
        metadata["pixel_spacing"] = [float(value) for value in spacing]
    _check_finite(stored, label)
    if photometric == "PALETTE COLOR":
        with _decoder_errors(label, "DICOM palette"):
            rgb = apply_color_lut(stored, ds)
        pixels = _to_unit_range(rgb)
    elif photometric == "RGB":
        pixels = (stored / (2 ** int(info["bits_stored"]) - 1)).astype(np.float32)
    elif photometric in ("MONOCHROME1", "MONOCHROME2"):
        _lift_frame_functional_groups(ds, index)
        pixels = _grayscale_display(stored, ds, label, metadata, window)
        if photometric == "MONOCHROME1":
            pixels = 1.0 - pixels
    else:
        raise ImageReadError(
            f"{label}: DICOM photometric interpretation {photometric} is not supported; "
            "convert the image to MONOCHROME2 or RGB."
        )
    return pixels, str(stored.dtype), metadata


def _first_line(error: BaseException) -> str:
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    return lines[-1] if lines else type(error).__name__


def _lift_frame_functional_groups(ds: pydicom.Dataset, index: int) -> None:
    """Copy frame ``index``'s rescale and window from the functional groups to the top level.

    Enhanced multi-frame objects (PS3.3 C.7.6.16) hold Rescale Slope/Intercept and Window
    Centre/Width in the Shared and Per-Frame Functional Groups, not at the top level where
    pydicom's LUT functions read them; per-frame values override shared ones.
    """
    groups = [ds.get("SharedFunctionalGroupsSequence"), ds.get("PerFrameFunctionalGroupsSequence")]
    items = [groups[0][0]] if groups[0] else []
    if groups[1] and index < len(groups[1]):
        items.append(groups[1][index])
    for item in items:
        for macro in _DICOM_FRAME_MACROS:
            if item.get(macro):
                for element in item[macro][0]:
                    ds[element.tag] = element


def _grayscale_display(
    stored: np.ndarray, ds: pydicom.Dataset, label: str, metadata: dict, window: tuple[float, float] | None = None
) -> np.ndarray:
    """Modality LUT/rescale, then the chosen ``window``, else VOI LUT or window (or min-max),
    scaled to [0, 1].

    A window the standard does not allow (e.g. width < 1 for LINEAR) is ignored for min-max and
    the reason is kept in ``metadata["voi_transform"]``.
    """
    with _decoder_errors(label, "DICOM Modality LUT"):
        values = apply_modality_lut(stored, ds)
    if ds.get("ModalityLUTSequence"):
        metadata["modality_transform"] = "modality LUT"
    elif "RescaleSlope" in ds and "RescaleIntercept" in ds:
        metadata["modality_transform"] = "rescale"
        metadata["rescale_slope"] = float(ds.RescaleSlope)
        metadata["rescale_intercept"] = float(ds.RescaleIntercept)
    else:
        metadata["modality_transform"] = "none"

    if window is not None:
        center, width = (float(v) for v in window)
        try:
            shown = apply_window(values, center, width)
        except ValueError as exc:
            raise ImageReadError(f"{label}: {exc}") from exc
        metadata.update(voi_transform="window (chosen)", window_center=center, window_width=width)
        return shown
    if ds.get("VOILUTSequence"):
        metadata["voi_transform"] = "VOI LUT"
        with _decoder_errors(label, "DICOM VOI LUT"):
            depth = int(ds.VOILUTSequence[0].LUTDescriptor[2])
            shown = apply_voi(values, ds)
        return (shown / (2**depth - 1)).astype(np.float32)
    if "WindowCenter" in ds and "WindowWidth" in ds:
        try:
            windowed = apply_windowing(values, ds)
            # The window's output range [y_min, y_max] (C.11.2.1.2) is the image of -inf, +inf.
            low, high = apply_windowing(np.array([-np.inf, np.inf]), ds)
        except ValueError as exc:
            metadata["voi_transform"] = f"min-max (window ignored: {exc})"
            return _min_max(values)
        metadata["voi_transform"] = "window"
        metadata["window_center"] = float(_first(ds.WindowCenter))
        metadata["window_width"] = float(_first(ds.WindowWidth))
        metadata["voi_lut_function"] = str(ds.get("VOILUTFunction", "LINEAR"))
        return ((windowed - low) / (high - low)).astype(np.float32)
    metadata["voi_transform"] = "min-max"
    return _min_max(values)


def _first(value: Any) -> Any:
    """First of a multi-valued DICOM element (the primary window, PS3.3 C.11.2.1.2)."""
    return value[0] if isinstance(value, MultiValue) else value
