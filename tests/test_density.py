"""Density maps -> boxes, mask -> density, box scaling, IoU, matching and YOLO labels."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from medfakedet.density import (
    REGION_FEATURES,
    Box,
    RegionScorer,
    box_iou,
    boxes_to_yolo,
    density_from_uint8,
    density_regions,
    density_to_boxes,
    density_to_png_uint8,
    mask_to_boxes,
    mask_to_density,
    match_boxes,
    presence_score,
    scale_boxes,
    scored_boxes,
    yolo_to_boxes,
)


def _coords(box: Box) -> tuple[float, float, float, float]:
    return (box.x1, box.y1, box.x2, box.y2)


def _ellipse(shape: tuple[int, int], cy: float, cx: float, ry: float, rx: float) -> np.ndarray:
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    return ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1.0


# --------------------------------------------------------------------------------------------
# density_to_boxes


def test_two_separated_rectangles_give_exactly_their_boxes_sorted_by_score() -> None:
    density = np.zeros((64, 64), dtype=np.float32)
    density[5:15, 10:30] = 0.6  # rows 5..14, cols 10..29
    density[40:50, 35:60] = 0.9
    density[42, 40] = 0.95  # the score is the maximum inside the region
    boxes = density_to_boxes(density, threshold=0.28, min_area=20)
    assert [_coords(b) for b in boxes] == [(35, 40, 60, 50), (10, 5, 30, 15)]
    assert [b.score for b in boxes] == pytest.approx([0.95, 0.6])
    assert boxes[0].width == 25 and boxes[0].height == 10 and boxes[0].area == 250


def test_min_area_counts_pixels_and_drops_smaller_regions() -> None:
    density = np.zeros((32, 32))
    density[2:6, 2:6] = 0.8  # 16 pixels: dropped at min_area 20
    density[20:24, 20:25] = 0.8  # 20 pixels: kept (area >= min_area)
    boxes = density_to_boxes(density, 0.28, min_area=20)
    assert [_coords(b) for b in boxes] == [(20, 20, 25, 24)]
    assert len(density_to_boxes(density, 0.28, min_area=0)) == 2
    assert len(density_to_boxes(density, 0.28, min_area=21)) == 0


def test_regions_are_eight_connected() -> None:
    density = np.zeros((10, 10))
    density[2:4, 2:4] = 1.0
    density[4:6, 4:6] = 1.0  # touches the first block only at a corner
    assert [_coords(b) for b in density_to_boxes(density, 0.5, 1)] == [(2, 2, 6, 6)]


def test_weak_blob_below_threshold_gives_no_box() -> None:
    yy, xx = np.mgrid[:64, :64]
    blob = 0.2 * np.exp(-((yy - 30) ** 2 + (xx - 30) ** 2) / (2 * 6.0**2))
    assert density_to_boxes(blob, 0.28, 20) == []
    assert presence_score(blob) == pytest.approx(0.2)
    # The same blob at full strength is found.
    assert len(density_to_boxes(blob / 0.2, 0.28, 20)) == 1


def test_noise_on_untouched_image_gives_no_box_on_the_raw_map() -> None:
    noise = np.random.default_rng(0).uniform(0.0, 0.1, size=(128, 128)).astype(np.float32)
    assert presence_score(noise) < 0.28
    assert density_to_boxes(noise, 0.28, 20) == []
    # The original divided the map by its own maximum first: the same noise then gives boxes.
    normalised = noise / noise.max()
    assert len(density_to_boxes(normalised, 0.28, 20)) > 0


def test_min_peak_keeps_only_regions_whose_peak_reaches_it() -> None:
    """Hysteresis: extent at ``threshold``, kept when the region's own peak reaches min_peak."""
    yy, xx = np.mgrid[:64, :64]
    strong = 0.9 * np.exp(-((yy - 16) ** 2 + (xx - 16) ** 2) / (2 * 4.0**2))
    faint = 0.5 * np.exp(-((yy - 44) ** 2 + (xx - 44) ** 2) / (2 * 4.0**2))
    density = strong + faint
    assert len(density_to_boxes(density, 0.28, 20)) == 2  # the paper's rule keeps both
    boxes = density_to_boxes(density, 0.28, 20, min_peak=0.8)
    assert len(boxes) == 1 and boxes[0].score == pytest.approx(0.9, abs=1e-3)
    # The kept box has the extent of the 0.28 level, not of the 0.8 level.
    assert boxes[0].width == density_to_boxes(strong, 0.28, 20)[0].width
    assert boxes[0].width > density_to_boxes(strong, 0.8, 1)[0].width
    assert density_to_boxes(density, 0.28, 20, min_peak=0.95) == []
    assert density_to_boxes(density, 0.28, 20, min_peak=0.0) == density_to_boxes(density, 0.28, 20)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"min_peak": 1.5}, "min_peak must be a number in"),
        ({"threshold": 1.5}, "threshold must be a number in"),
        ({"threshold": float("nan")}, "threshold must be a number in"),
        ({"threshold": -0.1}, "threshold must be a number in"),
        ({"threshold": "high"}, "threshold must be a number in"),
        ({"min_area": -1}, "min_area must be an integer"),
        ({"min_area": 2.5}, "min_area must be an integer"),
        ({"min_area": True}, "min_area must be an integer"),
        ({"density": np.zeros((2, 8, 8))}, "must be a 2-D array"),
    ],
)
def test_density_to_boxes_rejects_bad_arguments(kwargs: dict, message: str) -> None:
    args = {"density": np.zeros((8, 8)), "threshold": 0.28, "min_area": 20} | kwargs
    with pytest.raises(ValueError, match=message):
        density_to_boxes(**args)


