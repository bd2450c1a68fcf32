"""Decode untrusted image bytes (PNG, JPEG, BMP, TIFF, DICOM) into float32 arrays in [0, 1].

Every caller (training, evaluation, the ``scan`` command, the TorchServe handlers) goes through
:func:`decode_image`, so a file is read the same way everywhere. Bad input raises a subclass of
:class:`ImageDecodeError` whose ``.status`` is the HTTP code to answer with and whose message says
what was wrong and what is accepted.

Output layout: ``DecodedImage.pixels`` is float32 ``H x W x C`` with ``C == 1`` for grayscale
sources (PIL modes 1, L, LA, I;16, I, F and DICOM MONOCHROME1/2) and ``C == 3`` for colour
sources (RGB, RGBA, CMYK, YCbCr, colour palettes, DICOM RGB/YBR).

Safety: the declared size is checked against :class:`DecodeLimits` before any pixel data is
decoded, PIL's decompression-bomb protection stays on (``Image.MAX_IMAGE_PIXELS`` is never
changed, so it caps ``max_pixels`` too) and truncated files are rejected, never padded
(``ImageFile.LOAD_TRUNCATED_IMAGES`` is never set). Warnings are filtered with
``warnings.catch_warnings``, which is process-global state: call this from one thread per process
(TorchServe workers are processes) or accept that a concurrent thread may see the filter.
"""

from __future__ import annotations

import io
import math
import os
import re
import struct
import warnings
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
import pydicom.pixels as dicom_pixels
from PIL import Image, ImageOps, UnidentifiedImageError
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.uid import UID, ExplicitVRBigEndian, ExplicitVRLittleEndian, ImplicitVRLittleEndian

__all__ = [
    "ACCEPTED_FORMATS",
    "DEFAULT_LIMITS",
    "DecodeLimits",
    "DecodedImage",
    "EmptyInputError",
    "ImageDecodeError",
    "NotAnImageError",
    "PayloadTooLargeError",
    "TooManyPixelsError",
    "TruncatedImageError",
    "UnsupportedImageError",
    "decode_image",
    "encode_png",
    "load_image_file",
    "to_uint8",
]

# PIL plugins we let parse untrusted bytes; every other plugin is only used to name a rejected file.
_PIL_FORMATS = ("PNG", "JPEG", "BMP", "TIFF")
ACCEPTED_FORMATS = (*_PIL_FORMATS, "DICOM")
_ACCEPTED_TEXT = "PNG (8/16-bit), JPEG, BMP, TIFF (8/16-bit) or DICOM (uncompressed or JPEG/RLE)"

_ORIENTATION_TAG = 0x0112
_DICOM_COLOUR = {"RGB", "YBR_FULL", "YBR_FULL_422", "YBR_ICT", "YBR_RCT", "YBR_PARTIAL_420"}
_DICOM_GRAY = {"MONOCHROME1", "MONOCHROME2"}


# --------------------------------------------------------------------------------------- errors
class ImageDecodeError(ValueError):
    """Base class of every decode failure; ``status`` is the HTTP status to answer with."""

    status: int = 400


class EmptyInputError(ImageDecodeError):
    """No bytes at all."""

    status = 400


class NotAnImageError(ImageDecodeError):
    """Bytes that are not an image in any recognised format."""

    status = 400


class TruncatedImageError(ImageDecodeError):
    """A recognised format whose header or pixel data is cut short or corrupt."""

    status = 400


class TooManyPixelsError(ImageDecodeError):
    """Declared width x height above ``DecodeLimits.max_pixels`` (or PIL's bomb limit)."""

    status = 413


class PayloadTooLargeError(ImageDecodeError):
    """More bytes than ``DecodeLimits.max_bytes``."""

    status = 413


class UnsupportedImageError(ImageDecodeError):
    """A real image we cannot decode: other formats, compressed DICOM without a decoder, modes."""

    status = 415


