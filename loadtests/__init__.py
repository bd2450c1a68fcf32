"""Load tests and benchmarks of the two endpoints, with shared test images and schema checks.

``locustfile.py`` drives the service with locust; ``benchmark.py`` prints a latency/throughput
table per concurrency. Both post real encoded images: procedural slices from
``medfakedet.data.phantoms`` when that module is available, else seeded noise PNGs.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image

ORGANS = ("brain", "chest", "kidney", "lung")
ENDPOINTS = ("synthesis8", "manipulation_density")
SYNTHESIS_KEYS = {
    "class_id": int,
    "class_name": str,
    "organ": str,
    "is_fake": bool,
    "fake_probability": float,
    "organ_probabilities": dict,
    "probabilities": dict,
    "model_version": str,
}
DENSITY_KEYS = {
    "is_manipulated": bool,
    "presence_score": float,
    "threshold": float,
    "min_area": int,
    "count": int,
    "boxes": list,
    "image_size": (dict, list),
    "model_version": str,
    "message": str,
}


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


def schema_problem(endpoint: str, body: Any) -> str | None:
    """None when ``body`` has every documented field of ``endpoint`` with the right type."""
    if not isinstance(body, dict):
        return f"{endpoint}: expected a JSON object, got {type(body).__name__}"
    keys = SYNTHESIS_KEYS if endpoint == "synthesis8" else DENSITY_KEYS
    for key, kind in keys.items():
        if key not in body:
            return f"{endpoint}: missing field {key!r}"
        value = body[key]
        # JSON numbers: an int is a fine float; a bool is not a number.
        ok = isinstance(value, kind) or (kind is float and isinstance(value, int))
        if not ok or (kind in (int, float) and isinstance(value, bool)):
            return f"{endpoint}: field {key!r} has type {type(value).__name__}"
    if endpoint == "synthesis8":
        if len(body["probabilities"]) != 8:
            return f"synthesis8: {len(body['probabilities'])} probabilities, expected 8"
        if abs(sum(body["probabilities"].values()) - 1.0) > 1e-3:
            return "synthesis8: probabilities do not sum to 1"
    elif body["count"] != len(body["boxes"]):
        return "manipulation_density: count differs from the number of boxes"
    return None
