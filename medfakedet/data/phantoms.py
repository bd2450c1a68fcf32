"""Procedural, anatomically plausible grayscale slices for the embedded synthetic dataset.

Four organ generators (brain MRI, chest radiograph, abdominal CT with kidneys, thoracic CT)
built from numpy + scipy.ndimage only. Every random choice comes from the caller's
``np.random.Generator``, so a slice is a pure function of the generator state. A 128 px slice
takes a few milliseconds.

Geometry is drawn in normalised anatomy coordinates (x right, y down, both in [-1, 1]) that are
rotated, scaled and shifted a little per sample; intensities are built in physical-ish units
(MRI tissue signal, X-ray attenuation, CT Hounsfield units) and mapped to 8 bits at the end the
way the modality would display them.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

ORGAN_NAMES: tuple[str, ...] = ("brain", "chest", "kidney", "lung")


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


class _Canvas:
    """Jittered coordinate grid plus drawing primitives with ~1 px anti-aliased edges."""

    def __init__(self, size: int, rng: np.random.Generator, rot_deg: float, scale: float):
        self.size = size
        self.rng = rng
        self.pix = 2.0 / size  # one pixel in normalised units
        lin = (np.arange(size, dtype=np.float32) + 0.5) * self.pix - 1.0
        yy, xx = np.meshgrid(lin, lin, indexing="ij")
        ang = np.deg2rad(rng.uniform(-rot_deg, rot_deg))
        s = rng.uniform(1.0 - scale, 1.0 + scale)
        sx, sy = rng.uniform(-0.05, 0.05, size=2)
        xx, yy = xx - sx, yy - sy
        c, si = np.cos(ang), np.sin(ang)
        self.x = ((c * xx + si * yy) / s).astype(np.float32)
        self.y = ((-si * xx + c * yy) / s).astype(np.float32)
        self._fwd = (s, c, si, sx, sy)  # anatomy -> image mapping, for bounding windows
        self.pix /= s

    def window(self, cx: float, cy: float, radius: float) -> tuple[slice, slice]:
        """Pixel window covering a disc of ``radius`` around anatomy point (cx, cy)."""
        s, c, si, sx, sy = self._fwd
        col = (s * (c * cx - si * cy) + sx + 1.0) * self.size / 2.0
        row = (s * (si * cx + c * cy) + sy + 1.0) * self.size / 2.0
        r = (radius * s + 2 * self.pix) * self.size / 2.0 + 2
        rows = slice(max(int(row - r), 0), max(min(int(row + r) + 1, self.size), 0))
        cols = slice(max(int(col - r), 0), max(min(int(col + r) + 1, self.size), 0))
        return rows, cols

    def coverage(self, signed_dist: np.ndarray) -> np.ndarray:
        """Anti-aliased inside-ness from a signed distance (negative inside), in [0, 1]."""
        return np.clip(0.5 - signed_dist / self.pix, 0.0, 1.0)

    def ellipse(self, cx: float, cy: float, a: float, b: float, angle: float = 0.0) -> np.ndarray:
        """Coverage of a filled ellipse (computed only inside its bounding window)."""
        win = self.window(cx, cy, max(a, b))
        out = np.zeros((self.size, self.size), dtype=np.float32)
        dx, dy = self.x[win] - cx, self.y[win] - cy
        if angle:
            c, s = np.cos(angle), np.sin(angle)
            dx, dy = c * dx + s * dy, -s * dx + c * dy
        rho = np.sqrt((dx / a) ** 2 + (dy / b) ** 2)
        out[win] = self.coverage((rho - 1.0) * min(a, b))
        return out

    def band(self, centre_y: np.ndarray, half_width: float, x_lo: float, x_hi: float) -> np.ndarray:
        """Coverage of a curved band y = centre_y(x) between x_lo and x_hi (soft ends)."""
        d = np.abs(self.y - centre_y) - half_width
        ends = np.maximum(x_lo - self.x, self.x - x_hi)
        return self.coverage(np.maximum(d, ends))

    def smooth_noise(self, sigma_px: float) -> np.ndarray:
        """Zero-mean, unit-std Gaussian-filtered white noise."""
        # Wide kernels are slow at full resolution: filter a coarser grid and upsample it.
        step = max(1, int(sigma_px // 3))
        n_low = -(-self.size // step)
        n = ndimage.gaussian_filter(
            self.rng.standard_normal((n_low, n_low)).astype(np.float32),
            sigma_px / step,
            mode="reflect",
        )
        if step > 1:
            n = ndimage.zoom(n, step, order=1, grid_mode=True, mode="nearest")
            n = n[: self.size, : self.size]
        return (n - n.mean()) / (n.std() + 1e-6)

    def segments(self, segs: np.ndarray, width: np.ndarray) -> np.ndarray:
        """Coverage of line segments ``segs`` (M, 4: x0, y0, x1, y1), half-widths (M,)."""
        out = np.zeros((self.size, self.size), dtype=np.float32)
        for (x0, y0, x1, y1), w in zip(segs, width, strict=True):
            win = self.window((x0 + x1) / 2, (y0 + y1) / 2, np.hypot(x1 - x0, y1 - y0) / 2 + w)
            px, py = self.x[win] - x0, self.y[win] - y0
            dx, dy = x1 - x0, y1 - y0
            t = np.clip((px * dx + py * dy) / (dx * dx + dy * dy + 1e-12), 0.0, 1.0)
            d = np.hypot(px - t * dx, py - t * dy) - w
            out[win] = np.maximum(out[win], self.coverage(d))
        return out

    def vessel_tree(
        self, roots: list[tuple[float, float, float]], length: float, width: float, depth: int
    ) -> np.ndarray:
        """Branching vessel tree grown from ``roots`` (x, y, direction angle)."""
        segs, widths = [], []
        stack = [(x, y, ang, length, width, depth) for x, y, ang in roots]
        while stack:
            x, y, ang, ln, w, d = stack.pop()
            ang += self.rng.normal(0, 0.25)
            x1, y1 = x + ln * np.cos(ang), y + ln * np.sin(ang)
            segs.append((x, y, x1, y1))
            widths.append(max(w, self.pix * 0.35))
            if d > 0:
                for turn in (-1, 1):
                    spread = self.rng.uniform(0.3, 0.7)
                    stack.append((x1, y1, ang + turn * spread, ln * 0.75, w * 0.7, d - 1))
        return self.segments(np.asarray(segs), np.asarray(widths))

    def ridges(self, sigma_px: float, width: float) -> np.ndarray:
        """Thin vessel-like network: where a smooth noise field crosses zero."""
        return np.exp(-((self.smooth_noise(sigma_px) / width) ** 2))


def _to_uint8(img: np.ndarray) -> np.ndarray:
    return (np.clip(img, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)


def _window_ct(hu: np.ndarray, level: float, width: float) -> np.ndarray:
    return (hu - (level - width / 2.0)) / width


def _ct_noise(cv: _Canvas, sigma_hu: float) -> np.ndarray:
    """Slightly correlated noise, like reconstructed CT."""
    n = ndimage.gaussian_filter(cv.rng.standard_normal((cv.size, cv.size)), 0.6)
    return (n / (n.std() + 1e-6) * sigma_hu).astype(np.float32)


def _lumpy_radius(cv: _Canvas, harmonics: int, amp: float) -> Callable[[np.ndarray], np.ndarray]:
    """A random smooth radial perturbation r(theta) = 1 + sum_k a_k cos(k theta + phi_k)."""
    amps = cv.rng.normal(0.0, amp, size=harmonics) / np.arange(1, harmonics + 1)
    phases = cv.rng.uniform(0, 2 * np.pi, size=harmonics)

    def radius(theta: np.ndarray) -> np.ndarray:
        r = np.ones_like(theta)
        for k in range(harmonics):
            r += amps[k] * np.cos((k + 2) * theta + phases[k])
        return r

    return radius


# --------------------------------------------------------------------------- brain MRI


_BRAIN_CONTRASTS = {
    # tissue: background, scalp, skull, marrow, csf, grey, white
    "T1": (0.0, 0.80, 0.06, 0.55, 0.12, 0.45, 0.66),
    "T2": (0.0, 0.55, 0.05, 0.45, 0.95, 0.55, 0.36),
    "FLAIR": (0.0, 0.55, 0.05, 0.35, 0.08, 0.62, 0.46),
}


def _brain(cv: _Canvas) -> tuple[np.ndarray, np.ndarray]:
    rng = cv.rng
    contrast = ("T1", "T2", "FLAIR")[rng.integers(3)]
    bg, scalp_i, skull_i, marrow_i, csf_i, gm_i, wm_i = _BRAIN_CONTRASTS[contrast]
    gm_i += rng.normal(0, 0.03)
    wm_i += rng.normal(0, 0.03)

    a, b = rng.uniform(0.66, 0.76), rng.uniform(0.82, 0.92)
    x, y = cv.x, cv.y
    theta = np.arctan2(y, x)
    rho = np.sqrt((x / a) ** 2 + (y / b) ** 2) / _lumpy_radius(cv, 4, 0.03)(theta)
    scale = min(a, b)  # converts rho differences to normalised distances
    skull_in = rng.uniform(0.86, 0.90)
    brain_edge = skull_in - rng.uniform(0.015, 0.03)

    head = cv.coverage((rho - 1.0) * scale)
    skull = cv.coverage((rho - (skull_in + 0.06)) * scale)
    marrow = cv.coverage((np.abs(rho - (skull_in + 0.03)) - 0.012) * scale)
    brain = cv.coverage((rho - brain_edge) * scale)
    depth = (brain_edge - rho) / brain_edge  # 0 at cortex, 1 at centre
    # Cortex folding: sulci are thin CSF clefts at a jittered angular period; white matter
    # reaches furthest into the gyri between them.
    k = rng.uniform(22, 30)
    phase = theta * k + 3.0 * cv.smooth_noise(8.0)
    dphi = np.abs(np.mod(phase, 2 * np.pi) - np.pi)  # 0 at a sulcus, pi mid-gyrus
    arc = dphi / k * np.maximum(rho, 0.2) * scale
    sulc_depth = 0.14 + 0.05 * cv.smooth_noise(4.0)
    sulci = cv.coverage(arc - 0.006 - 0.012 * np.clip(sulc_depth - depth, 0, 1)) * (
        depth < sulc_depth
    )
    wm_depth = 0.2 - 0.1 * dphi / np.pi + 0.015 * cv.smooth_noise(2.0)
    wm = cv.coverage((wm_depth - depth) * scale)
    # Midline fissure, frontal and occipital only.
    fissure = cv.coverage(np.abs(x) - 0.007) * np.clip((np.abs(y) - 0.3) * 20, 0, 1)
    # Lateral ventricles (butterfly): frontal horns splay forward, bodies run parallel,
    # occipital horns splay backward; size depends on the slice level.
    v = rng.uniform(0.6, 1.3)
    vx, vy = rng.normal(0, 0.01), rng.normal(-0.02, 0.03)
    parts = []
    for side in (-1, 1):
        parts += [
            cv.ellipse(vx + side * 0.08 * v, vy - 0.12 * v, 0.045 * v, 0.13 * v, -side * 0.5),
            cv.ellipse(vx + side * 0.055 * v, vy + 0.03 * v, 0.035 * v, 0.14 * v, 0.0),
            cv.ellipse(vx + side * 0.1 * v, vy + 0.17 * v, 0.03 * v, 0.09 * v, side * 0.5),
        ]
    vent = np.maximum.reduce(parts)
    # Deep grey nuclei (basal ganglia / thalamus) beside the ventricles.
    nuclei = np.maximum(
        cv.ellipse(vx - 0.2 * v - 0.05, vy + 0.05, 0.07, 0.11, 0.3),
        cv.ellipse(vx + 0.2 * v + 0.05, vy + 0.05, 0.07, 0.11, -0.3),
    )

    tex = 0.03 * cv.smooth_noise(1.2) + 0.03 * cv.smooth_noise(5.0)
    tissue = gm_i + (wm_i - gm_i) * wm * (1 - 0.7 * nuclei) + tex
    csf_mix = np.maximum.reduce([sulci, fissure, vent])
    tissue = tissue * (1 - csf_mix) + csf_i * csf_mix
    img = bg * (1 - head) + scalp_i * head
    img = img * (1 - skull) + (skull_i * (1 - marrow) + marrow_i * marrow) * skull
    inner = cv.coverage((rho - skull_in) * scale)
    img = img * (1 - inner) + csf_i * inner  # CSF rim between skull and cortex
    img = img * (1 - brain) + tissue * brain
    img = img + 0.05 * cv.smooth_noise(1.0) * head * (1 - skull)  # scalp texture

    bias = 1.0 + rng.uniform(0.05, 0.2) * cv.smooth_noise(cv.size / 3)
    img = np.clip(img * bias, 0, None) * rng.uniform(0.8, 1.0)
    sigma = rng.uniform(0.015, 0.045)
    n1, n2 = rng.standard_normal((2, cv.size, cv.size)).astype(np.float32) * sigma
    img = np.sqrt((img + n1) ** 2 + n2**2)  # Rician magnitude noise
    mask = (brain > 0.5) & (vent < 0.5) & (depth > 0.05)
    return img, mask


# --------------------------------------------------------------------- chest radiograph


def _chest(cv: _Canvas) -> tuple[np.ndarray, np.ndarray]:
    rng = cv.rng
    x, y = cv.x, cv.y
    u = np.abs(x)
    # Torso silhouette: neck at the top widening through rounded shoulders to the thorax.
    full_w = rng.uniform(0.92, 1.05)
    rise = np.clip((y + 1.05) / rng.uniform(0.35, 0.5), 0, 1)
    half_w = 0.24 + (full_w - 0.24) * np.sin(rise * np.pi / 2) ** 0.7
    body = cv.coverage(u - half_w)
    # Cylinder projection: soft tissue thickness falls off towards the sides.
    thick = np.sqrt(np.clip(1.0 - (x / (half_w + 0.1)) ** 2, 0, 1)) * body

    dome_y = rng.uniform(0.38, 0.52)
    lungs = np.zeros_like(x)
    for side in (-1, 1):
        cx = side * rng.uniform(0.4, 0.46)
        top = rng.uniform(-0.82, -0.74)
        # Each side's diaphragm dome; the patient's right (image left) one sits higher.
        dome = dome_y + (0.05 if side > 0 else 0.0) + 0.9 * (x - cx) ** 2
        lx = (x - cx) / rng.uniform(0.33, 0.38)
        ly = (y - top) / (dome - top)  # 0 at apex, 1 at the diaphragm
        width = np.sqrt(np.clip(ly, 0, None) * 1.3) * (1.0 - 0.12 * ly)  # narrow apex
        d = np.maximum(np.abs(lx) - width, np.maximum(-ly, ly - 1.0) * 0.5) * 0.3
        lungs = np.maximum(lungs, cv.coverage(d))
    lungs = ndimage.gaussian_filter(lungs, 1.0)

    heart_cx = rng.uniform(0.1, 0.18)
    heart = cv.ellipse(heart_cx, 0.28, rng.uniform(0.28, 0.34), 0.24, angle=-0.35)
    medi = cv.coverage(np.abs(x - 0.02) - 0.11 - 0.04 * np.clip(y + 0.3, 0, 1))
    medi = ndimage.gaussian_filter(np.maximum(medi * (y > -0.9), heart), 1.5)
    spine = cv.coverage(u - 0.07)
    discs = 0.5 + 0.5 * np.cos(2 * np.pi * (y - rng.uniform(0, 0.1)) / 0.11)
    spine = spine * (0.75 + 0.25 * discs)

    # Ribs: posterior arcs rise from the spine then sweep down laterally; anterior arcs are
    # fainter and run down-medially. Both fade outside the lungs.
    ribs = np.zeros_like(x)
    y0s = np.linspace(-0.82, 0.32, 10) + rng.normal(0, 0.012, 10)
    curv = rng.uniform(0.45, 0.65)
    for y0 in y0s:
        post = y0 - 0.2 * (u - 0.07) + curv * (u - 0.07) ** 2
        hw = 0.02 + 0.008 * (y0 + 0.8)
        ribs = np.maximum(ribs, cv.band(post, hw, -1.0, 1.0) * (u > 0.07) * (u < 0.88))
        ant = y0 + 0.3 + 0.45 * (u - 0.85) - 0.15 * (u - 0.85) ** 2
        ribs = np.maximum(ribs, 0.5 * cv.band(ant, hw * 0.8, -1, 1) * (u > 0.32) * (u < 0.86))
    ribs = ndimage.gaussian_filter(ribs, 0.6) * (0.3 + 0.7 * lungs)
    cy = rng.uniform(-0.74, -0.66)
    clav = cv.band(cy - 0.15 * (u - 0.1) + 0.25 * (u - 0.45) ** 2, 0.028, -1, 1)
    clav = clav * np.clip((u - 0.06) * 30, 0, 1) * (u < 0.78)

    roots = [
        (side * 0.17, 0.05, np.pi / 2 - side * (np.pi / 2 + a))
        for side in (-1, 1)
        for a in (-0.9, -0.3, 0.3, 0.9)
    ]
    vessels = ndimage.gaussian_filter(cv.vessel_tree(roots, 0.16, 0.016, 3), 0.8)
    atten = (
        1.1 * thick
        - 0.6 * lungs * (1 - 0.8 * medi)
        + 0.65 * medi
        + 0.35 * spine * (0.4 + 0.6 * medi)
        + 0.22 * ribs
        + 0.45 * clav
        + 0.2 * vessels * lungs
        + 0.04 * cv.smooth_noise(3.0) * body
    )
    atten = np.clip(atten, 0, None)
    img = 1.0 - np.exp(-rng.uniform(1.2, 1.8) * atten)
    img = img ** rng.uniform(0.8, 1.3) * rng.uniform(0.8, 1.0) + rng.uniform(0.0, 0.08)
    img = img + rng.uniform(0.01, 0.025) * cv.smooth_noise(0.7) + 0.01 * cv.smooth_noise(8.0)
    return img, body > 0.5


# ------------------------------------------------------------------------ CT helpers


def _ct_body(cv: _Canvas, a: float, b: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Body outline (flattened at the back), its subcutaneous fat rim and the muscle wall."""
    rng = cv.rng
    theta = np.arctan2(cv.y, cv.x)
    r = _lumpy_radius(cv, 3, 0.03)(theta)
    yb = np.where(cv.y > 0, cv.y * 1.15, cv.y)  # flatter posterior surface (patient on table)
    rho = np.sqrt((cv.x / a) ** 2 + (yb / b) ** 2) / r
    s = min(a, b)
    fat_t = rng.uniform(0.06, 0.14)
    body = cv.coverage((rho - 1.0) * s)
    wall = cv.coverage((rho - (1.0 - fat_t)) * s)
    cavity = cv.coverage((rho - (1.0 - fat_t - 0.05)) * s)
    return body, wall, cavity


