"""Issue #11: the per-image decode budget (bytes, pixels, time) and the DICOM checks made before
any pixel data is inflated or decoded, on real encoded bombs built in memory."""

from __future__ import annotations

import io
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from medfakedet.deadline import time_limit
from medfakedet.decoding import (
    SERVING_LIMITS,
    DecodeLimits,
    DecodeTimeoutError,
    block_reduce,
    reduce_factor,
)
from medfakedet.imaging import (
    TooManyPixelsError,
    TruncatedImageError,
    UnsupportedImageError,
    decode_image,
)

sys.path.insert(0, str(Path(__file__).parent / "integration"))
import hostile_inputs as hostile  # noqa: E402


def test_deflated_dicom_is_refused_before_it_is_inflated() -> None:
    bomb = hostile.dicom_deflate_bomb(200)  # 200 MiB once inflated
    assert len(bomb) < 400_000
    start = time.perf_counter()
    with pytest.raises(UnsupportedImageError, match=r"Deflated .*1\.2\.840\.10008\.1\.2\.1\.99"):
        decode_image(bomb)
    assert time.perf_counter() - start < 1.0


def test_rle_segment_expanding_past_rows_x_columns_is_refused() -> None:
    with pytest.raises(TruncatedImageError, match=r"RLE segment 0 expands beyond .*64x64"):
        decode_image(hostile.dicom_rle_bomb(64, 64, runs=200_000))


def test_jpeg_frame_size_must_match_rows_and_columns() -> None:
    with pytest.raises(TruncatedImageError, match=r"JPEG frame is 4000x4000 .* 64x64"):
        decode_image(hostile.dicom_jpeg_mismatch(64, 64, 4000))


def test_jpeg_declaring_8000_square_is_decoded_at_reduced_scale() -> None:
    bomb = hostile.jpeg_declaring(8000, 8000)
    assert len(bomb) < 2000
    im = decode_image(bomb, SERVING_LIMITS)
    assert im.size == (8000, 8000)  # the uploaded size, for boxes
    assert im.pixels.shape[:2] == (1000, 1000)  # DCT-scaled 1/8: ~4 MB of float32, not 256 MB


def test_png_zero_bomb_at_the_pixel_limit_keeps_a_small_working_copy() -> None:
    im = decode_image(hostile.png_zero_bomb(8000), SERVING_LIMITS)
    assert im.size == (8000, 8000) and max(im.pixels.shape[:2]) <= 1024
    with pytest.raises(TooManyPixelsError, match="9000x9000"):
        decode_image(hostile.png_zero_bomb(9000), SERVING_LIMITS)


def test_decoded_bytes_budget_is_checked_from_the_header() -> None:
    buf = io.BytesIO()
    Image.new("RGB", (300, 300)).save(buf, "PNG")
    limits = DecodeLimits(max_decoded_bytes=300 * 300 * 4 - 1)
    with pytest.raises(TooManyPixelsError, match=r"300x300 pixels at 4 bytes"):
        decode_image(buf.getvalue(), limits)


def test_reduction_keeps_orientation_and_16_bit_scale() -> None:
    arr = np.zeros((1200, 2400), np.uint16)
    arr[:, :1200] = 65535  # left half white
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, "PNG")
    im = decode_image(buf.getvalue(), SERVING_LIMITS)
    assert im.size == (2400, 1200) and im.pixels.shape == (600, 1200, 1)
    assert im.pixels[:, :600].min() == pytest.approx(1.0) and im.pixels[:, 600:].max() == 0.0
    full = decode_image(buf.getvalue())
    reduced = block_reduce(full.pixels, 2)
    np.testing.assert_allclose(im.pixels, reduced, atol=1 / 65535)


def test_time_limit_stops_python_code_with_a_413() -> None:
    start = time.perf_counter()
    expired = pytest.raises(DecodeTimeoutError, match="longer than the 0.2 s limit")
    with expired as err, time_limit(0.2):
        while True:
            sum(range(1000))
    assert err.value.status == 413
    assert time.perf_counter() - start < 2.0
    with time_limit(0.2):  # a block that ends in time leaves no alarm behind
        pass
    time.sleep(0.3)


@pytest.mark.parametrize(
    ("width", "height", "long"),
    [(8192, 8192, False), (4000, 3000, False), (512, 8192, True), (300, 100_000, True)],
)
def test_a_reduced_image_keeps_at_most_4_working_sides_squared_pixels(width, height, long):
    """The batch's memory budget: 8 reduced images of at most 1 M pixels (12 MiB float32 RGB);
    the shorter side stays >= the working side unless the image is very long."""
    k = reduce_factor(width, height, SERVING_LIMITS)
    side = SERVING_LIMITS.working_side
    assert (width // k) * (height // k) <= 4 * side * side
    assert (min(width, height) // k >= side) is not long
