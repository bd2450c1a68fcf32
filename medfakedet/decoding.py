"""What every image decoder shares: the result type, the size limits and the typed errors.

:mod:`medfakedet.imaging` (sniffing and the PIL formats) and :mod:`medfakedet.dicom` both import
from here, so neither imports the other's internals and there is no import cycle. Callers import
these names from :mod:`medfakedet.imaging`, which re-exports them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np


# --------------------------------------------------------------------------------------- errors
class ImageDecodeError(ValueError):
    """Base class of every decode failure; ``status`` is the HTTP status to answer with (400
    unless a subclass says otherwise)."""

    status: int = 400


class EmptyInputError(ImageDecodeError):
    """No bytes at all."""


class NotAnImageError(ImageDecodeError):
    """Bytes that are not an image in any recognised format."""


class TruncatedImageError(ImageDecodeError):
    """A recognised format whose header or pixel data is cut short or corrupt."""


class TooManyPixelsError(ImageDecodeError):
    """Declared width x height above ``DecodeLimits.max_pixels`` (or PIL's bomb limit)."""

    status = 413


class PayloadTooLargeError(ImageDecodeError):
    """More bytes than ``DecodeLimits.max_bytes``."""

    status = 413


class DecodeTimeoutError(ImageDecodeError):
    """Decoding took longer than ``DecodeLimits.max_seconds``."""

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
    #: Bytes the first frame needs once decoded at full size (width x height x bytes per pixel
    #: as the decoder stores it), checked from the header before decoding: 8192 x 8192 RGB fits.
    max_decoded_bytes: int = 256 * 2**20
    #: Seconds one image may take to decode (None: no limit). Checked between the decoder's
    #: chunks (SIGALRM, main thread only), so one long C call can overrun it.
    max_seconds: float | None = None
    #: Decode large images at reduced scale, keeping the shorter side at least this long (JPEG
    #: by DCT scaling, others by an integer box filter). ``width`` / ``height`` stay the
    #: uploaded size. None: full resolution (training, evaluation).
    working_side: int | None = None


DEFAULT_LIMITS = DecodeLimits()
#: What the TorchServe workers use: the model sees 224 px at most, so 512 px is plenty, and an
#: upload then costs at most about one full-size decoded frame of memory for a moment.
SERVING_LIMITS = DecodeLimits(max_seconds=3.0, working_side=512)


def reduce_factor(width: int, height: int, limits: DecodeLimits) -> int:
    """The integer factor that keeps the shorter side >= ``limits.working_side`` (1: none),
    or more for a very long image: a reduced image keeps at most ``4 * working_side**2`` pixels
    (1 M at 512, 12 MiB as float32 RGB), so a batch of 8 holds at most about 100 MiB of images
    besides the one frame being decoded."""
    if not limits.working_side:
        return 1
    side = limits.working_side
    by_area = math.ceil(math.sqrt(width * height / (4 * side * side)))
    return max(1, min(width, height) // side, by_area)


def block_reduce(arr: np.ndarray, k: int) -> np.ndarray:
    """Mean of ``k x k`` blocks of an ``H x W (x C)`` array, as float32, in strips of rows so
    that the float copy never holds more than a few million values (the last partial block
    row/column, fewer than ``k`` pixels, is dropped)."""
    if k <= 1:
        return arr
    h, w = (arr.shape[0] // k) * k, (arr.shape[1] // k) * k
    rest = arr.shape[2:]
    out = np.empty((h // k, w // k, *rest), dtype=np.float32)
    per_row = max(1, w * k * int(np.prod(rest, dtype=np.int64)))
    step = max(1, (1 << 22) // per_row)
    for r in range(0, h // k, step):
        strip = arr[r * k : (r + step) * k, :w].astype(np.float32)
        out[r : r + step] = strip.reshape(-1, k, w // k, k, *rest).mean(axis=(1, 3))
    return out


def check_decoded_bytes(
    width: int, height: int, bytes_per_pixel: int, limits: DecodeLimits
) -> None:
    """Reject a frame whose decoded size would exceed ``limits.max_decoded_bytes`` (413)."""
    n = width * height * bytes_per_pixel
    if n > limits.max_decoded_bytes:
        raise TooManyPixelsError(
            f"image is {width}x{height} pixels at {bytes_per_pixel} bytes each "
            f"({n / 2**20:,.0f} MiB decoded); the limit is "
            f"{limits.max_decoded_bytes / 2**20:,.0f} MiB decoded per image"
        )


def pixel_limit_text(max_pixels: int) -> str:
    """``"the limit is 8192x8192 (67,108,864 pixels)"``, or without the side if not square."""
    side = math.isqrt(max_pixels)
    if side * side == max_pixels:
        return f"the limit is {side}x{side} ({max_pixels:,} pixels)"
    return f"the limit is {max_pixels:,} pixels"


def check_pixel_count(width: int, height: int, limits: DecodeLimits) -> None:
    """Reject a declared size over ``limits.max_pixels`` (413) or an empty one (400).

    Called with the size a header declares, before any pixel data is decoded.
    """
    n = width * height
    if n > limits.max_pixels:
        raise TooManyPixelsError(
            f"image is {width}x{height} pixels ({n:.1e}); {pixel_limit_text(limits.max_pixels)}"
        )
    if width <= 0 or height <= 0:
        raise TruncatedImageError(f"image declares an empty size {width}x{height}")


# --------------------------------------------------------------------------------------- result
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


# ------------------------------------------------------------------------------ value scaling
def scaled(arr: np.ndarray, scale: float) -> np.ndarray:
    """``arr / scale`` as float32 (e.g. 255 for 8-bit, 65535 for 16-bit data)."""
    out = arr.astype(np.float32)
    out *= np.float32(1.0 / scale)
    return out


def min_max_scaled(arr: np.ndarray) -> np.ndarray:
    """Scale to [0, 1] by the finite min and max; non-finite values and constant images -> 0."""
    out = np.asarray(arr, dtype=np.float32)
    finite = np.isfinite(out)
    if not finite.any():
        return np.zeros_like(out)
    lo, hi = float(out[finite].min()), float(out[finite].max())
    if hi <= lo:
        return np.zeros_like(out)
    result = (out - np.float32(lo)) * np.float32(1.0 / (hi - lo))
    return np.where(finite, result, np.float32(0.0)).astype(np.float32)