# --------------------------------------------------------------------------------------- limits
@dataclass(frozen=True)
class DecodeLimits:
    """Upper bounds applied before decoding.

    Attributes:
        max_bytes: largest accepted input, in bytes.
        max_pixels: largest accepted width * height. PIL's own ``Image.MAX_IMAGE_PIXELS``
            (about 89 M pixels) is left on, so a larger value here is capped by it.
    """

    max_bytes: int = 50 * 2**20
    max_pixels: int = 8192 * 8192


DEFAULT_LIMITS = DecodeLimits()


@dataclass(frozen=True, eq=False)
class DecodedImage:
    """A decoded image.

    Attributes:
        pixels: float32 array ``H x W x C`` in [0, 1], C = 1 (gray) or 3 (RGB).
        width: pixel columns (after EXIF orientation, i.e. as a viewer shows the image).
        height: pixel rows.
        format: source format: "PNG", "JPEG", "BMP", "TIFF" or "DICOM".
        mode: source pixel mode: the PIL mode (e.g. "L", "I;16", "RGBA", "P") or the DICOM
            PhotometricInterpretation (e.g. "MONOCHROME2").
    """

    pixels: np.ndarray
    width: int
    height: int
    format: str
    mode: str

    @property
    def size(self) -> tuple[int, int]:
        """``(width, height)``, PIL's order."""
        return (self.width, self.height)

    @property
    def channels(self) -> int:
        """Number of channels (1 or 3)."""
        return int(self.pixels.shape[2])


# ------------------------------------------------------------------------------------ public API
def decode_image(
    data: bytes | bytearray | memoryview, limits: DecodeLimits | None = None
) -> DecodedImage:
    """Decode image bytes into a float32 ``H x W x C`` array in [0, 1].

    JPEG/TIFF/PNG files carrying an EXIF orientation are rotated/flipped
    (``ImageOps.exif_transpose``) so that pixels, sizes and any boxes computed on them match what
    the user sees in a viewer. 16-bit PNG/TIFF are scaled by 65535 (not min-max) to keep their
    brightness; float (mode F) images are min-max scaled. Transparent images (RGBA, LA, palette
    with transparency) are composited over black: transparent pixels carry no image content, and
    black is the background of scans. Multi-page TIFF and multi-frame DICOM: the first frame is
    used.

    Args:
        data: the encoded file.
        limits: size limits; ``DEFAULT_LIMITS`` when None.

    Returns:
        The decoded image.

    Raises:
        ImageDecodeError: one of its subclasses, with ``.status`` 400, 413 or 415.
    """
    limits = DEFAULT_LIMITS if limits is None else limits
    if not isinstance(data, bytes | bytearray | memoryview):
        raise TypeError(f"decode_image expects bytes, got {type(data).__name__}")
    if len(data) == 0:
        raise EmptyInputError("empty body: no image bytes were received")
    if len(data) > limits.max_bytes:
        raise PayloadTooLargeError(_too_many_bytes_message(len(data), limits.max_bytes))
    data = bytes(data) if isinstance(data, memoryview) else data

    if _has_dicom_magic(data):
        return _decode_dicom(data, limits, force=False)
    return _decode_pil(data, limits)


def load_image_file(
    path: str | os.PathLike[str], limits: DecodeLimits | None = None
) -> DecodedImage:
    """Read a file and decode it; the file size is checked before reading.

    Raises:
        OSError: the file cannot be read (missing, permissions).
        ImageDecodeError: as :func:`decode_image`.
    """
    limits = DEFAULT_LIMITS if limits is None else limits
    path = Path(path)
    size = path.stat().st_size
    if size > limits.max_bytes:
        raise PayloadTooLargeError(
            f"{path.name}: " + _too_many_bytes_message(size, limits.max_bytes)
        )
    with path.open("rb") as f:
        # Read one byte more than allowed: a file that grew after stat() is still caught.
        data = f.read(limits.max_bytes + 1)
    return decode_image(data, limits)


