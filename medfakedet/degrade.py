"""Image degradations and encodings: one implementation for building, training and evaluation.

Used by the dataset builder (every written image goes through :func:`encode_image` with a
seeded :class:`EncodeSpec`, so format, JPEG quality, bit depth and size carry no label), by
training augmentation (:class:`Degradation`, drawn from the item's ``torch.Generator``) and by
the robustness table (``training.corruptions``). Tensors are (C, H, W) float in [0, 1].
"""

from __future__ import annotations

import io
import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
import torchvision.transforms.v2.functional as TF
from PIL import Image

from medfakedet.imaging import decode_image

#: Builder encode draw: share of JPEG, then of 16-bit among the PNGs; JPEG quality and
#: resampling-factor ranges (the factor is drawn log-uniformly).
JPEG_SHARE, PNG16_SHARE = 0.5, 0.4
JPEG_QUALITY_RANGE: tuple[int, int] = (50, 100)
SCALE_RANGE: tuple[float, float] = (0.5, 2.0)
#: Training source changes (:class:`Degradation`): gamma (log-uniform) and zoom ranges.
GAMMA_RANGE: tuple[float, float] = (0.5, 2.0)
ZOOM_RANGE: tuple[float, float] = (1.0, 1.4)
#: Window source change: the share of the image's gray range (above the window's floor) that the
#: new window spans, drawn log-uniformly (0.15: a narrow mediastinal-like window).
WINDOW_WIDTH: tuple[float, float] = (0.15, 1.0)
#: Processing source change (X-ray / display processing): unsharp masking of std (pixels at the
#: model size, log-uniform) and gain in these ranges, or a histogram equalisation blended in at a
#: weight in ``EQUALIZE_WEIGHT``.
UNSHARP_SIGMA: tuple[float, float] = (1.0, 6.0)
UNSHARP_GAIN: tuple[float, float] = (0.3, 1.5)
EQUALIZE_WEIGHT: tuple[float, float] = (0.2, 1.0)


