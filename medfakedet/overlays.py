"""Pictures in a result: a map coloured over the image, and base64 PNGs of arrays.

The Grad-CAM heatmap of ``/explanations/synthesis8`` and the density overlay of
``manipulation_density`` (``return_density``) are drawn here.
"""

from __future__ import annotations

import base64

import numpy as np
import torch
import torch.nn.functional as F

from medfakedet.imaging import encode_png

#: Largest side of the returned overlay PNGs: enough to look at, small enough to send.
OVERLAY_MAX_SIDE = 1024
#: Largest side of ``preview_png``: a thumbnail for pages and reports (DICOM, TIFF, 16-bit PNG).
PREVIEW_MAX_SIDE = 256


def png_base64(array: np.ndarray) -> str:
    """``array`` (HxW or HxWxC floats in [0, 1]) as a base64 PNG string."""
    return base64.b64encode(encode_png(array)).decode("ascii")


def _jet(values: np.ndarray) -> np.ndarray:
    """The classic 'jet' colour map of values in [0, 1] -> HxWx3 floats (no matplotlib needed)."""
    v = np.clip(values, 0.0, 1.0)[..., None]
    anchors = np.array([0.125, 0.375, 0.625])  # where blue, green, red start to rise
    return np.clip(1.5 - np.abs(4.0 * v - 4.0 * anchors[::-1] - 0.5), 0.0, 1.0)


def _fit(width: int, height: int, max_side: int = OVERLAY_MAX_SIDE) -> tuple[int, int]:
    scale = min(1.0, max_side / max(width, height))
    return max(1, round(width * scale)), max(1, round(height * scale))


def _resize(array: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """HxW or HxWxC float array -> (height, width) of ``size`` = (w, h), bilinear."""
    t = torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32))
    t = t[None, None] if t.ndim == 2 else t.permute(2, 0, 1)[None]
    w, h = size
    if t.shape[-2:] != (h, w):
        t = F.interpolate(t, size=(h, w), mode="bilinear", align_corners=False, antialias=True)
    out = t[0].permute(1, 2, 0).numpy()
    return out[..., 0] if array.ndim == 2 else out


def heatmap_overlay(pixels: np.ndarray, heat: np.ndarray, alpha: float = 0.45) -> np.ndarray:
    """Colour ``heat`` (HxW in [0, 1], any size) over ``pixels`` (HxWxC in [0, 1]).

    The result is RGB float in [0, 1] at the image's size, capped at OVERLAY_MAX_SIDE.
    """
    h, w = pixels.shape[:2]
    size = _fit(w, h)
    base = _resize(pixels, size)
    base = np.repeat(base, 3, axis=2) if base.shape[2] == 1 else base[..., :3]
    colour = _jet(_resize(heat, size))
    return np.clip((1 - alpha) * base + alpha * colour, 0.0, 1.0)


def preview_png(pixels: np.ndarray) -> str:
    """The decoded image (HxWxC in [0, 1]) as a base64 PNG, longest side <= PREVIEW_MAX_SIDE:
    what a browser cannot show by itself (DICOM, TIFF, 16-bit PNG), as the model saw it."""
    h, w = pixels.shape[:2]
    small = _resize(pixels, _fit(w, h, PREVIEW_MAX_SIDE))
    return png_base64(small[..., 0] if small.shape[2] == 1 else small[..., :3])