def to_uint8(pixels: np.ndarray) -> np.ndarray:
    """Convert float pixels in [0, 1] (clipped, NaN -> 0), bool or uint8 to uint8 (same shape)."""
    arr = np.asarray(pixels)
    if arr.dtype == np.uint8:
        return arr
    if arr.dtype == np.bool_:
        return arr.astype(np.uint8) * np.uint8(255)
    if np.issubdtype(arr.dtype, np.floating):
        scaled = np.clip(np.nan_to_num(arr, nan=0.0), 0.0, 1.0) * 255.0
        return np.rint(scaled).astype(np.uint8)
    raise ValueError(f"to_uint8 expects float in [0, 1], bool or uint8 pixels, got {arr.dtype}")


def encode_png(array: np.ndarray) -> bytes:
    """Encode ``H x W`` or ``H x W x C`` (C in 1, 3, 4) uint8 / bool / float [0, 1] as PNG bytes."""
    arr = to_uint8(array)
    if arr.ndim == 3 and arr.shape[2] == 1:
        arr = arr[:, :, 0]
    if not (arr.ndim == 2 or (arr.ndim == 3 and arr.shape[2] in (3, 4))):
        raise ValueError(
            f"encode_png expects H x W or H x W x C with C in (1, 3, 4), got {arr.shape}"
        )
    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(arr)).save(buf, format="PNG")
    return buf.getvalue()


# ----------------------------------------------------------------------------------- messages
def _too_many_bytes_message(n_bytes: int, max_bytes: int) -> str:
    return (
        f"image is {n_bytes:,} bytes ({n_bytes / 2**20:.1f} MiB); "
        f"the limit is {max_bytes:,} bytes ({max_bytes / 2**20:.1f} MiB)"
    )


def _limit_text(max_pixels: int) -> str:
    side = math.isqrt(max_pixels)
    if side * side == max_pixels:
        return f"the limit is {side}x{side} ({max_pixels:,} pixels)"
    return f"the limit is {max_pixels:,} pixels"


def _check_pixels(width: int, height: int, limits: DecodeLimits) -> None:
    n = width * height
    if n > limits.max_pixels:
        raise TooManyPixelsError(
            f"image is {width}x{height} pixels ({n:.1e}); {_limit_text(limits.max_pixels)}"
        )
    if width <= 0 or height <= 0:
        raise TruncatedImageError(f"image declares an empty size {width}x{height}")


# ------------------------------------------------------------------------------------ sniffing
def _has_dicom_magic(data: bytes) -> bool:
    return len(data) >= 132 and data[128:132] == b"DICM"


def _looks_like_bare_dicom(data: bytes) -> bool:
    """DICOM without the 128-byte preamble starts with a group 0002 or 0008 tag (little endian)."""
    return len(data) >= 8 and data[:2] in (b"\x02\x00", b"\x08\x00") and data[3:4] == b"\x00"


