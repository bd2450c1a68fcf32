"""Local manipulations of a slice, each with the exact mask of the pixels it changed.

Three kinds, as in image-forensics datasets of medical scans:

- ``lesion``: insert a lesion (a textured, softly blended ellipse, bright or dark, sometimes
  ring-enhancing: bright rim around a dark core);
- ``removal``: remove a structure (a local bright or dark feature) by harmonic inpainting from
  its boundary, plus noise matched to the surrounding texture;
- ``copy_move``: copy a patch of the same slice onto another place, with feathered edges.

Each manipulation is ``fn(image uint8 HxW, tissue_mask bool HxW, rng) -> (image uint8, mask
bool)``. The mask is exact: it holds the pixels whose value changed by at least
:data:`CHANGE_THRESHOLD` gray levels (small gaps closed, holes filled, one connected region),
and no pixel outside it changed by that much. A manipulation that finds no place where its
change would be visible returns the image unchanged and an empty mask, so the caller can try
another kind. Geometry is given for 128 px slices and scales with the image size.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from scipy import ndimage, sparse
from scipy.sparse.linalg import spsolve

#: A pixel counts as manipulated when its gray value changed by at least this much (of 255).
CHANGE_THRESHOLD = 10
#: Smallest manipulated region, in pixels of a 128 px slice (scaled by area for other sizes).
MIN_REGION_AREA_128 = 40
#: Gap (pixels at 128 px) kept between two regions of one image, so each stays one component.
REGION_GAP_128 = 3

Manipulation = Callable[
    [np.ndarray, np.ndarray, np.random.Generator], tuple[np.ndarray, np.ndarray]
]

_TRIES = 12
_DISK3 = ndimage.generate_binary_structure(2, 1)


def _scale(image: np.ndarray) -> float:
    return min(image.shape) / 128.0


def min_region_area(size: int) -> int:
    """Smallest accepted region (pixels) for a ``size`` x ``size`` slice."""
    return max(4, round(MIN_REGION_AREA_128 * (size / 128.0) ** 2))


def _check_inputs(image: np.ndarray, tissue_mask: np.ndarray) -> None:
    if image.ndim != 2 or image.dtype != np.uint8:
        raise ValueError(f"image must be a uint8 HxW array; got {image.dtype} {image.shape}")
    if tissue_mask.shape != image.shape:
        raise ValueError(
            f"tissue_mask shape {tissue_mask.shape} differs from image shape {image.shape}"
        )


def _setup(image: np.ndarray, tissue_mask: np.ndarray) -> tuple[float, int, np.ndarray]:
    """Check a manipulation's inputs; returns (scale to 128 px, smallest accepted region in
    pixels, the image as float32 to edit)."""
    _check_inputs(image, tissue_mask)
    return _scale(image), min_region_area(min(image.shape)), image.astype(np.float32)


def _nothing(image: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    return image.copy(), np.zeros(image.shape, dtype=bool)


def changed_region(
    original: np.ndarray, edited: np.ndarray, min_area: int
) -> tuple[np.ndarray, np.ndarray] | None:
    """Make ``edited`` differ from ``original`` in one exact region, or None if too small.

    The region is the largest connected set of pixels changed by >= CHANGE_THRESHOLD (gaps
    closed, holes filled). Stray changed pixels outside it are put back to their original
    value, so the returned mask is exact.

    Returns:
        (edited uint8, mask bool) or None when the region has fewer than ``min_area`` pixels or
        less than half of it actually changed.
    """
    edited = np.clip(np.rint(edited), 0, 255).astype(np.uint8)
    changed = np.abs(edited.astype(np.int16) - original.astype(np.int16)) >= CHANGE_THRESHOLD
    if not changed.any():
        return None
    closed = ndimage.binary_closing(changed, _DISK3, iterations=1, border_value=0) | changed
    region = ndimage.binary_fill_holes(closed)
    labels, count = ndimage.label(region, structure=np.ones((3, 3), dtype=bool))
    if count > 1:
        areas = ndimage.sum_labels(np.ones_like(labels), labels, np.arange(1, count + 1))
        region = labels == int(np.argmax(areas)) + 1
    area = int(region.sum())
    if area < min_area or changed[region].sum() < 0.5 * area:
        return None
    stray = changed & ~region
    edited[stray] = original[stray]
    return edited, region


def _pick_centre(
    allowed: np.ndarray, margin: float, rng: np.random.Generator
) -> tuple[int, int] | None:
    """A random pixel of ``allowed`` at least ``margin`` pixels from its outside."""
    dist = ndimage.distance_transform_edt(allowed)
    ys, xs = np.nonzero(dist >= margin)
    if len(ys) == 0:
        return None
    i = rng.integers(len(ys))
    return int(ys[i]), int(xs[i])


def _ellipse_rho(
    shape: tuple[int, int], cy: float, cx: float, a: float, b: float, angle: float
) -> np.ndarray:
    """Normalised elliptical radius (1 on the ellipse) over the whole image."""
    yy, xx = np.mgrid[0 : shape[0], 0 : shape[1]].astype(np.float32)
    dy, dx = yy - cy, xx - cx
    c, s = np.cos(angle), np.sin(angle)
    u, v = c * dx + s * dy, -s * dx + c * dy
    return np.sqrt((u / a) ** 2 + (v / b) ** 2)


def _soft_inside(rho: np.ndarray, edge: float) -> np.ndarray:
    """1 well inside the ellipse, 0 outside, a smooth ramp of relative width ``edge``."""
    t = np.clip((1.0 - rho) / edge + 0.5, 0.0, 1.0)
    return t * t * (3.0 - 2.0 * t)


def _smooth_noise(shape: tuple[int, int], sigma: float, rng: np.random.Generator) -> np.ndarray:
    n = ndimage.gaussian_filter(rng.standard_normal(shape), sigma)
    return n / (n.std() + 1e-9)


# ------------------------------------------------------------------------------- lesion


def insert_lesion(
    image: np.ndarray, tissue_mask: np.ndarray, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Insert a textured lesion (bright, dark or ring-enhancing) inside ``tissue_mask``."""
    s, min_area, orig = _setup(image, tissue_mask)
    for _ in range(_TRIES):
        a, b = rng.uniform(4.0, 11.0, size=2) * s
        centre = _pick_centre(tissue_mask, max(a, b) + 1.0, rng)
        if centre is None:
            continue
        rho = _ellipse_rho(image.shape, *centre, a, b, rng.uniform(0, np.pi))
        # Lumpy outline: the radius wobbles with smooth noise.
        rho = rho * (1.0 + 0.12 * _smooth_noise(image.shape, 3.0 * s, rng))
        alpha = _soft_inside(rho, 0.35)
        inside = rho < 1.0
        local = float(np.median(orig[inside])) if inside.any() else float(orig.mean())
        contrast = rng.uniform(40.0, 90.0)
        style = rng.choice(["bright", "dark", "ring"], p=[0.45, 0.35, 0.2])
        if style == "bright" and local + contrast > 245:
            style = "dark"
        if style == "dark" and local - contrast < 10:
            style = "bright"
        if style == "ring":
            core = min(local - 0.5 * contrast, local - 25.0)
            rim = local + contrast
            target = np.where(
                rho < 0.6, core, core + (rim - core) * np.clip((rho - 0.45) / 0.3, 0, 1)
            )
        else:
            target = np.full(image.shape, local + (contrast if style == "bright" else -contrast))
        target = target + rng.uniform(4.0, 10.0) * _smooth_noise(image.shape, 1.2 * s, rng)
        edited = orig * (1.0 - alpha) + target * alpha
        done = changed_region(image, edited, min_area)
        if done is not None:
            return done
    return _nothing(image)


