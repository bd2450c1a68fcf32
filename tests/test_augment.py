"""Degradation augmentation and the builder's encode draw (medfakedet.degrade; issue #10:
format, JPEG quality, bit depth and size must carry no label, and training sees degraded
images)."""

from __future__ import annotations

import io
import math

import numpy as np
import pytest
import torch
from PIL import Image

from medfakedet.degrade import (
    Degradation,
    EncodeSpec,
    add_noise,
    down_up,
    draw_encode,
    encode_image,
    equalize,
    gaussian_blur,
    jpeg_roundtrip,
    resample,
    unsharp_mask,
)
from medfakedet.imaging import decode_image
from medfakedet.preprocess import (
    CLASSIFIER_PREPROCESS,
    LOCALIZER_PREPROCESS,
    eval_transform,
    train_transform,
)
from training.train_localizer import LocalizerConfig
from training.train_synthesis8 import Synthesis8Config

ALL = Degradation(jpeg_p=1.0, blur_p=1.0, resize_p=1.0, noise_p=1.0)


def _scan(size: int = 128) -> torch.Tensor:
    """A smooth gray test image with edges (1, size, size) in [0, 1]."""
    yy, xx = torch.meshgrid(torch.linspace(-1, 1, size), torch.linspace(-1, 1, size), indexing="ij")
    disc = ((xx**2 + yy**2) < 0.6).float() * 0.6 + 0.2
    return (disc + 0.1 * torch.sin(8 * xx)).clamp(0, 1)[None]


@pytest.mark.parametrize(
    ("op", "low", "high"),
    [
        # Mean absolute change on the test image, measured: 0.0020, 0.0088, 0.0118, 0.0092,
        # 0.0050, 0.0080 (noise of std 0.01: 0.01 * sqrt(2 / pi)).
        (lambda x: jpeg_roundtrip(x, 95), 0.001, 0.004),
        (lambda x: jpeg_roundtrip(x, 50), 0.005, 0.015),
        (lambda x: down_up(x, 0.5), 0.006, 0.02),
        (lambda x: gaussian_blur(x, 1.0), 0.005, 0.015),
        (lambda x: down_up(x, 2.0), 0.002, 0.008),
        (lambda x: add_noise(x, 0.01, torch.Generator().manual_seed(0)), 0.0075, 0.0085),
    ],
    ids=["jpeg95", "jpeg50", "down_up_0.5", "blur_1", "up_down_2", "noise_0.01"],
)
def test_each_op_changes_the_image_within_bounds(op, low, high) -> None:
    x = _scan()
    y = op(x)
    assert y.shape == x.shape and y.dtype == torch.float32
    assert float(y.min()) >= 0.0 and float(y.max()) <= 1.0
    change = float((y - x).abs().mean())
    assert low <= change <= high, change
    assert torch.equal(op(x), y)  # deterministic for fixed parameters


def test_stronger_settings_degrade_more() -> None:
    x = _scan()
    err = [float((jpeg_roundtrip(x, q) - x).abs().mean()) for q in (100, 90, 70, 50)]
    assert err == sorted(err) and err[-1] > 2 * err[0]
    blur = [float((gaussian_blur(x, s) - x).abs().mean()) for s in (0.0, 0.5, 1.0, 2.0)]
    assert blur[0] == 0.0 and blur == sorted(blur)


def test_degradation_is_reproducible_with_the_same_generator() -> None:
    x = _scan()
    a = ALL(x, torch.Generator().manual_seed(3))
    b = ALL(x, torch.Generator().manual_seed(3))
    c = ALL(x, torch.Generator().manual_seed(4))
    assert torch.equal(a, b) and not torch.equal(a, c)
    # Measured over 10 seeds: 0.012-0.028; the picture is still the same picture.
    assert 0.008 < float((a - x).abs().mean()) < 0.05
    assert not Degradation().active and Degradation().active is False
    # All probabilities 0: the image passes unchanged.
    assert torch.equal(Degradation()(x, torch.Generator()), x)


def test_degradation_fires_at_its_probability() -> None:
    x = _scan(64)
    half_jpeg = Degradation(jpeg_p=0.5)
    fired = sum(
        not torch.equal(half_jpeg(x, torch.Generator().manual_seed(i)), x) for i in range(200)
    )
    assert 70 <= fired <= 130, fired  # Binomial(200, 0.5): 100 +- 3.5 sd; measured 94


