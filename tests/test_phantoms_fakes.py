"""Procedural phantoms and the fake synthesizers: shapes, determinism, plausible statistics."""

from __future__ import annotations

import math
import tracemalloc

import numpy as np
import pytest
import torch
from scipy import ndimage

from medfakedet.data.fakes import (
    SYNTHESIZERS,
    DiffusionResynthSynthesizer,
    UpsamplerSynthesizer,
    VAESynthesizer,
    make_fakes,
)
from medfakedet.data.phantoms import ORGAN_NAMES, PhantomSlice, generate_slice
from medfakedet.data.phantoms.canvas import Canvas


@pytest.fixture(autouse=True)
def _one_torch_thread():
    # Determinism of CPU float math holds per thread count; one thread is also fastest when
    # other jobs share the cores.
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _slices(organ: str, n: int, seed: int, size: int = 128) -> list[PhantomSlice]:
    rng = np.random.default_rng(seed)
    return [generate_slice(organ, rng, size) for _ in range(n)]


def _region(img: np.ndarray, cx: float, cy: float, r: float = 0.06) -> float:
    """Mean of a small square at normalised coordinates (x right, y down, in [-1, 1])."""
    h, w = img.shape
    col, row, half = int((cx + 1) / 2 * w), int((cy + 1) / 2 * h), max(1, int(r / 2 * w))
    return float(img[row - half : row + half, col - half : col + half].mean())


def _corners(img: np.ndarray, k: int = 8) -> float:
    return float(np.mean([img[:k, :k], img[:k, -k:], img[-k:, :k], img[-k:, -k:]]))


@pytest.mark.parametrize("organ", ORGAN_NAMES)
def test_slice_shape_dtype_and_determinism(organ: str) -> None:
    a = generate_slice(organ, np.random.default_rng(7), 96)
    b = generate_slice(organ, np.random.default_rng(7), 96)
    c = generate_slice(organ, np.random.default_rng(8), 96)
    assert a.image.shape == (96, 96) and a.image.dtype == np.uint8
    assert a.tissue_mask.shape == (96, 96) and a.tissue_mask.dtype == np.bool_
    np.testing.assert_array_equal(a.image, b.image)
    np.testing.assert_array_equal(a.tissue_mask, b.tissue_mask)
    assert np.abs(a.image.astype(int) - c.image.astype(int)).mean() > 3.0
    assert a.image.std() > 20.0  # not constant
    assert 0.1 < a.tissue_mask.mean() < 0.98


def test_unknown_organ_and_tiny_size_are_rejected() -> None:
    with pytest.raises(ValueError, match="brain, chest, kidney, lung"):
        generate_slice("liver", np.random.default_rng(0))
    with pytest.raises(ValueError, match="at least 32"):
        generate_slice("brain", np.random.default_rng(0), size=16)


def test_brain_dark_background_bright_head_mask_inside_head() -> None:
    for s in _slices("brain", 12, seed=1):
        img = s.image.astype(float)
        assert _corners(img) < 25.0
        assert img[s.tissue_mask].mean() > _corners(img) + 40.0
        # Parenchyma stays away from the image border (skull and scalp surround it).
        assert not s.tissue_mask[:10].any() and not s.tissue_mask[-10:].any()
        assert 0.15 < s.tissue_mask.mean() < 0.5


def test_chest_lungs_darker_than_mediastinum_and_abdomen() -> None:
    for s in _slices("chest", 12, seed=2):
        img = s.image.astype(float)
        lungs = (_region(img, -0.45, -0.1) + _region(img, 0.45, -0.1)) / 2
        assert _region(img, 0.0, 0.2) > lungs + 25.0  # mediastinum / spine
        assert _region(img, 0.0, 0.85) > lungs + 25.0  # below the diaphragm
        assert s.tissue_mask.mean() > 0.75  # the torso fills a radiograph


def test_kidney_ct_black_outside_bright_spine_soft_tissue_inside() -> None:
    for s in _slices("kidney", 12, seed=3):
        img = s.image.astype(float)
        assert _corners(img) < 20.0
        assert img[~s.tissue_mask].mean() < 15.0
        assert 60.0 < img[s.tissue_mask].mean() < 200.0
        assert (img[s.tissue_mask] > 240).mean() > 0.005  # bone
        assert 0.2 < s.tissue_mask.mean() < 0.6