def test_density_to_boxes_accepts_a_trailing_channel_and_numpy_ints() -> None:
    density = np.zeros((16, 16, 1))
    density[4:8, 4:8, 0] = 0.5
    assert [_coords(b) for b in density_to_boxes(density, 0.3, np.int64(4))] == [(4, 4, 8, 8)]


# --------------------------------------------------------------------------------------------
# mask_to_density


def test_mask_to_density_range_peak_and_empty_mask() -> None:
    mask = np.zeros((64, 64), dtype=bool)
    assert not mask_to_density(mask).any()
    mask[10:20, 10:30] = True
    mask[40:43, 50:53] = True  # a tiny region peaks at 1 too
    density = mask_to_density(mask)
    assert density.dtype == np.float32 and density.shape == (64, 64)
    assert density.min() >= 0.0 and density.max() == pytest.approx(1.0)
    assert density[41, 51] == pytest.approx(1.0)
    # Smooth: it spreads outside the region but stays under the box level there.
    assert 0.0 < density[9, 15] < 0.28 and density[25, 15] < 0.01


def _shapes() -> list[tuple[str, np.ndarray]]:
    shapes = []
    for h, w in [(5, 5), (3, 4), (8, 12), (20, 40), (60, 30), (2, 10)]:
        mask = np.zeros((128, 128), dtype=bool)
        mask[30 : 30 + h, 40 : 40 + w] = True
        shapes.append((f"rect{h}x{w}", mask))
    for ry, rx in [(2.5, 2.5), (3, 5), (6, 10), (15, 25), (40, 20), (2, 12)]:
        shapes.append((f"ellipse{ry}x{rx}", _ellipse((128, 128), 64.3, 60.7, ry, rx)))
    several = np.zeros((128, 128), dtype=bool)
    several[0:6, 0:6] = True  # touches the image corner
    several[120:128, 100:128] = True
    several |= _ellipse((128, 128), 60, 60, 10, 18)
    shapes.append(("several", several))
    yy, xx = np.mgrid[:128, :128]
    rotated = (np.abs((xx - 64) + (yy - 64)) < 6) & (np.abs((xx - 64) - (yy - 64)) < 30)
    shapes.append(("rotated_bar", rotated))
    tail = np.zeros((128, 128), dtype=bool)
    tail[40:80, 40:80] = True
    tail[60:62, 80:95] = True  # a thin protrusion
    shapes.append(("square_with_tail", tail))
    return shapes


