"""Decode DICOM bytes into a float32 ``H x W x C`` array in [0, 1], with pydicom.

Monochrome frames go through DICOM's grayscale pipeline (PS3.3 C.11) with pydicom's own
functions: the Modality LUT (``apply_modality_lut``: a Modality LUT Sequence, or RescaleSlope /
RescaleIntercept), then the VOI LUT (``apply_voi_lut``: a VOI LUT Sequence, else the first
WindowCenter / WindowWidth pair with its VOILUTFunction), then MONOCHROME1 is inverted so that
high values are bright. A file without a usable VOI LUT or window is min-max scaled. Bad header
values never become NaN, inf or a crash: a non-finite or non-numeric rescale is ignored, a
window that is absent, non-finite or not wider than zero falls back to min-max, and a LUT
sequence pydicom cannot apply is skipped (with a log line). Colour frames (RGB, YBR_* converted
to RGB by pydicom) are scaled by the stored bit depth.
"""

from __future__ import annotations

import io
import logging
import math
import struct

import numpy as np
import pydicom
import pydicom.pixels as dicom_pixels
from pydicom.dataset import Dataset
from pydicom.encaps import get_frame
from pydicom.errors import BytesLengthException, InvalidDicomError
from pydicom.multival import MultiValue
from pydicom.uid import UID, ExplicitVRBigEndian, ExplicitVRLittleEndian, ImplicitVRLittleEndian

from medfakedet.decoding import (
    DecodedImage,
    DecodeLimits,
    NotAnImageError,
    TruncatedImageError,
    UnsupportedImageError,
    block_reduce,
    check_decoded_bytes,
    check_pixel_count,
    min_max_scaled,
    reduce_factor,
    scaled,
)
from medfakedet.dicom_guard import (
    RLE,
    check_frame_header,
    check_rle_frame,
    meta_transfer_syntax,
    refuse_deflate,
)

__all__ = ["decode_dicom", "dicom_gray"]

logger = logging.getLogger(__name__)

_DICOM_COLOUR = {"RGB", "YBR_FULL", "YBR_FULL_422", "YBR_ICT", "YBR_RCT", "YBR_PARTIAL_420"}
_DICOM_GRAY = {"MONOCHROME1", "MONOCHROME2"}
_VOI_FUNCTIONS = {"LINEAR", "LINEAR_EXACT", "SIGMOID"}
# What pydicom raises on corrupt bytes: while reading, and when it converts an element's raw
# value on first access (an unknown VR, a length that is no multiple of the value size).
_PARSE_ERRORS = (
    BytesLengthException,
    EOFError,
    InvalidDicomError,
    KeyError,
    NotImplementedError,
    OSError,
    OverflowError,
    ValueError,
    struct.error,
)
# ... and what it raises on a LUT it cannot apply (bad descriptor, short LUT data, bit depth).
_LUT_ERRORS = (
    *_PARSE_ERRORS,
    AttributeError,
    IndexError,
    KeyError,
    NotImplementedError,
    OverflowError,
    TypeError,
    ValueError,
    struct.error,
)