def _sniff_accepted_format(data: bytes) -> str | None:
    """Name the accepted format whose magic bytes ``data`` starts with, if any."""
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        return "PNG"
    if data.startswith(b"\xff\xd8\xff"):
        return "JPEG"
    if data.startswith((b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")):
        return "TIFF"
    # "BM" alone is too weak (text can start with it); the 4 reserved header bytes must be zero.
    if data.startswith(b"BM") and data[6:10] == b"\x00\x00\x00\x00":
        return "BMP"
    return None


def _png_declared_size(data: bytes) -> tuple[int, int] | None:
    if data.startswith(b"\x89PNG\r\n\x1a\n") and data[12:16] == b"IHDR" and len(data) >= 24:
        return struct.unpack(">II", data[16:24])
    return None


def _bomb_error(data: bytes, exc: Exception, limits: DecodeLimits) -> TooManyPixelsError:
    """Turn PIL's DecompressionBombError/Warning into our 413 with the best size we can name.

    PIL raises before it exposes the size, so the PNG size is read from IHDR and other formats
    fall back to the pixel count in PIL's message.
    """
    limit = limits.max_pixels
    pil_limit = Image.MAX_IMAGE_PIXELS
    source = ""
    if pil_limit is not None and pil_limit < limit:
        limit, source = int(pil_limit), " (PIL's decompression-bomb limit)"
    declared = _png_declared_size(data)
    if declared is not None:
        w, h = declared
        size = f"{w}x{h} pixels ({w * h:.1e})"
    else:
        match = re.search(r"\((\d+) pixels\)", str(exc))
        size = f"{int(match.group(1)):,} pixels" if match else "too many pixels"
    return TooManyPixelsError(f"image is {size}; {_limit_text(limit)}{source}")


# ----------------------------------------------------------------------------------------- PIL
# What PIL raises on a cut-short or corrupt stream while decoding pixel data.
_PIL_CORRUPT = (OSError, SyntaxError, EOFError, ValueError, IndexError, struct.error, zlib.error)


def _decode_pil(data: bytes, limits: DecodeLimits) -> DecodedImage:
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            im = Image.open(io.BytesIO(data), formats=_PIL_FORMATS)
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
            raise _bomb_error(data, exc, limits) from None
        except UnidentifiedImageError:
            return _decode_unidentified(data, limits)
        except _PIL_CORRUPT as exc:  # a recognised header that ends early or is inconsistent
            fmt = _sniff_accepted_format(data) or "image"
            raise TruncatedImageError(
                f"{fmt} file is truncated or corrupt ({exc}); send the complete file"
            ) from None

        with im:
            _check_pixels(im.width, im.height, limits)  # before any pixel data is decoded
            fmt, source_mode = str(im.format), im.mode
            try:
                im.load()
            except _PIL_CORRUPT as exc:
                raise TruncatedImageError(
                    f"{fmt} file is truncated or corrupt ({exc}); send the complete file"
                ) from None
            im = _apply_exif_orientation(im)
            pixels = _pil_to_pixels(im)
    h, w = pixels.shape[:2]
    return DecodedImage(pixels=pixels, width=w, height=h, format=fmt, mode=source_mode)


def _decode_unidentified(data: bytes, limits: DecodeLimits) -> DecodedImage:
    """PIL (restricted to the accepted formats) did not recognise ``data``: say why."""
    fmt = _sniff_accepted_format(data)
    if fmt is not None:
        raise TruncatedImageError(
            f"data starts like a {fmt} file but its header is truncated or corrupt"
        )
    if _looks_like_bare_dicom(data):
        return _decode_dicom(data, limits, force=True)
    other = _identify_any_pil_format(data)
    if other is not None:
        raise UnsupportedImageError(f"{other} images are not accepted; send {_ACCEPTED_TEXT}")
    head = data[:16]
    raise NotAnImageError(
        f"the data is not a recognised image (starts with {head!r}); accepted formats: "
        f"{_ACCEPTED_TEXT}"
    )


def _identify_any_pil_format(data: bytes) -> str | None:
    """Name the format with every PIL plugin (header only, pixels are never decoded)."""
    try:
        with Image.open(io.BytesIO(data)) as im:
            return str(im.format)
    except Exception:  # any failure just means "not identified"
        return None


def _apply_exif_orientation(im: Image.Image) -> Image.Image:
    try:
        orientation = im.getexif().get(_ORIENTATION_TAG, 1)
    except Exception:  # corrupt EXIF: show the pixels as stored
        return im
    if orientation in (2, 3, 4, 5, 6, 7, 8):
        return ImageOps.exif_transpose(im)
    return im


def _scaled(arr: np.ndarray, scale: float) -> np.ndarray:
    out = arr.astype(np.float32)
    out *= np.float32(1.0 / scale)
    return out


def _min_max(arr: np.ndarray) -> np.ndarray:
    """Scale to [0, 1] by the finite min and max; non-finite values and constant images -> 0."""
    out = np.asarray(arr, dtype=np.float32)
    finite = np.isfinite(out)
    if not finite.any():
        return np.zeros_like(out)
    lo, hi = float(out[finite].min()), float(out[finite].max())
    if hi <= lo:
        return np.zeros_like(out)
    scaled = (out - np.float32(lo)) * np.float32(1.0 / (hi - lo))
    return np.where(finite, scaled, np.float32(0.0)).astype(np.float32)


def _over_black(colour: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    """Composite 8-bit ``colour`` (H x W x C) over black with 8-bit ``alpha`` (H x W)."""
    out = colour.astype(np.float32)
    out *= alpha[:, :, None].astype(np.float32) * np.float32(1.0 / (255.0 * 255.0))
    return out


def _palette_is_gray(im: Image.Image) -> bool:
    palette = im.getpalette("RGB") or []
    rgb = np.asarray(palette, dtype=np.uint8).reshape(-1, 3)
    return bool(np.all(rgb[:, 0] == rgb[:, 1]) and np.all(rgb[:, 1] == rgb[:, 2]))


def _pil_to_pixels(im: Image.Image) -> np.ndarray:
    """PIL image (loaded) -> float32 H x W x C in [0, 1]."""
    mode = im.mode
    if mode == "1":
        arr = np.asarray(im, dtype=np.float32)
    elif mode == "L":
        arr = _scaled(np.asarray(im), 255.0)
    elif mode in ("I;16", "I;16L", "I;16B", "I;16N"):
        arr = _scaled(np.asarray(im), 65535.0)  # full 16-bit range keeps brightness
    elif mode == "I":
        raw = np.asarray(im)
        # 32-bit ints holding 16-bit data (the usual case) keep the 16-bit scale; else min-max.
        in_16bit = raw.size == 0 or (int(raw.min()) >= 0 and int(raw.max()) <= 65535)
        arr = _scaled(raw, 65535.0) if in_16bit else _min_max(raw)
    elif mode == "F":
        arr = _min_max(np.asarray(im))
    elif mode == "LA":
        la = np.asarray(im)
        arr = _over_black(la[:, :, :1], la[:, :, 1])
    elif mode == "RGB":
        arr = _scaled(np.asarray(im), 255.0)
    elif mode in ("RGBA", "RGBa"):
        rgba = np.asarray(im.convert("RGBA"))
        arr = _over_black(rgba[:, :, :3], rgba[:, :, 3])
    elif mode in ("P", "PA"):
        has_alpha = mode == "PA" or "transparency" in im.info
        gray = _palette_is_gray(im)
        if has_alpha:
            rgba = np.asarray(im.convert("RGBA"))
            arr = _over_black(rgba[:, :, :1] if gray else rgba[:, :, :3], rgba[:, :, 3])
        else:
            rgb = np.asarray(im.convert("RGB"))
            arr = _scaled(rgb[:, :, :1] if gray else rgb, 255.0)
    elif mode in ("CMYK", "YCbCr", "LAB", "HSV", "RGBX"):
        arr = _scaled(np.asarray(im.convert("RGB")), 255.0)
    else:
        raise UnsupportedImageError(
            f"{im.format} pixel mode {mode!r} is not supported; accepted modes: 1, L, LA, P, RGB, "
            "RGBA, CMYK, YCbCr, I;16, I, F"
        )
    if arr.ndim == 2:
        arr = arr[:, :, None]
    return np.ascontiguousarray(arr, dtype=np.float32)


# --------------------------------------------------------------------------------------- DICOM
def _decode_dicom(data: bytes, limits: DecodeLimits, *, force: bool) -> DecodedImage:
    """Decode a single-image DICOM (first frame of a multi-frame one).

    Monochrome: modality LUT (RescaleSlope/Intercept, or a Modality LUT Sequence), then the first
    WindowCenter/WindowWidth pair (LINEAR, LINEAR_EXACT or SIGMOID) when present, else min-max;
    MONOCHROME1 is inverted so that high values are bright. Colour (RGB, YBR_*, converted to RGB
    by pydicom) is scaled by the stored bit depth. A VOI LUT Sequence is not applied (min-max).
    """
    # force=True reads files without the preamble; those are only tried when they look like DICOM.
    bad = NotAnImageError if force else TruncatedImageError
    try:
        ds = pydicom.dcmread(io.BytesIO(data), force=force)
    except (InvalidDicomError, EOFError, OSError, ValueError, KeyError, struct.error) as exc:
        raise bad(f"DICOM file could not be parsed ({exc}); it is truncated or corrupt") from None
    if "PixelData" not in ds and "FloatPixelData" not in ds and "DoubleFloatPixelData" not in ds:
        raise bad("DICOM file contains no pixel data (not an image object, or truncated)")
    rows, cols = ds.get("Rows"), ds.get("Columns")
    if not rows or not cols:
        raise TruncatedImageError("DICOM file has pixel data but no Rows/Columns")
    _check_pixels(int(cols), int(rows), limits)  # before touching the pixel data

    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2")).strip().upper()
    if photometric not in _DICOM_GRAY | _DICOM_COLOUR:
        raise UnsupportedImageError(
            f"DICOM PhotometricInterpretation {photometric!r} is not supported; accepted: "
            "MONOCHROME1, MONOCHROME2, RGB, YBR_FULL(_422)"
        )

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
    try:
        raw = dicom_pixels.pixel_array(ds, index=0)
    except MemoryError:
        raise
    except Exception as exc:  # plugins raise many types on corrupt data
        raise TruncatedImageError(f"DICOM pixel data is truncated or corrupt ({exc})") from None

    if photometric in _DICOM_COLOUR:
        if raw.ndim != 3 or raw.shape[2] != 3:
            raise TruncatedImageError(f"DICOM {photometric} frame has shape {raw.shape}, not HxWx3")
        bits = int(ds.get("BitsStored") or raw.dtype.itemsize * 8)
        pixels = np.clip(_scaled(raw, float(2**bits - 1)), 0.0, 1.0)
    else:
        if raw.ndim != 2:
            raise TruncatedImageError(f"DICOM {photometric} frame has shape {raw.shape}, not HxW")
        pixels = _dicom_gray(raw, ds)
        if photometric == "MONOCHROME1":
            pixels = 1.0 - pixels  # MONOCHROME1: minimum value is white
        pixels = pixels[:, :, None]
    pixels = np.ascontiguousarray(pixels, dtype=np.float32)
    h, w = pixels.shape[:2]
    return DecodedImage(pixels=pixels, width=w, height=h, format="DICOM", mode=photometric)


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


def _first_number(value: Any) -> float | None:
    """First number of a DS/IS value that may be multi-valued (e.g. two window centers)."""
    if value is None or value == "":
        return None
    if isinstance(value, Sequence) and not isinstance(value, str | bytes):
        if len(value) == 0:
            return None
        value = value[0]
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def _dicom_gray(raw: np.ndarray, ds: Dataset) -> np.ndarray:
    """Monochrome DICOM frame -> float32 H x W in [0, 1] (before MONOCHROME1 inversion)."""
    if "ModalityLUTSequence" in ds:
        values = np.asarray(dicom_pixels.apply_modality_lut(raw, ds), dtype=np.float32)
    else:
        slope = _first_number(ds.get("RescaleSlope"))
        intercept = _first_number(ds.get("RescaleIntercept"))
        values = raw.astype(np.float32)
        if slope is not None and slope != 1.0:
            values *= np.float32(slope)
        if intercept is not None and intercept != 0.0:
            values += np.float32(intercept)

    center = _first_number(ds.get("WindowCenter"))
    width = _first_number(ds.get("WindowWidth"))
    if center is None or width is None or width <= 0:
        return _min_max(values)
    function = str(ds.get("VOILUTFunction", "LINEAR")).strip().upper()
    c, w = np.float32(center), np.float32(width)
    if function == "SIGMOID":
        out = 1.0 / (1.0 + np.exp(-4.0 * (values - c) / w))
    elif function == "LINEAR_EXACT":
        out = (values - c) / w + np.float32(0.5)
    elif width <= 1.0:  # DICOM PS3.3 C.11.2.1.2: width 1 is a threshold at center - 0.5
        out = (values > c - np.float32(0.5)).astype(np.float32)
    else:  # LINEAR, DICOM PS3.3 C.11.2.1.2.1
        out = (values - (c - np.float32(0.5))) / (w - np.float32(1.0)) + np.float32(0.5)
    return np.clip(out, 0.0, 1.0).astype(np.float32)
