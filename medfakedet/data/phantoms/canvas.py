"""The drawing surface of the phantoms: a jittered anatomy grid with anti-aliased primitives.

Geometry is drawn in normalised anatomy coordinates (x right, y down, both in [-1, 1]) that are
rotated, scaled and shifted a little per sample. Also the shared intensity helpers: 8-bit
display mapping, CT windowing and noise, and lumpy outlines.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from scipy import ndimage


class Canvas:
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


def display_uint8(img: np.ndarray) -> np.ndarray:
    """Display intensities in [0, 1] (clipped) as uint8, rounding halves up."""
    return (np.clip(img, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)


def lumpy_radius(cv: Canvas, harmonics: int, amp: float) -> Callable[[np.ndarray], np.ndarray]:
    """A random smooth radial perturbation r(theta) = 1 + sum_k a_k cos(k theta + phi_k)."""
    amps = cv.rng.normal(0.0, amp, size=harmonics) / np.arange(1, harmonics + 1)
    phases = cv.rng.uniform(0, 2 * np.pi, size=harmonics)

    def radius(theta: np.ndarray) -> np.ndarray:
        r = np.ones_like(theta)
        for k in range(harmonics):
            r += amps[k] * np.cos((k + 2) * theta + phases[k])
        return r

    return radius
