"""Load tests and benchmarks of the two endpoints, with shared test images.

``locustfile.py`` drives the service with locust; ``benchmark.py`` prints a latency/throughput
table per concurrency. Both post real encoded images: procedural slices from
``medfakedet.data.phantoms`` when that module is available, else seeded noise PNGs, and check
every answer against the response models of :mod:`medfakedet.schema`
(:func:`medfakedet.schema.result_problem`).
"""

from __future__ import annotations

import io
from dataclasses import dataclass

import numpy as np
from PIL import Image

ORGANS = ("brain", "chest", "kidney", "lung")
ENDPOINTS = ("synthesis8", "manipulation_density")


@dataclass(frozen=True)
class SampleImage:
    """An encoded test image: file name, PNG bytes, the organ it depicts."""

    name: str
    data: bytes
    organ: str


def _png(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG")
    return buf.getvalue()


def sample_images(count: int = 8, size: int = 256, seed: int = 0) -> list[SampleImage]:
    """``count`` PNGs cycling through the four organs; deterministic for a given seed."""
    rng = np.random.default_rng(seed)
    try:
        from medfakedet.data.phantoms import generate_slice
    except ImportError:  # the data package is optional for load tests
        generate_slice = None
    images = []
    for i in range(count):
        organ = ORGANS[i % len(ORGANS)]
        if generate_slice is not None:
            pixels = generate_slice(organ, rng, size=size).image
        else:
            pixels = rng.integers(0, 256, size=(size, size), dtype=np.uint8)
        images.append(SampleImage(f"{organ}_{i:03d}.png", _png(pixels), organ))
    return images