def resample(x: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Bilinear (antialiased when shrinking) resize of (C, H, W) to (C, height, width)."""
    if x.shape[-2:] == (height, width):
        return x
    y = F.interpolate(
        x[None], size=(height, width), mode="bilinear", antialias=True, align_corners=False
    )
    return y[0].clamp(0.0, 1.0)


def down_up(x: torch.Tensor, factor: float) -> torch.Tensor:
    """Rescale by ``factor`` (0.5: half size), then back to the original size."""
    h, w = x.shape[-2:]
    small = resample(x, max(8, round(h * factor)), max(8, round(w * factor)))
    return resample(small, h, w)


def gaussian_blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """Gaussian blur of std ``sigma`` pixels (kernel +-3 sigma); ``sigma <= 0``: unchanged."""
    if sigma <= 0:
        return x
    k = 2 * math.ceil(3 * sigma) + 1
    return TF.gaussian_blur(x, [k, k], [sigma, sigma]).clamp(0.0, 1.0)


def within(r: tuple[float, float], t: float) -> float:
    """The point ``t`` (in [0, 1)) of the way through the range ``r``: a uniform draw."""
    return r[0] + (r[1] - r[0]) * t


def log_within(r: tuple[float, float], t: float) -> float:
    """The point ``t`` of the way through ``r`` on a log scale: a log-uniform draw."""
    lo, hi = math.log(r[0]), math.log(r[1])
    return math.exp(lo + (hi - lo) * t)


def unsharp_mask(x: torch.Tensor, sigma: float, gain: float) -> torch.Tensor:
    """``x + gain * (x - blur(x))``, clipped to [0, 1]: edges and local contrast enhanced."""
    return (x + gain * (x - gaussian_blur(x, sigma))).clamp(0.0, 1.0)


def equalize(x: torch.Tensor) -> torch.Tensor:
    """Histogram equalisation of (C, H, W) ``x`` in [0, 1]: each value becomes the share of the
    image's values at or below it (ties share one level), channels together."""
    flat = x.reshape(-1)
    _, inverse, counts = torch.unique(flat, return_inverse=True, return_counts=True)
    cdf = torch.cumsum(counts, 0).to(x.dtype) / flat.numel()
    return cdf[inverse].reshape(x.shape)


def add_noise(x: torch.Tensor, sigma: float, generator: torch.Generator) -> torch.Tensor:
    """Add Gaussian noise of std ``sigma`` drawn from ``generator``, clipped to [0, 1]."""
    return (x + sigma * torch.randn(x.shape, generator=generator)).clamp(0.0, 1.0)


def quantize(x: torch.Tensor | np.ndarray, bits: int = 8) -> np.ndarray:
    """(C, H, W) tensor or HxW array in [0, 1] -> HxW (gray) or HxWx3 uint8 / uint16 array."""
    arr = x.permute(1, 2, 0).numpy() if isinstance(x, torch.Tensor) else np.asarray(x)
    if arr.ndim == 3 and arr.shape[2] == 1:
        arr = arr[:, :, 0]
    top = 65535.0 if bits == 16 else 255.0
    dtype = np.uint16 if bits == 16 else np.uint8
    return np.rint(np.clip(arr.astype(np.float64), 0.0, 1.0) * top).astype(dtype)


def encode_jpeg(x: torch.Tensor | np.ndarray, quality: int) -> bytes:
    """JPEG bytes of an image in [0, 1] (gray or RGB) at ``quality``."""
    buf = io.BytesIO()
    Image.fromarray(quantize(x, 8)).save(buf, format="JPEG", quality=int(quality))
    return buf.getvalue()


def encode_png(x: torch.Tensor | np.ndarray, bits: int = 8) -> bytes:
    """PNG bytes of an image in [0, 1] at 8 or 16 bits (16-bit: gray only)."""
    buf = io.BytesIO()
    Image.fromarray(quantize(x, bits)).save(buf, format="PNG")
    return buf.getvalue()


def jpeg_roundtrip(x: torch.Tensor, quality: int) -> torch.Tensor:
    """Encode as JPEG at ``quality`` and decode with serving's decoder; channels kept."""
    pixels = decode_image(encode_jpeg(x, quality)).pixels
    t = torch.from_numpy(np.ascontiguousarray(pixels.transpose(2, 0, 1)))
    return t.expand(x.shape[0], -1, -1).contiguous() if t.shape[0] != x.shape[0] else t


@dataclass(frozen=True)
class EncodeSpec:
    """How one built image is written: resampled by ``scale``, then JPEG or PNG.

    Attributes:
        scale: resampling factor of the side (1: unchanged).
        fmt: "jpeg" or "png".
        quality: JPEG quality (0 for PNG).
        bits: PNG bit depth, 8 or 16 (8 for JPEG).
    """

    scale: float = 1.0
    fmt: str = "png"
    quality: int = 0
    bits: int = 8

    @property
    def suffix(self) -> str:
        return ".jpg" if self.fmt == "jpeg" else ".png"

    def tag(self) -> str:
        """The manifest entry, e.g. ``jpeg-q73-x1.42`` or ``png16-x0.71``."""
        kind = f"jpeg-q{self.quality}" if self.fmt == "jpeg" else f"png{self.bits}"
        return f"{kind}-x{self.scale:.2f}"


PLAIN_PNG = EncodeSpec()


def draw_encode(rng: np.random.Generator, resize: bool = True) -> EncodeSpec:
    """A random encode: JPEG (quality 50-100) or PNG (8- or 16-bit), resampled 0.5-2x."""
    scale = float(np.exp(rng.uniform(*np.log(SCALE_RANGE)))) if resize else 1.0
    if rng.random() < JPEG_SHARE:
        quality = int(rng.integers(JPEG_QUALITY_RANGE[0], JPEG_QUALITY_RANGE[1] + 1))
        return EncodeSpec(round(scale, 2), "jpeg", quality, 8)
    return EncodeSpec(round(scale, 2), "png", 0, 16 if rng.random() < PNG16_SHARE else 8)


def encode_image(image: np.ndarray, spec: EncodeSpec) -> bytes:
    """The file bytes of a gray uint8 HxW ``image`` written as ``spec`` says."""
    x = torch.from_numpy(np.asarray(image, dtype=np.float32) / np.float32(255.0))[None]
    h, w = x.shape[-2:]
    if spec.scale != 1.0:
        x = resample(x, max(8, round(h * spec.scale)), max(8, round(w * spec.scale)))
    if spec.fmt == "jpeg":
        return encode_jpeg(x, spec.quality)
    return encode_png(x, spec.bits)


@dataclass(frozen=True)
class Degradation:
    """Random training degradations, each applied with its probability (all 0: none).

    Applied in this order: down-up resize (factor log-uniform in ``resize_scale``), blur (std
    uniform in ``blur_sigma`` pixels), noise (std uniform in ``noise_sigma``), JPEG
    recompression (quality uniform in ``jpeg_quality``), the order of a scan being resized,
    smoothed and saved. The source changes (``zoom_p``, ``gamma_p``, ``window_p``,
    ``process_p``: another field of view, display curve, window and processing) come first, in
    that order, when on.
    """

    jpeg_p: float = 0.0
    jpeg_quality: tuple[int, int] = JPEG_QUALITY_RANGE
    blur_p: float = 0.0
    blur_sigma: tuple[float, float] = (0.3, 1.2)
    resize_p: float = 0.0
    resize_scale: tuple[float, float] = SCALE_RANGE
    noise_p: float = 0.0
    noise_sigma: tuple[float, float] = (0.005, 0.03)
    # Source changes (before the degradations above): another display curve (gamma, log-uniform
    # in ``gamma_range``: another CT window or X-ray processing) and another field of view (a
    # crop of 1/z of each side at a random place, z in ``zoom_range``, resized back).
    gamma_p: float = 0.0
    gamma_range: tuple[float, float] = GAMMA_RANGE
    zoom_p: float = 0.0
    zoom_range: tuple[float, float] = ZOOM_RANGE
    # Another intensity window (a CT re-windowed, an X-ray with other processing): a linear
    # stretch of a random gray interval to [0, 1], clipped. Its floor is drawn in the lower half
    # of the image's gray range, its width as a share of the rest (``window_width``).
    window_p: float = 0.0
    window_width: tuple[float, float] = WINDOW_WIDTH
    # Another processing (an X-ray's vendor processing, a web copy's contrast): half the time an
    # unsharp mask (multi-scale contrast enhancement's main step), else a histogram equalisation
    # blended in.
    process_p: float = 0.0
    unsharp_sigma: tuple[float, float] = UNSHARP_SIGMA
    unsharp_gain: tuple[float, float] = UNSHARP_GAIN
    equalize_weight: tuple[float, float] = EQUALIZE_WEIGHT

    def __post_init__(self) -> None:
        problems = [
            f"{name} must be within 0..1, got {p}"
            for name, p in (
                ("jpeg_p", self.jpeg_p),
                ("blur_p", self.blur_p),
                ("resize_p", self.resize_p),
                ("noise_p", self.noise_p),
                ("gamma_p", self.gamma_p),
                ("zoom_p", self.zoom_p),
                ("window_p", self.window_p),
                ("process_p", self.process_p),
            )
            if not 0.0 <= p <= 1.0
        ]
        for name, (lo, hi), floor in (
            ("jpeg_quality", self.jpeg_quality, 1),
            ("blur_sigma", self.blur_sigma, 0.0),
            ("resize_scale", self.resize_scale, 0.1),
            ("noise_sigma", self.noise_sigma, 0.0),
            ("gamma_range", self.gamma_range, 0.1),
            ("zoom_range", self.zoom_range, 1.0),
            ("window_width", self.window_width, 0.01),
            ("unsharp_sigma", self.unsharp_sigma, 0.1),
            ("unsharp_gain", self.unsharp_gain, 0.0),
            ("equalize_weight", self.equalize_weight, 0.0),
        ):
            if not floor <= lo <= hi:
                problems.append(f"{name} must be a range lo <= hi with lo >= {floor}")
        if self.jpeg_quality[1] > 100:
            problems.append("jpeg_quality must stay <= 100")
        if self.window_width[1] > 1.0:
            problems.append("window_width must stay <= 1")
        if self.equalize_weight[1] > 1.0:
            problems.append("equalize_weight must stay <= 1")
        if problems:
            raise ValueError("invalid degradation: " + "; ".join(problems))

    @property
    def active(self) -> bool:
        ps = (self.jpeg_p, self.blur_p, self.resize_p, self.noise_p)
        return max(*ps, self.gamma_p, self.zoom_p, self.window_p, self.process_p) > 0

    def __call__(self, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """Degrade (C, H, W) ``x`` in [0, 1]; every draw comes from ``generator``."""
        # Decisions and parameters are drawn up front, so one op firing never shifts the others
        # (the source changes' draws only when they are on: the other draws stay as they were).
        if max(self.gamma_p, self.zoom_p) > 0:
            x = self._source_change(x, torch.rand(6, generator=generator, dtype=torch.float64))
        if self.window_p > 0:  # its own draws: presets without it keep their random streams
            x = self._window(x, torch.rand(3, generator=generator, dtype=torch.float64).tolist())
        if self.process_p > 0:  # its own draws too
            x = self._process(x, torch.rand(4, generator=generator, dtype=torch.float64).tolist())
        u = torch.rand(8, generator=generator, dtype=torch.float64).tolist()
        if u[0] < self.resize_p:
            x = down_up(x, log_within(self.resize_scale, u[1]))
        if u[2] < self.blur_p:
            x = gaussian_blur(x, within(self.blur_sigma, u[3]))
        if u[4] < self.noise_p:
            x = add_noise(x, within(self.noise_sigma, u[5]), generator)
        if u[6] < self.jpeg_p:
            lo, hi = self.jpeg_quality
            x = jpeg_roundtrip(x, min(hi, lo + int(u[7] * (hi - lo + 1))))
        return x

    def _source_change(self, x: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """Zoom (a random crop resized back) then gamma, as the draws ``v`` (6 in [0, 1)) say."""
        v = v.tolist()
        if v[0] < self.zoom_p:
            h, w = x.shape[-2:]
            z = log_within(self.zoom_range, v[1])
            ch, cw = max(8, round(h / z)), max(8, round(w / z))
            top, left = int(v[2] * (h - ch + 1)), int(v[3] * (w - cw + 1))
            x = resample(x[..., top : top + ch, left : left + cw], h, w)
        if v[4] < self.gamma_p:
            x = x.clamp(0.0, 1.0) ** log_within(self.gamma_range, v[5])
        return x

    def _window(self, x: torch.Tensor, v: list[float]) -> torch.Tensor:
        """Another intensity window, as the draws ``v`` (3 in [0, 1)) say."""
        if v[0] >= self.window_p:
            return x
        x = x.clamp(0.0, 1.0)
        x_min, x_max = float(x.amin()), float(x.amax())
        if x_max - x_min < 1e-3:
            return x
        floor = x_min + (x_max - x_min) * 0.5 * v[1]
        width = (x_max - floor) * log_within(self.window_width, v[2])
        return ((x - floor) / max(width, 1e-3)).clamp(0.0, 1.0)

    def _process(self, x: torch.Tensor, v: list[float]) -> torch.Tensor:
        """Another processing, as the draws ``v`` (4 in [0, 1)) say: an unsharp mask or a
        blended histogram equalisation."""
        if v[0] >= self.process_p:
            return x
        x = x.clamp(0.0, 1.0)
        if v[1] < 0.5:
            sigma = log_within(self.unsharp_sigma, v[2])
            return unsharp_mask(x, sigma, within(self.unsharp_gain, v[3]))
        weight = within(self.equalize_weight, v[3])
        return (1.0 - weight) * x + weight * equalize(x)