def _vertebra(cv: _Canvas, cy: float, r: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Vertebral body with cortex, posterior arch, spinous process, and spinal canal."""
    x, y = cv.x, cv.y
    body = cv.ellipse(0, cy, r * 1.1, r)
    cortex = body - cv.ellipse(0, cy, r * 0.9, r * 0.8)
    arch = cv.ellipse(0, cy + 1.45 * r, r * 0.95, r * 0.75)
    canal = cv.ellipse(0, cy + 1.45 * r, r * 0.5, r * 0.42)
    spinous = cv.coverage(
        np.maximum(np.abs(x) - r * 0.18, np.maximum(cy + 1.9 * r - y, y - (cy + 3.0 * r)))
    )
    transverse = cv.coverage(np.maximum(np.abs(y - (cy + 1.3 * r)) - r * 0.15, np.abs(x) - r * 1.9))
    bone = np.maximum.reduce([body, arch, spinous, transverse])
    bone = np.clip(bone - canal, 0, 1)
    return bone, cortex, canal


def _ct_table(cv: _Canvas, y_top: float) -> np.ndarray:
    line = y_top + 0.12 * cv.x**2
    return cv.band(line, cv.pix * 0.7, -0.9, 0.9)


def _finish_ct(cv: _Canvas, hu: np.ndarray, window: tuple[float, float], noise_hu: float):
    hu = hu + _ct_noise(cv, noise_hu)
    return _window_ct(hu, *window)


# -------------------------------------------------------------- abdominal CT (kidneys)


def _kidney(cv: _Canvas) -> tuple[np.ndarray, np.ndarray]:
    rng = cv.rng
    x = cv.x
    body, wall, cavity = _ct_body(cv, rng.uniform(0.78, 0.9), rng.uniform(0.55, 0.65))
    fat_hu, soft_hu = rng.uniform(-120, -80), rng.uniform(35, 55)
    hu = -1000 + (fat_hu + 1000) * body
    hu = hu + (soft_hu - fat_hu) * (wall - cavity)  # abdominal wall muscle
    hu = hu * (1 - cavity) + (fat_hu + 20 * cv.smooth_noise(2.0)) * cavity

    def paint(cov: np.ndarray, value) -> None:
        nonlocal hu
        hu = hu * (1 - cov) + value * cov

    vy = rng.uniform(0.22, 0.3)
    for side in (-1, 1):
        paint(cv.ellipse(side * 0.2, vy + 0.2, 0.14, 0.1, side * 0.3) * cavity, soft_hu)  # erector
        paint(cv.ellipse(side * 0.13, vy - 0.02, 0.06, 0.07) * cavity, soft_hu)  # psoas
    liver = cv.ellipse(-0.42, -0.05, rng.uniform(0.32, 0.42), rng.uniform(0.3, 0.4), 0.3)
    liver_hu = rng.uniform(70, 110)
    paint(liver * cavity, liver_hu + 5 * cv.smooth_noise(3.0))
    paint(cv.ellipse(0.5, 0.05, 0.12, 0.18, -0.5) * cavity * (rng.random() < 0.5), liver_hu - 15)

    # Bowel loops in the anterior abdomen: wall, fluid or gas lumen.
    for _ in range(rng.integers(7, 14)):
        bx, by = rng.uniform(-0.35, 0.6), rng.uniform(-0.45, 0.1)
        r = rng.uniform(0.04, 0.1)
        ang = rng.uniform(0, np.pi)
        loop = cv.ellipse(bx, by, r, r * rng.uniform(0.6, 1.0), ang) * cavity * (1 - liver)
        paint(loop, rng.uniform(30, 60))
        lumen = cv.ellipse(bx, by, r * 0.7, r * 0.7 * rng.uniform(0.6, 1.0), ang) * loop
        paint(lumen, -1000 if rng.random() < 0.35 else rng.uniform(0, 40))
        if rng.random() < 0.4:  # gas bubble floating anteriorly
            paint(cv.ellipse(bx, by - r * 0.4, r * 0.3, r * 0.2) * lumen, -1000)

    kidney_any = np.zeros_like(x)
    cortex_hu = rng.uniform(130, 200)
    for side in (-1, 1):
        kx, ky = side * rng.uniform(0.3, 0.38), vy + rng.uniform(-0.08, 0.02)
        ka, kb = rng.uniform(0.09, 0.12), rng.uniform(0.13, 0.17)
        ang = side * rng.uniform(0.3, 0.7)
        kid = cv.ellipse(kx, ky, ka, kb, ang)
        hilum = cv.ellipse(kx - side * ka * 0.9, ky, ka * 0.55, kb * 0.35, ang)
        kid = np.clip(kid - hilum, 0, 1)
        kidney_any = np.maximum(kidney_any, kid)
        paint(kid, cortex_hu)
        # Medullary pyramids: darker lobules inside the cortex ring.
        for k in range(4):
            t = -0.6 + 0.4 * k
            px = kx + np.cos(ang) * (-side * 0.2 * ka) - np.sin(ang) * (t * kb * 0.9)
            py = ky + np.sin(ang) * (-side * 0.2 * ka) + np.cos(ang) * (t * kb * 0.9)
            paint(cv.ellipse(px, py, ka * 0.35, kb * 0.18, ang) * kid, cortex_hu - 60)
        paint(cv.ellipse(kx - side * ka * 0.45, ky, ka * 0.25, kb * 0.3, ang) * kid, -60)

    paint(cv.ellipse(0.06, vy - 0.16, 0.045, 0.045), rng.uniform(150, 250))  # aorta
    paint(cv.ellipse(-0.1, vy - 0.15, 0.05, 0.035), rng.uniform(90, 140))  # IVC
    bone, cortex, canal = _vertebra(cv, vy, rng.uniform(0.085, 0.1))
    paint(bone, 250 + 30 * cv.smooth_noise(1.0))
    paint(cortex, 700)
    paint(canal, 15)
    table = _ct_table(cv, rng.uniform(0.75, 0.85))
    hu = np.maximum(hu, -1000 + 1600 * np.sqrt(table))

    img = _finish_ct(cv, hu, (rng.uniform(30, 60), rng.uniform(350, 450)), rng.uniform(8, 20))
    return img, body > 0.5


# ---------------------------------------------------------------------- thoracic CT


def _lung(cv: _Canvas) -> tuple[np.ndarray, np.ndarray]:
    rng = cv.rng
    x, y = cv.x, cv.y
    body, wall, cavity = _ct_body(cv, rng.uniform(0.82, 0.92), rng.uniform(0.55, 0.65))
    fat_hu, soft_hu = rng.uniform(-120, -80), rng.uniform(35, 55)
    hu = -1000 + (fat_hu + 1000) * body + (soft_hu - fat_hu) * wall

    def paint(cov: np.ndarray, value) -> None:
        nonlocal hu
        hu = hu * (1 - cov) + value * cov

    lungs = np.zeros_like(x)
    for side in (-1, 1):
        lx = side * rng.uniform(0.36, 0.42)
        lungs = np.maximum(
            lungs, cv.ellipse(lx, 0.0, rng.uniform(0.3, 0.36), rng.uniform(0.4, 0.48), side * 0.15)
        )
    lungs = lungs * cavity
    heart = cv.ellipse(rng.uniform(0.04, 0.12), -0.08, rng.uniform(0.2, 0.27), 0.22, -0.3)
    medi = np.maximum(heart, cv.coverage(np.abs(x - 0.02) - 0.13) * (y > -0.35) * (y < 0.45))
    lungs = np.clip(lungs - medi, 0, 1)
    # Vessels: trees branching out of the hila (in-plane runs), plus round cross-sections.
    roots = [
        (side * 0.18, rng.uniform(-0.1, 0.05), (0 if side > 0 else np.pi) + a)
        for side in (-1, 1)
        for a in rng.uniform(-1.3, 1.3, size=4)
    ]
    vessels = 0.8 * cv.vessel_tree(roots, 0.1, 0.007, 3)
    segs = []
    for _ in range(rng.integers(30, 50)):
        px, py = rng.uniform(-0.75, 0.75), rng.uniform(-0.45, 0.45)
        r = rng.uniform(0.003, 0.01) * (1.6 - np.hypot(px, py))
        segs.append((px, py, px + rng.normal(0, r), py + rng.normal(0, r), r))
    segs_arr = np.asarray(segs)
    vessels = np.maximum(vessels, cv.segments(segs_arr[:, :4], segs_arr[:, 4]))
    lung_hu = rng.uniform(-900, -820) + 20 * cv.smooth_noise(3.0)
    paint(lungs, lung_hu + (40 - lung_hu) * vessels)
    paint(medi * cavity, rng.uniform(30, 50) + 5 * cv.smooth_noise(2.0))
    paint(heart * cavity, rng.uniform(40, 120))
    paint(cv.ellipse(0.0, -0.3, 0.05, 0.045), -1000)  # trachea
    for side in (-1, 1):  # airways: dark lumen with a bright wall near the hila
        for _ in range(3):
            ax, ay = side * rng.uniform(0.2, 0.45), rng.uniform(-0.2, 0.2)
            r = rng.uniform(0.012, 0.025)
            paint(cv.ellipse(ax, ay, r * 1.5, r * 1.5) * lungs, 60)
            paint(cv.ellipse(ax, ay, r, r) * lungs, -950)
    vy = rng.uniform(0.3, 0.36)
    paint(cv.ellipse(0.12, vy - 0.1, 0.055, 0.055), rng.uniform(120, 250))  # descending aorta
    paint(cv.ellipse(0.05, -0.25, 0.06, 0.05), rng.uniform(120, 250))  # ascending aorta
    bone, cortex, canal = _vertebra(cv, vy, rng.uniform(0.075, 0.09))
    paint(bone, 300 + 30 * cv.smooth_noise(1.0))
    paint(cortex, 700)
    paint(canal, 15)
    paint(cv.ellipse(0.0, -0.5, 0.08, 0.03), 500)  # sternum
    # Rib cross-sections around the inside of the chest wall.
    ring_a, ring_b = 0.78, 0.52
    for t in np.linspace(0.35, 2 * np.pi - 0.35, 14) + np.pi / 2 + rng.normal(0, 0.05, 14):
        rx, ry = ring_a * np.cos(t), ring_b * np.sin(t) + 0.03
        paint(cv.ellipse(rx, ry, 0.035, 0.02, t) * body, 650)
    table = _ct_table(cv, rng.uniform(0.72, 0.82))
    hu = np.maximum(hu, -1000 + 1600 * np.sqrt(table))
    lung_window = rng.random() < 0.5
    window = (-550, 1100) if lung_window else (rng.uniform(30, 60), rng.uniform(350, 450))
    img = _finish_ct(cv, hu, window, rng.uniform(10, 35))
    return img, body > 0.5


_GENERATORS: dict[str, tuple[Callable[[_Canvas], tuple[np.ndarray, np.ndarray]], float, float]] = {
    # organ: (generator, max rotation in degrees, scale jitter)
    "brain": (_brain, 8.0, 0.08),
    "chest": (_chest, 3.0, 0.05),
    "kidney": (_kidney, 4.0, 0.08),
    "lung": (_lung, 4.0, 0.08),
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
    if organ not in _GENERATORS:
        raise ValueError(f"unknown organ {organ!r}; expected one of {', '.join(ORGAN_NAMES)}")
    if size < 32:
        raise ValueError(f"size {size} is too small; use at least 32 pixels")
    fn, rot, scale = _GENERATORS[organ]
    cv = _Canvas(size, rng, rot, scale)
    img, mask = fn(cv)
    return PhantomSlice(image=_to_uint8(img), tissue_mask=np.asarray(mask, dtype=bool))