@pytest.mark.parametrize("sigma", [1.0, 2.0, 4.0])
@pytest.mark.parametrize(("name", "mask"), _shapes(), ids=[n for n, _ in _shapes()])
def test_density_threshold_0_28_recovers_the_mask_boxes(
    name: str, mask: np.ndarray, sigma: float
) -> None:
    gt = mask_to_boxes(mask)
    density = mask_to_density(mask, sigma=sigma)
    for stored in (density, density_from_uint8(density_to_png_uint8(density))):
        pred = sorted(density_to_boxes(stored, 0.28, 1), key=lambda b: (b.y1, b.x1))
        assert len(pred) == len(gt), name
        for p, g in zip(pred, gt, strict=True):
            assert box_iou(p, g) >= 0.9, (name, p, g)


def test_default_sigma_gives_the_exact_box_of_a_5x5_square_and_an_ellipse() -> None:
    mask = np.zeros((32, 32), dtype=bool)
    mask[10:15, 20:25] = True
    assert [_coords(b) for b in density_to_boxes(mask_to_density(mask), 0.28, 1)] == [
        (20, 10, 25, 15)
    ]
    ellipse = _ellipse((128, 128), 64.3, 60.7, 15, 25)
    assert [_coords(b) for b in density_to_boxes(mask_to_density(ellipse), 0.28, 20)] == [
        _coords(b) for b in mask_to_boxes(ellipse)
    ]


def test_mask_to_density_rejects_bad_sigma_and_shape() -> None:
    with pytest.raises(ValueError, match="sigma must be a finite number >= 0"):
        mask_to_density(np.zeros((4, 4)), sigma=-1)
    with pytest.raises(ValueError, match="mask must be a 2-D array"):
        mask_to_density(np.zeros((4,)))


def test_density_png_round_trip_through_a_real_png_file() -> None:
    density = np.array([[0.0, 0.28, 0.5], [1.0, 0.999, 0.001]], dtype=np.float32)
    encoded = density_to_png_uint8(density)
    assert encoded.tolist() == [[0, 71, 128], [255, 255, 0]]  # 0.28*255 = 71.4 -> 71
    buffer = io.BytesIO()
    Image.fromarray(encoded).save(buffer, format="PNG")
    decoded = density_from_uint8(np.asarray(Image.open(io.BytesIO(buffer.getvalue()))))
    assert decoded.dtype == np.float32
    np.testing.assert_allclose(decoded, density, atol=0.5 / 255 + 1e-7)
    with pytest.raises(ValueError, match="must be uint8"):
        density_from_uint8(np.zeros((2, 2), dtype=np.float32))


# --------------------------------------------------------------------------------------------
# mask_to_boxes, presence


def test_mask_to_boxes_by_components_with_min_area() -> None:
    mask = np.zeros((20, 20), dtype=np.uint8)
    mask[1:3, 1:3] = 255  # 4 pixels
    mask[10:15, 5:9] = 255  # 20 pixels
    assert [_coords(b) for b in mask_to_boxes(mask)] == [(1, 1, 3, 3), (5, 10, 9, 15)]
    assert [_coords(b) for b in mask_to_boxes(mask, min_area=5)] == [(5, 10, 9, 15)]
    assert all(b.score == 1.0 for b in mask_to_boxes(mask))


def test_presence_score_is_the_raw_maximum() -> None:
    density = np.full((8, 8), 0.1)
    density[3, 4] = 0.42
    assert presence_score(density) == pytest.approx(0.42)
    with pytest.raises(ValueError, match="empty"):
        presence_score(np.zeros((0, 0)))


# --------------------------------------------------------------------------------------------
# Box, scaling, IoU, matching


def test_box_to_dict_rounds() -> None:
    box = Box(1.23456, 2.0, 3.98765, 4.5, 0.876543)
    assert box.to_dict() == {"x1": 1.23, "y1": 2.0, "x2": 3.99, "y2": 4.5, "score": 0.8765}
    assert box.to_dict(ndigits=0)["x2"] == 4.0