# ------------------------------------------------------------------------------ removal


def harmonic_fill(image: np.ndarray, region: np.ndarray) -> np.ndarray:
    """Fill ``region`` of a float image with the harmonic (Laplace) interpolation of its border.

    Solves the discrete Laplace equation on the region's pixels with the surrounding pixels
    as fixed boundary values, the smoothest fill that meets the boundary continuously.
    """
    out = image.astype(np.float64).copy()
    ys, xs = np.nonzero(region)
    n = len(ys)
    if n == 0:
        return out
    index = -np.ones(region.shape, dtype=np.int64)
    index[ys, xs] = np.arange(n)
    h, w = region.shape
    rows, cols, vals = [], [], []
    rhs = np.zeros(n)
    degree = np.zeros(n)
    for dy, dx in ((-1, 0), (1, 0), (0, -1), (0, 1)):
        ny, nx = ys + dy, xs + dx
        inside = (ny >= 0) & (ny < h) & (nx >= 0) & (nx < w)
        degree += inside
        k = np.nonzero(inside)[0]
        nbr = index[ny[k], nx[k]]
        unknown = nbr >= 0
        rows.append(k[unknown])
        cols.append(nbr[unknown])
        vals.append(-np.ones(int(unknown.sum())))
        known = k[~unknown]
        np.add.at(rhs, known, out[ny[known], nx[known]])
    rows.append(np.arange(n))
    cols.append(np.arange(n))
    vals.append(degree)
    lap = sparse.csr_matrix(
        (np.concatenate(vals), (np.concatenate(rows), np.concatenate(cols))), shape=(n, n)
    )
    out[ys, xs] = spsolve(lap, rhs)
    return out


