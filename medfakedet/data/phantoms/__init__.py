"""Procedural, anatomically plausible grayscale slices for the embedded synthetic dataset.

Four organ generators (brain MRI, chest radiograph, abdominal CT with kidneys, thoracic CT)
built from numpy + scipy.ndimage only. Every random choice comes from the caller's
``np.random.Generator``, so a slice is a pure function of the generator state. A 128 px slice
takes a few milliseconds.

Geometry is drawn on a :class:`~.canvas.Canvas` in normalised anatomy coordinates that are
rotated, scaled and shifted a little per sample; intensities are built in physical-ish units
(MRI tissue signal, X-ray attenuation, CT Hounsfield units) and mapped to 8 bits at the end the
way the modality would display them. One module per modality: ``brain``, ``chest``, ``ct``
(kidney and lung).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from .brain import brain_slice
from .canvas import Canvas, display_uint8
from .chest import chest_slice
from .ct import kidney_slice, lung_slice

ORGAN_NAMES: tuple[str, ...] = ("brain", "chest", "kidney", "lung")

__all__ = ["ORGAN_NAMES", "PhantomSlice", "generate_slice"]


@dataclass
class PhantomSlice:
    """One generated slice.

    Attributes:
        image: uint8 array (H, W).
        tissue_mask: bool array (H, W): where a lesion could plausibly be inserted (brain
            parenchyma for brain, the body for the other organs).
    """

    image: np.ndarray
    tissue_mask: np.ndarray


GENERATORS: dict[str, tuple[Callable[[Canvas], tuple[np.ndarray, np.ndarray]], float, float]] = {
    # organ: (generator, max rotation in degrees, scale jitter)
    "brain": (brain_slice, 8.0, 0.08),
    "chest": (chest_slice, 3.0, 0.05),
    "kidney": (kidney_slice, 4.0, 0.08),
    "lung": (lung_slice, 4.0, 0.08),
}


def generate_slice(organ: str, rng: np.random.Generator, size: int = 128) -> PhantomSlice:
    """Generate one procedural slice of ``organ``.

    Args:
        organ: one of "brain" (MRI), "chest" (radiograph), "kidney" (abdominal CT),
            "lung" (thoracic CT).
        rng: source of all randomness; the same generator state gives the same slice.
        size: output height and width in pixels (>= 32).

    Returns:
        PhantomSlice with a uint8 (size, size) image and a bool tissue mask.
    """
    if organ not in GENERATORS:
        raise ValueError(f"unknown organ {organ!r}; expected one of {', '.join(ORGAN_NAMES)}")
    if size < 32:
        raise ValueError(f"size {size} is too small; use at least 32 pixels")
    fn, rot, scale = GENERATORS[organ]
    cv = Canvas(size, rng, rot, scale)
    img, mask = fn(cv)
    return PhantomSlice(image=display_uint8(img), tissue_mask=np.asarray(mask, dtype=bool))
