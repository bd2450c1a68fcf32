"""The MedFakeInpaint part of the builder: manipulated variants of brain slices.

Each source slice (a phantom, or a real brain scan) gives up to five images: ``orig``
(untouched) and ``m1, m2, m3, m45`` with that many manipulated regions, written with
:func:`medfakedet.data.inpaint.write_record` (image, density, mask, YOLO labels).
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
from scipy import ndimage

from .build_common import INPAINT_STREAM, encode_spec, finalize_gray, seeded_rng
from .inpaint import write_record
from .manipulations import manipulate

#: Variants written per source slice; "orig" is untouched (one image in five).
VARIANTS: tuple[str, ...] = ("orig", "m1", "m2", "m3", "m45")
#: Regions per variant (m45: four or five).
VARIANT_REGIONS: dict[str, tuple[int, ...]] = {"m1": (1,), "m2": (2,), "m3": (3,), "m45": (4, 5)}
#: Manipulations of the default build: the inpainting kinds, as in the paper's MedFakeInpaint
#: (DDPM inpainting regenerates a region's content). ``copy_move`` is opt-in (``inpaint_kinds``):
#: its pasted content is genuine tissue of the same slice, which a single-image density model
#: cannot tell from untouched tissue (box recall 0.00 even on training images; README.md, "What
#: the models can and cannot do"); detecting it needs a self-similarity search.
DEFAULT_INPAINT_KINDS: tuple[str, ...] = ("lesion", "removal")
INPAINT_MANIFEST_COLUMNS: tuple[str, ...] = (
    "id",
    "source",
    "variant",
    "kind",
    "n_regions",
    "encode",
)
#: Source slices per job.
INPAINT_CHUNK = 8

#: An inpainting source: (index, unique name, image, or None for a phantom drawn from the index).
Source = tuple[int, str, np.ndarray | None]


def estimate_tissue_mask(image: np.ndarray) -> np.ndarray:
    """Where lesions may go in a real brain slice: Otsu foreground, holes filled, the largest
    component, eroded away from the skull edge."""
    smooth = ndimage.gaussian_filter(image.astype(np.float32), 1.0)
    hist, edges = np.histogram(smooth, bins=256, range=(0, 256))
    p = hist / max(hist.sum(), 1)
    omega, mu = np.cumsum(p), np.cumsum(p * edges[:-1])
    between = (mu[-1] * omega - mu) ** 2 / np.maximum(omega * (1 - omega), 1e-12)
    fg = ndimage.binary_fill_holes(smooth > edges[int(np.argmax(between))])
    labels, count = ndimage.label(fg)
    if count == 0:
        return fg
    areas = ndimage.sum_labels(np.ones_like(labels), labels, np.arange(1, count + 1))
    largest = labels == int(np.argmax(areas)) + 1
    margin = max(1, round(6 * min(image.shape) / 128))
    return ndimage.binary_erosion(largest, iterations=margin)


def safe_name(text: str) -> str:
    """File-name-safe version of ``text`` (letters, digits, ``-``)."""
    return re.sub(r"[^A-Za-z0-9-]+", "-", text).strip("-") or "x"


def inpaint_job(
    out: str,
    sources: list[Source],
    n_images: int,
    seed: int,
    size: int,
    kinds: tuple[str, ...] = DEFAULT_INPAINT_KINDS,
    encode: str = "random",
) -> list[dict]:
    """Write the variants of each source slice (the first ``n_images`` of the whole build).

    Without an image the source is a phantom brain slice drawn from its index. Each image's
    format, bit depth and JPEG quality are drawn by the MedFake rule; its geometry is kept, so
    masks, density maps and labels need no resampling.
    """
    from .phantoms import generate_slice

    root = Path(out)
    rows = []
    for j, name, image in sources:
        if image is None:
            phantom = generate_slice("brain", seeded_rng(seed, INPAINT_STREAM, j), size)
            image, tissue = finalize_gray(phantom.image, size), phantom.tissue_mask
        else:
            image = finalize_gray(image, size)
            tissue = estimate_tissue_mask(image)
        group = f"{name}_0"
        for v, variant in enumerate(VARIANTS):
            if j * len(VARIANTS) + v >= n_images:
                break
            rng = seeded_rng(seed, INPAINT_STREAM, j, v + 1)
            if variant == "orig":
                edited, mask, applied = image, np.zeros(image.shape, dtype=bool), []
            else:
                n_regions = int(rng.choice(VARIANT_REGIONS[variant]))
                edited, mask, applied = manipulate(image, tissue, n_regions, rng, kinds)
            image_id = f"{group}_{variant}"
            spec = encode_spec(encode, (seed, 1, j, v), resize=False)
            n = write_record(root, image_id, edited, mask, encode=spec)
            rows.append(
                {
                    "id": image_id,
                    "source": group,
                    "variant": variant,
                    "kind": "+".join(applied),
                    "n_regions": n,
                    "encode": spec.tag(),
                }
            )
    return rows


def inpaint_sources(n_sources: int, brain_reals: list[tuple[str, np.ndarray]]) -> list[Source]:
    """(index, unique source name, image or None for a phantom) of each inpainting source."""
    if not brain_reals:
        return [(j, f"ph{j:05d}", None) for j in range(n_sources)]
    sources, seen = [], set()
    for j, (rel, image) in enumerate(brain_reals[:n_sources]):
        name = safe_name(rel.rsplit(".", 1)[0])
        if name in seen:
            name = f"{name}-{j}"
        seen.add(name)
        sources.append((j, name, image))
    return sources