def remove_structure(
    image: np.ndarray, tissue_mask: np.ndarray, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Erase a local bright or dark structure inside the tissue by inpainting from its border."""
    s, min_area, orig = _setup(image, tissue_mask)
    # Structures are what stands out from the local background (a heavy blur).
    background = ndimage.gaussian_filter(orig, 4.0 * s)
    residual = orig - background
    organ = ndimage.binary_fill_holes(tissue_mask)  # ventricles are holes of the tissue mask
    candidates = organ & (np.abs(residual) >= 18.0)
    labels, count = ndimage.label(candidates, structure=np.ones((3, 3), dtype=bool))
    if count == 0:
        return _nothing(image)
    areas = ndimage.sum_labels(np.ones_like(labels), labels, np.arange(1, count + 1))
    # Compact structures only (a lump, a vessel segment, a ventricle horn): long thin
    # networks such as the ring of cortical sulci would make one huge, odd region.
    max_area, max_side = 300.0 * s * s, 28.0 * s
    ok = []
    for i, (rows, cols) in enumerate(ndimage.find_objects(labels)):
        hh, ww = rows.stop - rows.start, cols.stop - cols.start
        compact = areas[i] >= 0.2 * hh * ww and max(hh, ww) <= max_side
        if compact and 0.5 * min_area <= areas[i] <= max_area:
            ok.append(i + 1)
    if not ok:
        return _nothing(image)
    texture_std = float(np.std(residual[organ & ~candidates])) if organ.any() else 3.0
    for label in rng.permutation(ok)[:_TRIES]:
        region = ndimage.binary_dilation(labels == label, _DISK3, iterations=max(1, round(2 * s)))
        if not (region & tissue_mask).any():
            continue
        filled = harmonic_fill(orig, region)
        noise = ndimage.gaussian_filter(rng.standard_normal(image.shape), 0.7)
        noise *= min(texture_std, 12.0) / (noise.std() + 1e-9)
        edited = np.where(region, filled + noise, orig)
        done = changed_region(image, edited, min_area)
        if done is not None:
            return done
    return _nothing(image)


# ---------------------------------------------------------------------------- copy-move


def copy_move(
    image: np.ndarray, tissue_mask: np.ndarray, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Copy an elliptic patch of the slice onto another place inside ``tissue_mask``."""
    s, min_area, orig = _setup(image, tissue_mask)
    h, w = image.shape
    # Sources come from anywhere in the organ: the copied content need only be anatomy.
    organ = ndimage.binary_fill_holes(tissue_mask)
    yy, xx = np.mgrid[0:h, 0:w]
    for _ in range(_TRIES):
        a, b = rng.uniform(5.0, 11.0, size=2) * s
        r = max(a, b)
        dst = _pick_centre(tissue_mask, r + 1.0, rng)
        src = _pick_centre(organ, r + 1.0, rng)
        if dst is None or src is None or np.hypot(dst[0] - src[0], dst[1] - src[1]) < 2.2 * r:
            continue
        dy, dx = src[0] - dst[0], src[1] - dst[1]
        sy, sx = np.clip(yy + dy, 0, h - 1), np.clip(xx + dx, 0, w - 1)
        shifted = orig[sy, sx]
        if rng.random() < 0.3:  # mirrored copies are a common forgery move
            shifted = orig[sy, np.clip(2 * src[1] - (xx + dx), 0, w - 1)]
        rho = _ellipse_rho(image.shape, *dst, a, b, rng.uniform(0, np.pi))
        alpha = _soft_inside(rho, 0.3)
        edited = orig * (1.0 - alpha) + shifted * alpha
        done = changed_region(image, edited, min_area)
        if done is not None:
            return done
    return _nothing(image)


MANIPULATIONS: dict[str, Manipulation] = {
    "lesion": insert_lesion,
    "removal": remove_structure,
    "copy_move": copy_move,
}


def manipulate(
    image: np.ndarray,
    tissue_mask: np.ndarray,
    n_regions: int,
    rng: np.random.Generator,
    kinds: tuple[str, ...] = tuple(MANIPULATIONS),
) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Apply ``n_regions`` separate manipulations of random kinds.

    Regions are kept apart (a gap of REGION_GAP_128 px at 128 px), so the mask has one
    8-connected component per region.

    Returns:
        (image uint8, mask bool = union of the regions, kinds applied in order). Fewer regions
        than asked are applied when the slice has no more room.
    """
    _check_inputs(image, tissue_mask)
    unknown = set(kinds) - set(MANIPULATIONS)
    if unknown:
        raise ValueError(f"unknown manipulations {sorted(unknown)}; known: {sorted(MANIPULATIONS)}")
    gap = max(1, round(REGION_GAP_128 * _scale(image)))
    current = image.copy()
    total = np.zeros(image.shape, dtype=bool)
    applied: list[str] = []
    for _ in range(n_regions):
        for _attempt in range(len(kinds) * 3):
            kind = kinds[int(rng.integers(len(kinds)))]
            keep_out = (
                ndimage.binary_dilation(total, _DISK3, iterations=gap + 1) if total.any() else total
            )
            edited, mask = MANIPULATIONS[kind](current, tissue_mask & ~keep_out, rng)
            if mask.any() and not (mask & keep_out).any():
                current, total = edited, total | mask
                applied.append(kind)
                break
    return current, total, applied