def test_degradation_refuses_bad_settings() -> None:
    with pytest.raises(ValueError, match="jpeg_p must be within 0..1"):
        Degradation(jpeg_p=1.5)
    with pytest.raises(ValueError, match="jpeg_quality must stay <= 100"):
        Degradation(jpeg_quality=(50, 101))
    with pytest.raises(ValueError, match="blur_sigma must be a range"):
        Degradation(blur_sigma=(2.0, 1.0))


def test_train_transform_degrades_reproducibly_and_keeps_the_tail() -> None:
    img = _scan(160).permute(1, 2, 0).numpy()
    tf = train_transform(CLASSIFIER_PREPROCESS, hflip=False, rotation_deg=0.0, degradation=ALL)
    a = tf(img, torch.Generator().manual_seed(5))
    b = tf(img, torch.Generator().manual_seed(5))
    clean = eval_transform(img, CLASSIFIER_PREPROCESS)
    assert torch.equal(a, b) and a.shape == clean.shape == (3, 128, 128)
    assert torch.equal(a[0], a[2])  # degraded in gray, then replicated like the eval tail
    change = float((a - clean).abs().mean()) / 2  # normalised by std 0.5: back to [0, 1] units
    assert 0.006 < change < 0.05, change  # measured over 5 seeds: 0.010-0.021
    # An inactive degradation leaves the paper's transform as it was.
    plain = train_transform(CLASSIFIER_PREPROCESS, degradation=Degradation())
    paper = train_transform(CLASSIFIER_PREPROCESS)
    g1, g2 = torch.Generator().manual_seed(9), torch.Generator().manual_seed(9)
    assert torch.equal(plain(img, g1), paper(img, g2))


def test_config_fields_build_the_degradation_and_are_validated() -> None:
    cfg = Synthesis8Config(aug_jpeg_p=0.5, aug_jpeg_quality=(60, 90), aug_noise_p=0.2)
    d = cfg.degradation()
    assert (d.jpeg_p, d.jpeg_quality, d.noise_p, d.blur_p) == (0.5, (60, 90), 0.2, 0.0)
    assert d.active and not Synthesis8Config().degradation().active  # off by default
    cfg.validate()
    with pytest.raises(ValueError, match="invalid localizer config: .*resize_p must be within"):
        LocalizerConfig(aug_resize_p=2.0).validate()
    # The real-only resample: off by default, its own keys, checked like the others.
    assert not Synthesis8Config().real_degradation().active
    soft = Synthesis8Config(aug_real_resize_p=0.25, aug_real_resize_scale=(0.3, 0.75))
    r = soft.real_degradation()
    assert (r.resize_p, r.resize_scale, r.jpeg_p, r.noise_p) == (0.25, (0.3, 0.75), 0.0, 0.0)
    soft.validate()
    with pytest.raises(ValueError, match="aug_real_resize: .*resize_scale must be a range"):
        Synthesis8Config(aug_real_resize_p=0.2, aug_real_resize_scale=(0.8, 0.3)).validate()


def test_source_changes_gamma_and_zoom() -> None:
    """Another display curve (gamma) and field of view (zoom): exact at fixed parameters,
    drawn from the generator, and the other draws unchanged while they are off."""
    x = _scan()
    g = torch.Generator
    # Fixed parameters: gamma 2 squares the image; zoom 1 and gamma 1 leave it as it was.
    assert torch.allclose(Degradation(gamma_p=1.0, gamma_range=(2.0, 2.0))(x, g()), x**2)
    same = Degradation(gamma_p=1.0, gamma_range=(1.0, 1.0), zoom_p=1.0, zoom_range=(1.0, 1.0))
    assert torch.allclose(same(x, g()), x)
    # Zoom 2: a quarter of the image (half of each side) resized back, placed by the draw.
    zoomed = Degradation(zoom_p=1.0, zoom_range=(2.0, 2.0))
    a, b = zoomed(x, g().manual_seed(1)), zoomed(x, g().manual_seed(2))
    assert a.shape == x.shape and not torch.equal(a, b)
    assert torch.equal(a, zoomed(x, g().manual_seed(1)))
    v = torch.rand(6, generator=g().manual_seed(1), dtype=torch.float64).tolist()
    top, left = int(v[2] * 65), int(v[3] * 65)  # the crop's place: draws 2 and 3
    assert torch.equal(a, resample(x[..., top : top + 64, left : left + 64], 128, 128))
    # The central disc fills more of a zoomed image: measured 0.46 -> 0.81 and 0.97 (seeds 1, 2).
    bright = [float((im > 0.5).float().mean()) for im in (x, a, b)]
    assert bright[0] < 0.5 and min(bright[1:]) > 0.75
    # Off (p 0, the default): the other degradations draw exactly as before.
    old, new = Degradation(jpeg_p=0.5, noise_p=1.0), Degradation(jpeg_p=0.5, noise_p=1.0, gamma_p=0)
    assert torch.equal(old(x, g().manual_seed(7)), new(x, g().manual_seed(7)))
    assert Degradation(zoom_p=0.1).active and Degradation(gamma_p=0.1).active
    with pytest.raises(ValueError, match="gamma_p must be within 0..1"):
        Degradation(gamma_p=1.5)
    with pytest.raises(ValueError, match="zoom_range must be a range lo <= hi with lo >= 1.0"):
        Degradation(zoom_range=(0.8, 1.2))
    cfg = Synthesis8Config(aug_gamma_p=0.3, aug_zoom_p=0.2, aug_zoom_range=(1.0, 1.3))
    d = cfg.degradation()
    assert (d.gamma_p, d.zoom_p, d.zoom_range) == (0.3, 0.2, (1.0, 1.3)) and d.active
    with pytest.raises(ValueError, match="aug_zoom_p must be 0 for the localizer"):
        LocalizerConfig(aug_zoom_p=0.2).validate()


