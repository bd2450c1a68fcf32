"""Corruptions of the robustness table, applied to the model-size image in [0, 1].

Each corruption is deterministic and uses the shared primitives of :mod:`medfakedet.degrade`
(the same code the builder's encode path and training augmentation use): JPEG re-encoding
(decoded by serving's own decoder), PNG -> JPEG re-saving, down-and-up / up-and-down rescales
(a resampled file, squashed back to the model size by the loader) and Gaussian noise seeded by
the item's index (the same noise on every run and for every model). JPEG -> PNG needs no column:
PNG is lossless, so a JPEG re-saved as PNG is the clean image.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from medfakedet.degrade import add_noise, down_up, jpeg_roundtrip
from medfakedet.preprocess import PreprocessConfig, normalize

NOISE_SIGMA = 0.03
DOWNSCALE_FACTOR = 0.5
UPSCALE_FACTOR = 2.0
#: Quality of the PNG -> JPEG column (a typical "save as JPEG" default of viewers and PACS
#: exports).
RESAVE_QUALITY = 90


def jpeg(quality: int) -> Callable[[torch.Tensor, int], torch.Tensor]:
    """Re-encode as JPEG at ``quality`` and decode with the code serving uses."""

    def corrupt(x: torch.Tensor, _index: int) -> torch.Tensor:
        return jpeg_roundtrip(x, quality)

    return corrupt


def rescale(factor: float) -> Callable[[torch.Tensor, int], torch.Tensor]:
    """Resample by ``factor``, then back to the original size (bilinear, antialiased)."""

    def corrupt(x: torch.Tensor, _index: int) -> torch.Tensor:
        return down_up(x, factor)

    return corrupt


def gaussian_noise(x: torch.Tensor, index: int) -> torch.Tensor:
    """Add noise of std :data:`NOISE_SIGMA`, seeded by the item index."""
    return add_noise(x, NOISE_SIGMA, torch.Generator().manual_seed(1_000_003 + index))


CORRUPTIONS: dict[str, Callable[[torch.Tensor, int], torch.Tensor]] = {
    "jpeg_q95": jpeg(95),
    "jpeg_q75": jpeg(75),
    "jpeg_q50": jpeg(50),
    f"png_to_jpeg_q{RESAVE_QUALITY}": jpeg(RESAVE_QUALITY),
    "downscale_x0.5_upscale": rescale(DOWNSCALE_FACTOR),
    "upscale_x2_downscale": rescale(UPSCALE_FACTOR),
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