def decode_dicom(data: bytes, limits: DecodeLimits, *, force: bool) -> DecodedImage:
    """Decode a single-image DICOM (first frame of a multi-frame one).

    Args:
        data: the encoded file.
        limits: size limits; Rows x Columns is checked before the pixel data is touched.
        force: read a file without the 128-byte preamble and 'DICM' (only for bytes that look
            like DICOM); its parse failures are "not an image" instead of "truncated".

    Raises:
        ImageDecodeError: one of its subclasses, with ``.status`` 400, 413 or 415.
    """
    bad = NotAnImageError if force else TruncatedImageError
    refuse_deflate(meta_transfer_syntax(data))  # pydicom would inflate it all while reading
    try:
        ds = pydicom.dcmread(io.BytesIO(data), force=force)
    except _PARSE_ERRORS as exc:
        raise bad(f"DICOM file could not be parsed ({exc}); it is truncated or corrupt") from None
    if "PixelData" not in ds and "FloatPixelData" not in ds and "DoubleFloatPixelData" not in ds:
        raise bad("DICOM file contains no pixel data (not an image object, or truncated)")
    try:
        rows, cols, bits_stored = ds.get("Rows"), ds.get("Columns"), ds.get("BitsStored")
        photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2")).strip().upper()
        samples = int(ds.get("SamplesPerPixel") or 1)
        bits_allocated = int(ds.get("BitsAllocated") or 16)
    except (*_PARSE_ERRORS, TypeError) as exc:
        raise TruncatedImageError(f"DICOM image header is corrupt ({exc})") from None
    if not rows or not cols:
        raise TruncatedImageError("DICOM file has pixel data but no Rows/Columns")
    rows, cols = int(rows), int(cols)
    check_pixel_count(cols, rows, limits)  # before touching the pixel data
    if samples not in (1, 3) or bits_allocated not in (1, 8, 16, 32, 64):
        raise UnsupportedImageError(
            f"DICOM Samples per Pixel {samples} / Bits Allocated {bits_allocated} is not "
            "supported; accepted: 1 or 3 samples of 1, 8, 16, 32 or 64 bits"
        )
    sample_bytes = max(1, bits_allocated // 8)
    check_decoded_bytes(cols, rows, samples * sample_bytes, limits)
    if photometric not in _DICOM_GRAY | _DICOM_COLOUR:
        raise UnsupportedImageError(
            f"DICOM PhotometricInterpretation {photometric!r} is not supported; accepted: "
            "MONOCHROME1, MONOCHROME2, RGB, YBR_FULL(_422)"
        )

    raw = _first_frame(ds, rows, cols, samples * sample_bytes)
    k = reduce_factor(cols, rows, limits)
    if k > 1:  # integer stored values stay integers: LUTs index with them
        raw = np.rint(block_reduce(raw, k)).astype(raw.dtype)
    if photometric in _DICOM_COLOUR:
        if raw.ndim != 3 or raw.shape[2] != 3:
            raise TruncatedImageError(f"DICOM {photometric} frame has shape {raw.shape}, not HxWx3")
        bits = int(bits_stored or raw.dtype.itemsize * 8)
        pixels = np.clip(scaled(raw, float(2**bits - 1)), 0.0, 1.0)
    else:
        if raw.ndim != 2:
            raise TruncatedImageError(f"DICOM {photometric} frame has shape {raw.shape}, not HxW")
        pixels = dicom_gray(raw, ds)
        if photometric == "MONOCHROME1":
            pixels = 1.0 - pixels  # MONOCHROME1: minimum value is white
        pixels = pixels[:, :, None]
    pixels = np.ascontiguousarray(pixels, dtype=np.float32)
    return DecodedImage(pixels=pixels, width=cols, height=rows, format="DICOM", mode=photometric)


def _check_compressed_frame(
    ds: Dataset, transfer_syntax: UID, rows: int, cols: int, segments: int
) -> None:
    """Bound an encapsulated frame 0 before it is decoded: RLE expansion, JPEG header size."""
    if not transfer_syntax.is_encapsulated:
        return
    try:
        frames = int(ds.get("NumberOfFrames") or 1)
        frame = get_frame(ds.PixelData, 0, number_of_frames=frames)
    except Exception as exc:  # pydicom raises several types on broken fragment tables
        raise TruncatedImageError(f"DICOM pixel data is truncated or corrupt ({exc})") from None
    if transfer_syntax == RLE:
        check_rle_frame(frame, rows, cols, segments)
    else:
        check_frame_header(frame, str(transfer_syntax), rows, cols)


def _first_frame(ds: Dataset, rows: int, cols: int, segments: int) -> np.ndarray:
    """The stored values of frame 0, or a 415 / 400 that names the transfer syntax or the fault.

    ``segments``: bytes per pixel (samples x bytes per sample), the RLE segment count.
    """
    transfer_syntax = _transfer_syntax(ds)
    try:
        decoder = dicom_pixels.get_decoder(transfer_syntax)
    except NotImplementedError:
        raise UnsupportedImageError(
            f"DICOM transfer syntax {transfer_syntax.name} ({transfer_syntax}) cannot be decoded "
            "here; send uncompressed DICOM (Explicit/Implicit VR Little Endian), PNG or TIFF"
        ) from None
    if not decoder.is_available:
        raise UnsupportedImageError(
            f"DICOM transfer syntax {transfer_syntax.name} ({transfer_syntax}) needs a "
            f"decoder that is not installed ({'; '.join(decoder.missing_dependencies)}); "
            "send uncompressed DICOM, PNG or TIFF instead"
        )
    _check_compressed_frame(ds, transfer_syntax, rows, cols, segments)
    try:
        return dicom_pixels.pixel_array(ds, index=0)
    except MemoryError:
        raise
    except Exception as exc:  # plugins raise many types on corrupt data
        raise TruncatedImageError(f"DICOM pixel data is truncated or corrupt ({exc})") from None


def _transfer_syntax(ds: Dataset) -> UID:
    uid = ds.file_meta.get("TransferSyntaxUID") if hasattr(ds, "file_meta") else None
    if uid:
        return UID(str(uid))
    # Files without a meta header: use the encoding pydicom detected while reading.
    implicit, little = getattr(ds, "original_encoding", (True, True))
    if little is False:
        uid = ExplicitVRBigEndian
    else:
        uid = ImplicitVRLittleEndian if implicit else ExplicitVRLittleEndian
    ds.file_meta.TransferSyntaxUID = uid
    return uid


# ------------------------------------------------------------------------- grayscale pipeline
def dicom_gray(raw: np.ndarray, ds: Dataset) -> np.ndarray:
    """Monochrome DICOM frame -> float32 ``H x W`` in [0, 1] (before MONOCHROME1 inversion).

    Modality LUT, then VOI LUT Sequence (preferred, as pydicom does) or window, else min-max.
    """
    values = _modality_values(raw, ds)
    out = _apply_voi_lut_sequence(values, ds)
    if out is None:
        window = _window_module(ds)
        if window is None:
            return min_max_scaled(values)
        with np.errstate(over="ignore"):  # SIGMOID: exp overflow far from the centre is 0
            out = dicom_pixels.apply_voi_lut(values, window)
    # NaN stored values (float pixel data) stay NaN through a window: show them as black.
    return np.clip(np.nan_to_num(out, nan=0.0), 0.0, 1.0).astype(np.float32)


def _modality_values(raw: np.ndarray, ds: Dataset) -> np.ndarray:
    """Stored values -> modality values (e.g. Hounsfield units), by pydicom's Modality LUT."""
    if ds.get("ModalityLUTSequence"):
        try:
            return dicom_pixels.apply_modality_lut(raw, ds)
        except _LUT_ERRORS as exc:
            logger.warning("DICOM Modality LUT Sequence ignored, it cannot be applied: %s", exc)
    # pydicom rescales only when both values are there and valid; the header may hold one, a
    # multi-valued, empty or non-numeric one: each falls back to identity on its own.
    rescale = Dataset()
    rescale.RescaleSlope = _first_finite(ds, "RescaleSlope", default=1.0)
    rescale.RescaleIntercept = _first_finite(ds, "RescaleIntercept", default=0.0)
    return dicom_pixels.apply_modality_lut(raw, rescale)


def _window_module(ds: Dataset) -> Dataset | None:
    """The first WindowCenter/WindowWidth pair as a VOI LUT module whose output is [0, 1].

    None when the file has no usable window (absent, non-numeric, non-finite, width <= 0).
    pydicom maps a window onto the output range of ``BitsStored`` / ``PixelRepresentation``
    (without rescale), so 1 unsigned bit gives [0, 1] directly.
    """
    center = _first_finite(ds, "WindowCenter")
    width = _first_finite(ds, "WindowWidth")
    if center is None or width is None or width <= 0:
        return None
    try:
        function = str(ds.get("VOILUTFunction", "LINEAR")).strip().upper()
    except _PARSE_ERRORS:
        function = "LINEAR"
    function = function if function in _VOI_FUNCTIONS else "LINEAR"
    if function == "LINEAR":
        # PS3.3 C.11.2.1.2.1 asks for width >= 1; width 1 is a threshold at center - 0.5, and
        # a narrower one is read the same way instead of refused.
        width = max(width, 1.0)
    window = Dataset()
    window.PhotometricInterpretation = "MONOCHROME2"
    window.BitsStored, window.PixelRepresentation = 1, 0
    window.WindowCenter, window.WindowWidth = center, width
    window.VOILUTFunction = function
    return window


def _apply_voi_lut_sequence(values: np.ndarray, ds: Dataset) -> np.ndarray | None:
    """The first VOI LUT of the file applied to ``values`` and scaled to [0, 1] by the LUT's
    own output range (its smallest and largest entry; robust to LUTs that declare 16 bits per
    entry and hold 12); None when there is no usable VOI LUT Sequence.
    """
    sequence = ds.get("VOILUTSequence")
    if not sequence:
        return None
    try:
        descriptor = [int(v) for v in sequence[0].LUTDescriptor]
        entries, first_mapped = (descriptor[0] or 2**16), descriptor[1]
        last_mapped = first_mapped + entries - 1
        table = dicom_pixels.apply_voi(np.arange(first_mapped, last_mapped + 1), ds)
        # The LUT input is an integer; clipping to the LUT's domain first keeps pydicom's uint16
        # index arithmetic from wrapping on values far outside it.
        index = np.clip(np.rint(np.nan_to_num(values)), first_mapped, last_mapped)
        out = dicom_pixels.apply_voi(index.astype(np.int64), ds)
    except _LUT_ERRORS as exc:
        logger.warning("DICOM VOI LUT Sequence ignored, it cannot be applied: %s", exc)
        return None
    lo, hi = float(table.min()), float(table.max())
    if hi <= lo:
        return np.zeros(values.shape, dtype=np.float32)
    return (out.astype(np.float64) - lo) / (hi - lo)


def _first_finite(ds: Dataset, keyword: str, default: float | None = None) -> float | None:
    """First value of a DS/IS element that may be multi-valued (e.g. two window centers), if it
    is a finite number; else ``default``. Unparsable values (e.g. "abc") read as absent."""
    try:
        value = ds.get(keyword)
    except _PARSE_ERRORS:  # pydicom converts the raw value on first access
        return default
    if isinstance(value, MultiValue | list | tuple):
        value = value[0] if len(value) else None
    try:
        number = float(value)
    except (TypeError, ValueError):  # None (absent), "" (empty) or text
        return default
    return number if math.isfinite(number) else default