def test_scale_boxes_square_non_square_and_clipping() -> None:
    boxes = [Box(10, 20, 30, 40, 0.7)]
    # 128 -> 512: every coordinate times 4, score kept.
    assert scale_boxes(boxes, (128, 128), (512, 512)) == [Box(40, 80, 120, 160, 0.7)]
    # 128x128 -> 640 wide x 480 high: x times 5, y times 3.75.
    assert scale_boxes(boxes, (128, 128), (640, 480)) == [Box(50, 75, 150, 150, 0.7)]
    # Back again is the identity.
    assert scale_boxes(scale_boxes(boxes, (128, 128), (640, 480)), (640, 480), (128, 128)) == [
        Box(10, 20, 30, 40, 0.7)
    ]
    # A box running past the source edge is clipped to the target image.
    assert scale_boxes([Box(-2, 120, 130, 128)], (128, 128), (256, 300)) == [
        Box(0, 281.25, 256, 300)
    ]
    with pytest.raises(ValueError, match="from_size must be"):
        scale_boxes(boxes, (0, 128), (512, 512))


def test_box_iou_hand_computed() -> None:
    a = Box(0, 0, 10, 10)
    # Overlap 5x5 = 25; union 100 + 100 - 25 = 175.
    assert box_iou(a, Box(5, 5, 15, 15)) == pytest.approx(25 / 175)
    # b inside a: 4x2 = 8 over 100.
    assert box_iou(a, Box(2, 2, 6, 4)) == pytest.approx(0.08)
    assert box_iou(a, a) == 1.0
    assert box_iou(a, Box(10, 0, 20, 10)) == 0.0  # edges touch: no overlap
    assert box_iou(Box(3, 3, 3, 3), Box(3, 3, 3, 3)) == 0.0  # empty union


def test_match_boxes_is_one_to_one_and_greedy_by_iou() -> None:
    gt = [Box(0, 0, 10, 10)]
    # Two predictions on one ground-truth box: one match (the better one), the other is left.
    pred = [Box(1, 1, 11, 11), Box(0, 0, 10, 10)]
    assert match_boxes(pred, gt, 0.5) == [(1, 0, 1.0)]
    # Greedy order: pred 0 overlaps gt 0 (IoU 81/119) and gt 1 (IoU 1); gt 1 is taken first.
    gt2 = [Box(1, 1, 11, 11), Box(0, 0, 10, 10)]
    pred2 = [Box(0, 0, 10, 10), Box(1, 1, 11, 11)]
    assert match_boxes(pred2, gt2, 0.5) == [(0, 1, 1.0), (1, 0, 1.0)]
    # Threshold: IoU 25/175 = 0.143 matches at 0.1, not at 0.5; disjoint boxes never match.
    assert match_boxes([Box(5, 5, 15, 15)], gt, 0.1) == [(0, 0, pytest.approx(1 / 7))]
    assert match_boxes([Box(5, 5, 15, 15)], gt, 0.5) == []
    assert match_boxes([Box(20, 20, 30, 30)], gt, 0.0) == []
    assert match_boxes([], gt, 0.5) == [] and match_boxes(pred, [], 0.5) == []


# --------------------------------------------------------------------------------------------
# YOLO labels


def test_yolo_round_trip_and_parsing() -> None:
    boxes = [Box(10, 20, 50, 40), Box(0, 100, 128, 128)]
    lines = boxes_to_yolo(boxes, 128, 128)
    # Box(10, 20, 50, 40): centre (30, 30), size 40 x 20 in a 128 x 128 image.
    assert lines[0] == "0 0.234375 0.234375 0.312500 0.156250"
    back = yolo_to_boxes(lines, 128, 128)
    for a, b in zip(back, boxes, strict=True):
        assert _coords(a) == pytest.approx(_coords(b), abs=1e-4)
    # Non-square image, whole file text with a blank line and another class id.
    text = "1 0.5 0.5 0.25 0.5\n\n0 0.1 0.2 0.2 0.2\n"
    assert [_coords(b) for b in yolo_to_boxes(text, 200, 100)] == [
        pytest.approx((75, 25, 125, 75)),
        pytest.approx((0, 10, 40, 30)),
    ]
    assert boxes_to_yolo([Box(75, 25, 125, 75)], 200, 100, cls=3) == [
        "3 0.500000 0.500000 0.250000 0.500000"
    ]


