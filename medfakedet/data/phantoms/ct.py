"""Axial CT slices: abdomen at kidney level and thorax, on one torso-painting helper.

Intensities are Hounsfield units (air -1000, fat about -100, soft tissue 40, bone several
hundred), painted layer by layer, plus correlated reconstruction noise, then windowed for
display as a radiologist would (soft tissue or lung window).
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from .canvas import Canvas, lumpy_radius


class TorsoCT:
    """A torso slice in Hounsfield units, painted layer by layer.

    The constructor draws the body outline (flattened at the back, where the patient lies on
    the table), its subcutaneous fat rim and the muscle wall, and fills the body with fat.

    Attributes:
        body, wall, cavity: coverage maps of the body, the inside of the fat rim and the inside
            of the muscle wall.
        fat_hu, soft_hu: this patient's fat and soft-tissue values.
        hu: the slice so far.
    """

    def __init__(self, cv: Canvas, a: float, b: float) -> None:
        self.cv = cv
        rng = cv.rng
        theta = np.arctan2(cv.y, cv.x)
        r = lumpy_radius(cv, 3, 0.03)(theta)
        yb = np.where(cv.y > 0, cv.y * 1.15, cv.y)  # flatter posterior surface
        rho = np.sqrt((cv.x / a) ** 2 + (yb / b) ** 2) / r
        s = min(a, b)
        fat_t = rng.uniform(0.06, 0.14)
        self.body = cv.coverage((rho - 1.0) * s)
        self.wall = cv.coverage((rho - (1.0 - fat_t)) * s)
        self.cavity = cv.coverage((rho - (1.0 - fat_t - 0.05)) * s)
        self.fat_hu, self.soft_hu = rng.uniform(-120, -80), rng.uniform(35, 55)
        self.hu = -1000 + (self.fat_hu + 1000) * self.body

    def paint(self, cov: np.ndarray, value: float | np.ndarray) -> None:
        """Blend ``value`` over the slice where ``cov`` (coverage in [0, 1]) is set."""
        self.hu = self.hu * (1 - cov) + value * cov

    def spine(self, cy: float, r: float, bone_hu: float) -> None:
        """Paint a vertebra of radius ``r`` at height ``cy``: textured bone, cortex, canal."""
        bone, cortex, canal = vertebra(self.cv, cy, r)
        self.paint(bone, bone_hu + 30 * self.cv.smooth_noise(1.0))
        self.paint(cortex, 700)
        self.paint(canal, 15)

    def table(self, y_top: float) -> None:
        """Add the curved scanner table below the patient."""
        line = y_top + 0.12 * self.cv.x**2
        table = self.cv.band(line, self.cv.pix * 0.7, -0.9, 0.9)
        self.hu = np.maximum(self.hu, -1000 + 1600 * np.sqrt(table))

    def windowed(self, window: tuple[float, float], noise_hu: float) -> np.ndarray:
        """The slice plus reconstruction noise, mapped through (level, width) to [0, 1]."""
        # Slightly correlated noise, like reconstructed CT.
        n = ndimage.gaussian_filter(self.cv.rng.standard_normal((self.cv.size, self.cv.size)), 0.6)
        hu = self.hu + (n / (n.std() + 1e-6) * noise_hu).astype(np.float32)
        level, width = window
        return (hu - (level - width / 2.0)) / width


def vertebra(cv: Canvas, cy: float, r: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
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


def kidney_slice(cv: Canvas) -> tuple[np.ndarray, np.ndarray]:
    """Abdominal CT at kidney level (soft-tissue window); the tissue mask is the body."""
    rng = cv.rng
    ct = TorsoCT(cv, rng.uniform(0.78, 0.9), rng.uniform(0.55, 0.65))
    cavity, fat_hu, soft_hu, paint = ct.cavity, ct.fat_hu, ct.soft_hu, ct.paint
    ct.hu = ct.hu + (soft_hu - fat_hu) * (ct.wall - cavity)  # abdominal wall muscle
    paint(cavity, fat_hu + 20 * cv.smooth_noise(2.0))  # visceral fat

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

    cortex_hu = rng.uniform(130, 200)
    for side in (-1, 1):
        kx, ky = side * rng.uniform(0.3, 0.38), vy + rng.uniform(-0.08, 0.02)
        ka, kb = rng.uniform(0.09, 0.12), rng.uniform(0.13, 0.17)
        ang = side * rng.uniform(0.3, 0.7)
        kid = cv.ellipse(kx, ky, ka, kb, ang)
        hilum = cv.ellipse(kx - side * ka * 0.9, ky, ka * 0.55, kb * 0.35, ang)
        kid = np.clip(kid - hilum, 0, 1)
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
    ct.spine(vy, rng.uniform(0.085, 0.1), 250)
    ct.table(rng.uniform(0.75, 0.85))
    img = ct.windowed((rng.uniform(30, 60), rng.uniform(350, 450)), rng.uniform(8, 20))
    return img, ct.body > 0.5


def lung_slice(cv: Canvas) -> tuple[np.ndarray, np.ndarray]:
    """Thoracic CT (lung or soft-tissue window); the tissue mask is the body."""
    rng = cv.rng
    x, y = cv.x, cv.y
    ct = TorsoCT(cv, rng.uniform(0.82, 0.92), rng.uniform(0.55, 0.65))
    body, cavity, paint = ct.body, ct.cavity, ct.paint
    ct.hu = ct.hu + (ct.soft_hu - ct.fat_hu) * ct.wall  # chest wall muscle

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
    ct.spine(vy, rng.uniform(0.075, 0.09), 300)
    paint(cv.ellipse(0.0, -0.5, 0.08, 0.03), 500)  # sternum
    # Rib cross-sections around the inside of the chest wall.
    ring_a, ring_b = 0.78, 0.52
    for t in np.linspace(0.35, 2 * np.pi - 0.35, 14) + np.pi / 2 + rng.normal(0, 0.05, 14):
        rx, ry = ring_a * np.cos(t), ring_b * np.sin(t) + 0.03
        paint(cv.ellipse(rx, ry, 0.035, 0.02, t) * body, 650)
    ct.table(rng.uniform(0.72, 0.82))
    lung_window = rng.random() < 0.5
    window = (-550, 1100) if lung_window else (rng.uniform(30, 60), rng.uniform(350, 450))
    img = ct.windowed(window, rng.uniform(10, 35))
    return img, body > 0.5