def test_lung_ct_lungs_darker_than_mediastinum() -> None:
    for s in _slices("lung", 12, seed=4):
        img = s.image.astype(float)
        assert _corners(img) < 45.0
        lungs = (_region(img, -0.5, 0.0) + _region(img, 0.5, 0.0)) / 2
        assert _region(img, 0.05, -0.05) > lungs + 60.0
        assert 0.2 < s.tissue_mask.mean() < 0.65


def _cost(organ: str, size: int, seed: int, monkeypatch: pytest.MonkeyPatch) -> dict[str, float]:
    """What one slice costs, counted rather than timed: blurs, drawn primitives, memory."""
    blurs: list[tuple[int, float]] = []
    windows: list[int] = []
    gaussian, window = ndimage.gaussian_filter, Canvas.window

    def counting_gaussian(image, sigma, *args, **kwargs):
        blurs.append((np.asarray(image).size, float(sigma)))
        return gaussian(image, sigma, *args, **kwargs)

    def counting_window(self, *args):
        rows, cols = window(self, *args)
        windows.append((rows.stop - rows.start) * (cols.stop - cols.start))
        return rows, cols

    monkeypatch.setattr(ndimage, "gaussian_filter", counting_gaussian)
    monkeypatch.setattr(Canvas, "window", counting_window)
    tracemalloc.start()
    try:
        generate_slice(organ, np.random.default_rng(seed), size)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    monkeypatch.undo()
    pixels = size * size
    return {
        "max_sigma": max(s for _, s in blurs),
        # scipy's kernel has 2 * round(4 sigma) + 1 taps per axis, two axes.
        "blur_taps_per_px": sum(n * 2 * (2 * int(4 * s + 0.5) + 1) for n, s in blurs) / pixels,
        "primitives": len(windows),
        "drawn_px_per_px": sum(windows) / pixels,
        "peak_bytes_per_px": peak / pixels,
    }