def test_encode_draw_is_deterministic_and_covers_the_ranges() -> None:
    specs = [draw_encode(np.random.default_rng(i)) for i in range(400)]
    assert specs == [draw_encode(np.random.default_rng(i)) for i in range(400)]
    fmts = {(s.fmt, s.bits) for s in specs}
    assert fmts == {("jpeg", 8), ("png", 8), ("png", 16)}
    jpeg_share = sum(s.fmt == "jpeg" for s in specs) / len(specs)
    assert 0.4 < jpeg_share < 0.6  # measured 0.44
    qualities = [s.quality for s in specs if s.fmt == "jpeg"]
    assert min(qualities) == 50 and max(qualities) == 100  # both ends of 50-100 drawn
    scales = [s.scale for s in specs]
    assert 0.5 <= min(scales) < 0.55 and 1.9 < max(scales) <= 2.0
    # Log-uniform: as many shrunk as enlarged.
    assert 0.4 < np.mean(np.array(scales) < 1.0) < 0.6
    assert {draw_encode(np.random.default_rng(i), resize=False).scale for i in range(50)} == {1.0}


@pytest.mark.parametrize(
    ("spec", "fmt", "mode", "side"),
    [
        (EncodeSpec(0.5, "jpeg", 60, 8), "JPEG", "L", 64),
        (EncodeSpec(1.5, "png", 0, 8), "PNG", "L", 192),
        (EncodeSpec(2.0, "png", 0, 16), "PNG", "I;16", 256),
    ],
)
def test_encoded_files_decode_to_the_same_picture(spec, fmt, mode, side) -> None:
    image = np.rint(_scan()[0].numpy() * 255).astype(np.uint8)
    data = encode_image(image, spec)
    with Image.open(io.BytesIO(data)) as im:
        assert (im.format, im.mode, im.size) == (fmt, mode, (side, side))
    back = eval_transform(decode_image(data).pixels, LOCALIZER_PREPROCESS)[0].numpy()
    # Squashed back to 128 px: measured 0.017 (0.5x, q60), 0.005 (1.5x), 0.005 (2x).
    assert float(np.abs(back - image / 255.0).mean()) < 0.025
    assert spec.suffix == (".jpg" if fmt == "JPEG" else ".png")


def test_sixteen_bit_png_keeps_more_than_eight_bits() -> None:
    ramp = np.tile(np.arange(256, dtype=np.uint8), (16, 1))
    data = encode_image(ramp, EncodeSpec(1.5, "png", 0, 16))
    pixels = decode_image(data).pixels
    levels = np.unique(np.rint(pixels * 65535))
    # The resampled values between the 8-bit steps are kept: measured 384 levels (8-bit: 256).
    assert len(levels) > 300


