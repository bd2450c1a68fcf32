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

This module sniffs the format and decodes the PIL formats; DICOM is decoded in
:mod:`medfakedet.dicom`, and the result type, limits and errors live in :mod:`medfakedet.decoding`
(re-exported here, the one place callers import them from).
"""

from __future__ import annotations

import io
import os
import re
import struct
import warnings
import zlib
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from medfakedet.deadline import time_limit
from medfakedet.decoding import (
    DEFAULT_LIMITS,
    DecodedImage,
    DecodeLimits,
    DecodeTimeoutError,
    EmptyInputError,
    ImageDecodeError,
    NotAnImageError,
    PayloadTooLargeError,
    TooManyPixelsError,
    TruncatedImageError,
    UnsupportedImageError,
    check_decoded_bytes,
    check_pixel_count,
    min_max_scaled,
    pixel_limit_text,
    reduce_factor,
    scaled,
)
from medfakedet.dicom import decode_dicom

__all__ = [
    "ACCEPTED_FORMATS",
    "DEFAULT_LIMITS",
    "DecodeLimits",
    "DecodedImage",
    "DecodeTimeoutError",
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
#: EXIF orientation -> the transposition that shows the image as a viewer does (as
#: ``ImageOps.exif_transpose``).
_EXIF_TRANSPOSE = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}


# ------------------------------------------------------------------------------------ public API
def decode_image(
    data: bytes | bytearray | memoryview, limits: DecodeLimits | None = None
) -> DecodedImage:
    """Decode image bytes into a float32 ``H x W x C`` array in [0, 1].

    JPEG/TIFF/PNG files carrying an EXIF orientation are rotated/flipped
    (as ``ImageOps.exif_transpose``) so that pixels, sizes and any boxes computed on them match what
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

    with time_limit(limits.max_seconds):
        if _has_dicom_magic(data):
            return decode_dicom(data, limits, force=False)
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
        unit = np.clip(np.nan_to_num(arr, nan=0.0), 0.0, 1.0)
        return np.rint(unit * 255.0).astype(np.uint8)
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
    return TooManyPixelsError(f"image is {size}; {pixel_limit_text(limit)}{source}")


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
            width, height = im.size
            check_pixel_count(width, height, limits)  # before any pixel data is decoded
            fmt, source_mode = str(im.format), im.mode
            if fmt == "JPEG" and limits.working_side:  # DCT scaling: 1/2, 1/4 or 1/8 size
                im.draft(im.mode, (limits.working_side, limits.working_side))
            check_decoded_bytes(*im.size, _stored_bytes_per_pixel(im.mode), limits)
            orientation = _exif_orientation(im)
            try:
                im.load()
            except _PIL_CORRUPT as exc:
                raise TruncatedImageError(
                    f"{fmt} file is truncated or corrupt ({exc}); send the complete file"
                ) from None
            im = _reduced(im, reduce_factor(*im.size, limits))
            if orientation in _EXIF_TRANSPOSE:
                im = im.transpose(_EXIF_TRANSPOSE[orientation])
            pixels = _pil_to_pixels(im)
    if orientation in (5, 6, 7, 8):  # a quarter turn: the viewer's width is the stored height
        width, height = height, width
    return DecodedImage(pixels=pixels, width=width, height=height, format=fmt, mode=source_mode)


def _stored_bytes_per_pixel(mode: str) -> int:
    """Bytes PIL keeps per pixel: 1 for 1/L/P, 2 for I;16*, 4 for the rest (RGB is RGBX)."""
    if mode in ("1", "L", "P"):
        return 1
    return 2 if mode.startswith("I;16") else 4


def _reduced(im: Image.Image, k: int) -> Image.Image:
    """``im`` shrunk by an integer box filter (1: unchanged), in a mode that keeps its meaning
    for :func:`_pil_to_pixels` (16-bit stays on the 16-bit scale, gray palettes stay gray)."""
    if k <= 1:
        return im
    if im.mode == "1":
        im = im.convert("L")
    elif im.mode.startswith("I;16"):
        im = im.convert("I")
    elif im.mode in ("P", "PA"):
        alpha = im.mode == "PA" or "transparency" in im.info
        gray = _palette_is_gray(im)
        im = im.convert(("LA" if alpha else "L") if gray else ("RGBA" if alpha else "RGB"))
    return im.reduce(k)


def _decode_unidentified(data: bytes, limits: DecodeLimits) -> DecodedImage:
    """PIL (restricted to the accepted formats) did not recognise ``data``: say why."""
    fmt = _sniff_accepted_format(data)
    if fmt is not None:
        raise TruncatedImageError(
            f"data starts like a {fmt} file but its header is truncated or corrupt"
        )
    if _looks_like_bare_dicom(data):
        return decode_dicom(data, limits, force=True)
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


def _exif_orientation(im: Image.Image) -> int:
    """The EXIF orientation (1..8; 1 = as stored), read before any reduction drops the EXIF."""
    try:
        return int(im.getexif().get(_ORIENTATION_TAG, 1))
    except Exception:  # corrupt EXIF: show the pixels as stored
        return 1


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
        arr = scaled(np.asarray(im), 255.0)
    elif mode in ("I;16", "I;16L", "I;16B", "I;16N"):
        arr = scaled(np.asarray(im), 65535.0)  # full 16-bit range keeps brightness
    elif mode == "I":
        raw = np.asarray(im)
        # 32-bit ints holding 16-bit data (the usual case) keep the 16-bit scale; else min-max.
        in_16bit = raw.size == 0 or (int(raw.min()) >= 0 and int(raw.max()) <= 65535)
        arr = scaled(raw, 65535.0) if in_16bit else min_max_scaled(raw)
    elif mode == "F":
        arr = min_max_scaled(np.asarray(im))
    elif mode == "LA":
        la = np.asarray(im)
        arr = _over_black(la[:, :, :1], la[:, :, 1])
    elif mode == "RGB":
        arr = scaled(np.asarray(im), 255.0)
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
            arr = scaled(rgb[:, :, :1] if gray else rgb, 255.0)
    elif mode in ("CMYK", "YCbCr", "LAB", "HSV", "RGBX"):
        arr = scaled(np.asarray(im.convert("RGB")), 255.0)
    else:
        raise UnsupportedImageError(
            f"{im.format} pixel mode {mode!r} is not supported; accepted modes: 1, L, LA, P, RGB, "
            "RGBA, CMYK, YCbCr, I;16, I, F"
        )
    if arr.ndim == 2:
        arr = arr[:, :, None]
    return np.ascontiguousarray(arr, dtype=np.float32)