@pytest.mark.parametrize("organ", ORGAN_NAMES)
def test_phantom_cost_is_bounded_and_linear_in_pixels(
    organ: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Generation stays cheap (a few ms at 128 px), checked by counting work, not by a clock.

    Wide blurs run on a coarse grid (Canvas.smooth_noise), shapes are drawn only in their
    bounding windows, and the number of shapes is capped whatever the image size: so the work
    per pixel is bounded, and no larger at 192 px than at 96 px. A full-resolution wide blur,
    a shape drawn over the whole image, or a growing loop of shapes fails one of these.
    """
    small, large = (_cost(organ, size, 0, monkeypatch) for size in (96, 192))
    for cost in (small, large):
        assert cost["max_sigma"] < 6.0, cost
        assert cost["blur_taps_per_px"] < 300, cost
        assert cost["primitives"] <= 250, cost
        assert cost["drawn_px_per_px"] < 5.0, cost
        assert cost["peak_bytes_per_px"] < 200, cost  # about 50 float32 planes
    assert large["blur_taps_per_px"] == pytest.approx(small["blur_taps_per_px"], rel=0.01)
    assert large["drawn_px_per_px"] <= small["drawn_px_per_px"]
    assert large["peak_bytes_per_px"] <= small["peak_bytes_per_px"] * 1.05


# ------------------------------------------------------------------------------ fakes

_TINY = {
    "vae": lambda: VAESynthesizer(max_steps=15),
    "diffusion_resynth": lambda: DiffusionResynthSynthesizer(max_steps=10),
    "upsample": lambda: UpsamplerSynthesizer(max_steps=10),
}


@pytest.fixture(scope="module")
def brain_reals() -> list[np.ndarray]:
    return [s.image for s in _slices("brain", 16, seed=11, size=64)]


def _fit_sample(name: str, reals: list[np.ndarray], seed: int, n: int = 4) -> list[np.ndarray]:
    synth = _TINY[name]()
    # Budget far above what 10-15 steps need, so the step cap (deterministic) ends training.
    synth.fit(reals, np.random.default_rng(seed), time_budget_s=60.0)
    assert synth.steps_trained == synth.max_steps
    return synth.sample(n, np.random.default_rng(seed + 1))


def test_registry_names() -> None:
    # The names are the manifest's "approach" values: renaming one changes the datasets.
    assert set(SYNTHESIZERS) == {"vae", "diffusion_resynth", "upsample", "gan", "decoder_resynth"}


@pytest.mark.parametrize("name", sorted(_TINY))
def test_synthesizer_fit_sample_shape_determinism_and_novelty(
    name: str, brain_reals: list[np.ndarray]
) -> None:
    a = _fit_sample(name, brain_reals, seed=5)
    b = _fit_sample(name, brain_reals, seed=5)
    c = _fit_sample(name, brain_reals, seed=6)
    assert len(a) == 4
    for img in a:
        assert img.shape == (64, 64) and img.dtype == np.uint8
        assert img.std() > 10.0
    for x, y in zip(a, b, strict=True):
        np.testing.assert_array_equal(x, y)
    assert any(not np.array_equal(x, y) for x, y in zip(a, c, strict=True))
    reals = np.stack(brain_reals).astype(float)
    for img in a:
        # Not a copy of any real: mean absolute difference to the nearest real.
        nearest = np.abs(reals - img.astype(float)).mean(axis=(1, 2)).min()
        assert nearest > 3.0
        # Histogram-matched to a real: global brightness stays within the reals' range.
        assert reals.mean(axis=(1, 2)).min() - 3 <= img.mean() <= reals.mean(axis=(1, 2)).max() + 3


def test_fakes_take_the_reals_most_common_shape() -> None:
    reals = [s.image for s in _slices("kidney", 5, seed=3, size=48)]
    reals.append(generate_slice("kidney", np.random.default_rng(0), 80).image)
    synth = UpsamplerSynthesizer(max_steps=2)
    synth.fit(reals, np.random.default_rng(0), time_budget_s=30.0)
    assert [f.shape for f in synth.sample(2, np.random.default_rng(1))] == [(48, 48)] * 2


def test_sample_before_fit_and_bad_input_raise() -> None:
    with pytest.raises(RuntimeError, match="before fit"):
        VAESynthesizer().sample(1, np.random.default_rng(0))
    with pytest.raises(ValueError, match="at least one real"):
        VAESynthesizer().fit([], np.random.default_rng(0), 1.0)
    with pytest.raises(ValueError, match="2-D grayscale"):
        UpsamplerSynthesizer().fit([np.zeros((8, 8, 3), np.uint8)], np.random.default_rng(0), 1.0)


def test_make_fakes_round_robin(
    brain_reals: list[np.ndarray], monkeypatch: pytest.MonkeyPatch
) -> None:
    # Step caps, not a time budget, end training: the fakes do not depend on machine load.
    for name, tiny in _TINY.items():
        monkeypatch.setitem(SYNTHESIZERS, name, tiny)
    three = ("vae", "diffusion_resynth", "upsample")  # equal shares: round-robin
    out = make_fakes("brain", brain_reals, 7, np.random.default_rng(0), three, math.inf)
    again = make_fakes("brain", brain_reals, 7, np.random.default_rng(0), three, math.inf)
    for (image, name, source), (image2, name2, source2) in zip(out, again, strict=True):
        assert np.array_equal(image, image2) and (name, source) == (name2, source2)
    assert [name for _, name, _ in out] == [
        "vae",
        "diffusion_resynth",
        "upsample",
        "vae",
        "diffusion_resynth",
        "upsample",
        "vae",
    ]
    assert all(img.shape == (64, 64) and img.dtype == np.uint8 for img, _, _ in out)
    assert all(0 <= src < len(brain_reals) for _, _, src in out)
    two = make_fakes(
        "brain", brain_reals, 2, np.random.default_rng(0), ("upsample",), time_budget_s=math.inf
    )
    assert [name for _, name, _ in two] == ["upsample", "upsample"]
    # The upsampler regenerates its source real: the reported source is the closest real.
    reals = np.stack(brain_reals).astype(float)
    for img, _, src in two:
        assert np.abs(reals - img.astype(float)).mean(axis=(1, 2)).argmin() == src
    with pytest.raises(ValueError, match="choose from vae, diffusion_resynth, upsample, gan"):
        make_fakes("brain", brain_reals, 2, np.random.default_rng(0), ("stylegan",))