def test_yolo_bad_line_names_the_line() -> None:
    with pytest.raises(ValueError, match="line 2 is '0 0.5 0.5'"):
        yolo_to_boxes(["0 0.5 0.5 0.1 0.1", "0 0.5 0.5"], 128, 128)
    with pytest.raises(ValueError, match="line 1"):
        yolo_to_boxes(["0 a b c d"], 128, 128)


# --------------------------------------------------------------------------------------------
# regions and the region scorer


def _area_scorer(weight: float = 4.0) -> RegionScorer:
    """A scorer that reads only log_area: regions above about 50 pixels score over 0.5."""
    weights = [0.0] * len(REGION_FEATURES)
    weights[REGION_FEATURES.index("log_area")] = weight
    return RegionScorer(
        mean=(0.0,) * 6, scale=(1.0,) * 6, weights=tuple(weights), bias=-weight * np.log(50)
    )


def test_density_regions_measure_each_region() -> None:
    density = np.zeros((40, 40))
    density[2:6, 2:12] = 0.5  # 4 x 10 = 40 pixels, uniform
    density[3, 3] = 0.9
    density[20:30, 20:30] = 0.8  # 100 pixels
    density[20, 20] = 0.0  # a hole in the corner: fill 99 / 100
    density[35, 35] = 0.9  # 1 pixel: below min_area
    boxes, features = density_regions(density, 0.3, min_area=2)
    assert [_coords(b) for b in boxes] == [(2, 2, 12, 6), (20, 20, 30, 30)]
    assert features.shape == (2, len(REGION_FEATURES))
    first = dict(zip(REGION_FEATURES, features[0], strict=True))
    assert first["peak"] == pytest.approx(0.9) and boxes[0].score == pytest.approx(0.9)
    assert first["mean"] == pytest.approx((39 * 0.5 + 0.9) / 40)
    assert first["log_area"] == pytest.approx(np.log(40)) and first["fill"] == 1.0
    assert first["log_mass"] == pytest.approx(np.log(39 * 0.5 + 0.9))
    assert first["log_aspect"] == pytest.approx(np.log(10 / 4))
    second = dict(zip(REGION_FEATURES, features[1], strict=True))
    assert second["fill"] == pytest.approx(0.99) and second["log_aspect"] == 0.0
    empty_boxes, empty = density_regions(np.zeros((8, 8)), 0.3, 1)
    assert empty_boxes == [] and empty.shape == (0, len(REGION_FEATURES))


def test_the_region_scorer_ranks_regions_by_its_fit_not_their_peak() -> None:
    density = np.zeros((40, 40))
    density[2:6, 2:6] = 0.95  # 16 pixels, the highest peak
    density[20:30, 20:30] = 0.6  # 100 pixels
    scorer = _area_scorer()
    boxes = scored_boxes(density, 0.3, 1, scorer)
    assert [_coords(b) for b in boxes] == [(20, 20, 30, 30), (2, 2, 6, 6)]
    assert boxes[0].score == pytest.approx(1 / (1 + (50 / 100) ** 4))
    assert boxes[1].score == pytest.approx(1 / (1 + (50 / 16) ** 4))
    # the peak rule ranks them the other way round
    assert [_coords(b) for b in density_to_boxes(density, 0.3, 1)][0] == (2, 2, 6, 6)


def test_the_region_scorer_round_trips_and_refuses_malformed_fits() -> None:
    scorer = _area_scorer()
    assert RegionScorer.from_dict(scorer.to_dict()) == scorer
    assert RegionScorer.from_dict(scorer) is scorer
    with pytest.raises(ValueError, match="mapping over the features"):
        RegionScorer.from_dict({**scorer.to_dict(), "features": ["peak"]})
    with pytest.raises(ValueError, match="missing or has a malformed field"):
        RegionScorer.from_dict({k: v for k, v in scorer.to_dict().items() if k != "bias"})
    with pytest.raises(ValueError, match="weights must be 6 finite numbers"):
        RegionScorer((0.0,) * 6, (1.0,) * 6, (float("nan"),) * 6, 0.0)
    with pytest.raises(ValueError, match="scales must be > 0"):
        RegionScorer((0.0,) * 6, (0.0,) * 6, (1.0,) * 6, 0.0)
