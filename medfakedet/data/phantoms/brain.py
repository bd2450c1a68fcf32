"""Brain MRI slice (T1, T2 or FLAIR contrast): scalp, skull, cortex folding, ventricles.

Intensities are MRI tissue signal in [0, 1] before bias field and Rician noise; the tissue mask
is the parenchyma (no ventricles, away from the cortex edge).
"""

from __future__ import annotations

import numpy as np

from .canvas import Canvas, lumpy_radius

_BRAIN_CONTRASTS = {
    # tissue: background, scalp, skull, marrow, csf, grey, white
    "T1": (0.0, 0.80, 0.06, 0.55, 0.12, 0.45, 0.66),
    "T2": (0.0, 0.55, 0.05, 0.45, 0.95, 0.55, 0.36),
    "FLAIR": (0.0, 0.55, 0.05, 0.35, 0.08, 0.62, 0.46),
}


def brain_slice(cv: Canvas) -> tuple[np.ndarray, np.ndarray]:
    """Brain MRI slice and its parenchyma mask (see the module docstring)."""
    rng = cv.rng
    contrast = ("T1", "T2", "FLAIR")[rng.integers(3)]
    bg, scalp_i, skull_i, marrow_i, csf_i, gm_i, wm_i = _BRAIN_CONTRASTS[contrast]
    gm_i += rng.normal(0, 0.03)
    wm_i += rng.normal(0, 0.03)

    a, b = rng.uniform(0.66, 0.76), rng.uniform(0.82, 0.92)
    x, y = cv.x, cv.y
    theta = np.arctan2(y, x)
    rho = np.sqrt((x / a) ** 2 + (y / b) ** 2) / lumpy_radius(cv, 4, 0.03)(theta)
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
