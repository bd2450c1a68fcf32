"""Corruptions of the robustness table, applied to the model-size image in [0, 1].

Each corruption is deterministic: JPEG re-encoding (decoded by serving's own decoder), a
down-and-up rescale, and Gaussian noise seeded by the item's index (the same noise on every run
and for every model).
"""

from __future__ import annotations

import io
from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from medfakedet.imaging import decode_image
from medfakedet.preprocess import PreprocessConfig, normalize, resize_tensor, to_channels, to_tensor

NOISE_SIGMA = 0.03
DOWNSCALE_FACTOR = 0.5


def jpeg(quality: int) -> Callable[[torch.Tensor, int], torch.Tensor]:
    """Re-encode as JPEG at ``quality`` and decode with the code serving uses."""

    def corrupt(x: torch.Tensor, _index: int) -> torch.Tensor:
        arr = (x.clamp(0, 1).permute(1, 2, 0).numpy() * 255.0).round().astype(np.uint8)
        image = Image.fromarray(arr[:, :, 0] if arr.shape[2] == 1 else arr)
        buf = io.BytesIO()
        image.save(buf, format="JPEG", quality=quality)
        return to_channels(to_tensor(decode_image(buf.getvalue()).pixels), x.shape[0])

    return corrupt


def down_up(x: torch.Tensor, _index: int) -> torch.Tensor:
    """Downscale by :data:`DOWNSCALE_FACTOR`, then bilinear back to the original size."""
    size = x.shape[-1]
    small = resize_tensor(x, max(8, round(size * DOWNSCALE_FACTOR)))
    return F.interpolate(small[None], size=x.shape[-2:], mode="bilinear", align_corners=False)[0]


def gaussian_noise(x: torch.Tensor, index: int) -> torch.Tensor:
    """Add noise of std :data:`NOISE_SIGMA`, seeded by the item index."""
    g = torch.Generator().manual_seed(1_000_003 + index)
    return (x + NOISE_SIGMA * torch.randn(x.shape, generator=g)).clamp(0, 1)


CORRUPTIONS: dict[str, Callable[[torch.Tensor, int], torch.Tensor]] = {
    "jpeg_q95": jpeg(95),
    "jpeg_q75": jpeg(75),
    "jpeg_q50": jpeg(50),
    "downscale_x0.5_upscale": down_up,
    f"gaussian_noise_{NOISE_SIGMA:g}": gaussian_noise,
}


def corrupt_batch(
    x: torch.Tensor, cfg: PreprocessConfig, corruption: str, first_index: int
) -> torch.Tensor:
    """Undo the normalisation, corrupt each image in [0, 1], normalise again."""
    fn = CORRUPTIONS[corruption]
    mean = torch.tensor(cfg.mean).view(-1, 1, 1)
    std = torch.tensor(cfg.std).view(-1, 1, 1)
    out = [
        normalize(fn((im * std + mean).clamp(0, 1), first_index + i), cfg) for i, im in enumerate(x)
    ]
    return torch.stack(out)