def test_source_change_window() -> None:
    """Another intensity window: a linear stretch of a gray interval, clipped, drawn from the
    generator after the other source changes, which keep their draws."""
    x = _scan()
    g = torch.Generator
    # Full width with its floor at the image's minimum: a min-max stretch.
    v = torch.rand(3, generator=g().manual_seed(3), dtype=torch.float64).tolist()
    full = Degradation(window_p=1.0, window_width=(1.0, 1.0))(x, g().manual_seed(3))
    floor = float(x.amin()) + float(x.amax() - x.amin()) * 0.5 * v[1]
    assert torch.allclose(full, ((x - floor) / (float(x.amax()) - floor)).clamp(0, 1))
    # A narrow window: most grays end at 0 or 1, the order of the others is kept.
    narrow = Degradation(window_p=1.0, window_width=(0.15, 0.15))(x, g().manual_seed(4))
    assert float(((narrow == 0) | (narrow == 1)).float().mean()) > 0.5
    order = torch.argsort(x.flatten())
    assert bool((narrow.flatten()[order].diff() >= 0).all())  # monotone: grays keep their order
    # Off (the default): presets with gamma and zoom draw exactly as before.
    src = Degradation(gamma_p=0.5, zoom_p=0.5, noise_p=1.0)
    off = Degradation(gamma_p=0.5, zoom_p=0.5, noise_p=1.0, window_p=0.0)
    assert torch.equal(src(x, g().manual_seed(5)), off(x, g().manual_seed(5)))
    assert Degradation(window_p=0.1).active
    with pytest.raises(ValueError, match="window_width must stay <= 1"):
        Degradation(window_width=(0.5, 1.5))
    d = Synthesis8Config(aug_window_p=0.3, aug_window_width=(0.2, 0.9)).degradation()
    assert (d.window_p, d.window_width) == (0.3, (0.2, 0.9))


def test_equalize_and_unsharp_mask() -> None:
    """Equalisation maps each gray to the share of the image at or below it; the unsharp mask
    raises local contrast at an edge and leaves a flat image alone."""
    x = torch.tensor([[[0.1, 0.1, 0.5, 0.9]]])
    assert torch.allclose(equalize(x), torch.tensor([[[0.5, 0.5, 0.75, 1.0]]]))
    ramp = _scan()
    eq = equalize(ramp)
    order = torch.argsort(ramp.flatten())
    assert bool((eq.flatten()[order].diff() >= 0).all())  # grays keep their order
    counts = torch.histc(eq, bins=4, min=0.0, max=1.0)  # about flat: a quarter per bin
    assert float(counts.min()) > 0.15 * eq.numel()
    flat = torch.full((1, 32, 32), 0.4)
    assert torch.allclose(unsharp_mask(flat, 2.0, 1.0), flat)
    step = torch.zeros(1, 32, 32)
    step[..., 16:] = 0.6
    sharp = unsharp_mask(step + 0.2, 2.0, 1.0)
    # Overshoot on both sides of the edge (the dark side darker, the bright side brighter).
    assert float(sharp[0, 0, 15]) < 0.2 - 0.05 and float(sharp[0, 0, 16]) > 0.8 + 0.05


def test_source_change_processing() -> None:
    """Another processing: half the draws an unsharp mask, half a blended equalisation, drawn
    after the other source changes, which keep their draws; off, presets draw as before."""
    x = _scan()
    g = torch.Generator
    on = Degradation(process_p=1.0)
    kinds = set()
    for seed in range(12):
        v = torch.rand(4, generator=g().manual_seed(seed), dtype=torch.float64).tolist()
        out = on(x, g().manual_seed(seed))
        assert out.shape == x.shape and 0.0 <= float(out.min()) <= float(out.max()) <= 1.0
        if v[1] < 0.5:
            sigma = math.exp(math.log(1.0) + (math.log(6.0) - math.log(1.0)) * v[2])
            gain = 0.3 + 1.2 * v[3]
            assert torch.allclose(out, unsharp_mask(x, sigma, gain))
            kinds.add("unsharp")
        else:
            w = 0.2 + 0.8 * v[3]
            assert torch.allclose(out, (1 - w) * x + w * equalize(x))
            kinds.add("equalize")
    assert kinds == {"unsharp", "equalize"}
    src = Degradation(gamma_p=0.5, zoom_p=0.5, window_p=0.3, noise_p=1.0)
    off = Degradation(gamma_p=0.5, zoom_p=0.5, window_p=0.3, noise_p=1.0, process_p=0.0)
    assert torch.equal(src(x, g().manual_seed(5)), off(x, g().manual_seed(5)))
    assert Degradation(process_p=0.1).active and not Degradation().active
    with pytest.raises(ValueError, match="process_p must be within 0..1"):
        Degradation(process_p=1.5)
    with pytest.raises(ValueError, match="equalize_weight must stay <= 1"):
        Degradation(equalize_weight=(0.5, 1.5))
    d = Synthesis8Config(aug_process_p=0.3, aug_unsharp_sigma=(2.0, 3.0)).degradation()
    assert (d.process_p, d.unsharp_sigma, d.unsharp_gain) == (0.3, (2.0, 3.0), (0.3, 1.5))
