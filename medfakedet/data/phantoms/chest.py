"""Chest radiograph: torso silhouette, lungs, heart, mediastinum, spine, ribs, clavicles.

Intensities are X-ray attenuation along the beam, shown as 1 - exp(-attenuation); the tissue
mask is the body.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from .canvas import Canvas


def chest_slice(cv: Canvas) -> tuple[np.ndarray, np.ndarray]:
    """Chest radiograph and its body mask (see the module docstring)."""
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
