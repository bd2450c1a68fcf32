"""The dataset builder: layout, read-back, determinism, mask / density / label agreement."""

from __future__ import annotations

import csv
import hashlib
import json
import re
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from scipy import ndimage

from medfakedet.data.__main__ import main
from medfakedet.data.builder import DEFAULT_INPAINT_KINDS, build_datasets
from medfakedet.data.check import check_dataset
from medfakedet.data.inpaint import MedFakeInpaintDataset, group_of, index_files, load_split
from medfakedet.data.manipulations import CHANGE_THRESHOLD, min_region_area
from medfakedet.data.medfake import MedFakeDataset
from medfakedet.density import box_iou, density_to_boxes, mask_to_boxes, yolo_to_boxes
from medfakedet.imaging import load_image_file
from medfakedet.labels import CLASS_NAMES
from medfakedet.preprocess import LOCALIZER_PREPROCESS, eval_transform

REAL_DEV = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "real-dev"
PER_CLASS, INPAINT = 12, 60
# Fake generators train for 0 s in tests: fast, and deterministic (no time-dependent steps).
FAST = {"fake_time_budget_s": 0.0, "progress": False, "contact_sheet": True}


@pytest.fixture(scope="session")
def built(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("build")
    build_datasets(out, per_class=PER_CLASS, inpaint=INPAINT, seed=5, workers=1, **FAST)
    return out


@pytest.fixture(scope="module")
def built_plain(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The inpainting part of ``built`` with ``encode="none"``: pixels exactly as manipulated."""
    out = tmp_path_factory.mktemp("plain")
    build_datasets(out, per_class=1, inpaint=INPAINT, seed=5, workers=1, encode="none",
                   **{**FAST, "contact_sheet": False})  # fmt: skip
    return out


def _rows(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


def _gray(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path))


def _hashes(root: Path) -> dict[str, str]:
    return {
        p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file() and p.name != "build.json"  # build.json alone records timings
    }


def test_build_layout_manifest_and_summary(built: Path) -> None:
    info = json.loads((built / "build.json").read_text())
    assert info["args"] == {
        "out": str(built),
        "real_dir": None,
        "per_class": PER_CLASS,
        "inpaint": INPAINT,
        "size": 128,
        "inpaint_size": 128,
        "seed": 5,
        "workers": 1,
        "fake_time_budget_s": 0.0,
        "inpaint_kinds": list(DEFAULT_INPAINT_KINDS),
        "inpaint_fractions": [0.85, 0.1, 0.05],
        "encode": "random",
        "fake_mix": None,
        "gan_steps": None,
        "gan_device": "auto",
        "detail_match": [],
    }
    # The fields that are not a function of the seed, named so that comparisons can drop them.
    assert set(info) == {
        "args",
        "counts",
        "unreadable_real_files",
        "seconds",
        "load_average_1min",
        "versions",
    }
    assert set(info["versions"]) == {"medfakedet", "python", "numpy", "scipy", "torch", "pillow"}
    assert info["counts"]["medfake"] == {name: PER_CLASS for name in sorted(CLASS_NAMES)}
    assert (built / "contact_sheet.png").stat().st_size > 10_000
    rows = _rows(built / "medfake" / "manifest.csv")
    assert list(rows[0]) == [
        *("path", "organ", "label", "approach", "group", "seed", "source", "encode")
    ]
    assert len(rows) == 8 * PER_CLASS
    for row in rows:
        assert (built / "medfake" / row["path"]).is_file()
        assert row["path"].startswith(f"{row['organ']}/{row['label']}/")
        assert (row["approach"] == "") == (row["label"] == "real")
    approaches = Counter(r["approach"] for r in rows if r["label"] == "fake")
    # Every fake is grouped with the real of its organ it was made from.
    real_groups = {(r["organ"], r["group"]) for r in rows if r["label"] == "real"}
    assert all((r["organ"], r["group"]) in real_groups for r in rows if r["label"] == "fake")
    assert len(approaches) >= 3 and min(approaches.values()) >= 8
    files = sorted(
        p.relative_to(built / "medfake").as_posix()
        for p in (built / "medfake").rglob("*")
        if p.suffix in (".png", ".jpg")
    )
    assert files == sorted(r["path"] for r in rows)


def test_check_reports_no_problem_and_readers_read_it_back(built: Path) -> None:
    report = check_dataset(built)
    assert report.ok, report.problems
    assert report.layouts == ["medfake", "medfakeinpaint"]
    assert main(["check", str(built)]) == 0
    for mode in ("paper", "group"):
        parts = [
            MedFakeDataset(built / "medfake", s, split_mode=mode) for s in ("train", "val", "test")
        ]
        assert sum(len(p) for p in parts) == 8 * PER_CLASS and min(len(p) for p in parts) > 0
        groups = [{s.group for s in p.samples} for p in parts]
        leaks = (groups[0] & groups[1]) | (groups[0] & groups[2]) | (groups[1] & groups[2])
        assert bool(leaks) == (mode == "paper")  # the paper's split leaks real/fake pairs
    ds = MedFakeDataset(built / "medfake", "all")
    x, label = ds[len(ds) - 1]
    assert x.shape == (3, 128, 128) and CLASS_NAMES[label] == "lung_fake"
    assert ds.class_counts() == dict.fromkeys(CLASS_NAMES, PER_CLASS)
    ip = MedFakeInpaintDataset(built / "medfakeinpaint", "all")
    assert len(ip) == INPAINT
    item = ip[0]
    assert item["image"].shape == item["density"].shape == item["mask"].shape == (1, 128, 128)
    assert sum(len(v) for v in load_split(built / "medfakeinpaint", "json").values()) == INPAINT


#: What each manifest ``encode`` kind is on disk: (PIL format, PIL mode).
ENCODE_FILES = {"jpeg": ("JPEG", "L"), "png8": ("PNG", "L"), "png16": ("PNG", "I;16")}


def _encodes(built: Path) -> list[dict]:
    """Each MedFake file with its class, encode kind, JPEG quality and side, checked against
    the manifest's ``encode`` entry."""
    out = []
    for row in _rows(built / "medfake" / "manifest.csv"):
        kind, scale = row["encode"].rsplit("-x", 1)
        fmt, _, q = kind.partition("-q")
        quality = int(q or 0)
        with Image.open(built / "medfake" / row["path"]) as im:
            assert (im.format, im.mode) == ENCODE_FILES[fmt], row
            assert im.size == (round(128 * float(scale)),) * 2, row
            side = im.size[0]
        assert row["path"].endswith(".jpg" if fmt == "jpeg" else ".png")
        out.append({"cls": f"{row['organ']}_{row['label']}", "label": row["label"], "fmt": fmt,
                    "quality": quality, "side": side})  # fmt: skip
    return out


def test_encode_parity_spreads_format_quality_depth_and_size_over_both_classes(
    built: Path,
) -> None:
    """Nothing but content may tell the classes apart: format, bit depth, JPEG quality and size
    are drawn by one seeded rule for real and fake alike (issue #10, no shortcut cues)."""
    from scipy import stats

    items = _encodes(built)
    per_class = defaultdict(Counter)
    for it in items:
        per_class[it["cls"]][it["fmt"]] += 1
    # No class is all-PNG or all-JPEG: every class holds at least two of the three encodes.
    assert all(len(c) >= 2 and c["jpeg"] >= 2 for c in per_class.values()), per_class
    real = [it for it in items if it["label"] == "real"]
    fake = [it for it in items if it["label"] == "fake"]
    fmts = sorted(ENCODE_FILES)
    table = [[sum(it["fmt"] == f for it in group) for f in fmts] for group in (real, fake)]
    # Measured (seed 5, 48 + 48 files): formats p 0.82, JPEG quality p 0.59, side p 0.69.
    assert stats.chi2_contingency(table).pvalue > 0.3, table
    q_real = [it["quality"] for it in real if it["fmt"] == "jpeg"]
    q_fake = [it["quality"] for it in fake if it["fmt"] == "jpeg"]
    assert min(q_real + q_fake) >= 50 and max(q_real + q_fake) <= 100
    assert max(q_real + q_fake) - min(q_real + q_fake) >= 30  # spread, not one setting
    assert stats.mannwhitneyu(q_real, q_fake).pvalue > 0.3
    sides = [[it["side"] for it in group] for group in (real, fake)]
    assert min(min(s) for s in sides) >= 64 and max(max(s) for s in sides) <= 256
    assert min(len(set(s)) for s in sides) >= 20  # resampled, not one size
    assert stats.ks_2samp(*sides).pvalue > 0.3


def test_encode_none_writes_8bit_png_and_random_keeps_the_content(
    built: Path, tmp_path: Path
) -> None:
    """``encode="none"``: every file 8-bit PNG at the build size (the old output); the random
    encode of the same item differs only by resampling / JPEG loss once squashed back."""
    plain = tmp_path / "plain"
    build_datasets(plain, per_class=1, inpaint=5, seed=5, workers=1, encode="none",
                   **{**FAST, "contact_sheet": False})  # fmt: skip
    for p in (plain / "medfake").rglob("*.*"):
        if p.suffix != ".csv":
            with Image.open(p) as im:
                assert (p.suffix, im.format, im.mode, im.size) == (".png", "PNG", "L", (128, 128))
    rows = {Path(r["path"]).stem: r for r in _rows(built / "medfake" / "manifest.csv")}
    for organ in ("brain", "chest", "kidney", "lung"):
        name = f"{organ}_real_00000"
        a = load_image_file(plain / "medfake" / organ / "real" / f"{name}.png").pixels
        b = load_image_file(built / "medfake" / rows[name]["path"]).pixels
        b = eval_transform(b, LOCALIZER_PREPROCESS)[0].numpy()
        diff = float(np.abs(a[:, :, 0] - b).mean())
        # Measured: 0.007-0.033 (most for 0.55x); two different images differ by 0.19-0.54.
        assert diff < 0.05, (name, rows[name]["encode"], diff)
    with pytest.raises(ValueError, match="encode must be one of random, none"):
        build_datasets(tmp_path / "bad", per_class=1, inpaint=0, encode="jpeg", **FAST)


def test_inpaint_images_get_the_encode_draw_and_keep_their_maps(
    built: Path, built_plain: Path
) -> None:
    """MedFakeInpaint images: JPEG or 8/16-bit PNG at the build size; maps and labels are the
    plain build's, byte for byte, and the image content is the plain one up to JPEG loss."""
    root, plain = built / "medfakeinpaint", built_plain / "medfakeinpaint"
    rows = _rows(root / "manifest.csv")
    kinds = Counter(r["encode"].split("-")[0] for r in rows)
    assert set(kinds) == {"jpeg", "png8", "png16"} and all(
        r["encode"].endswith("-x1.00") for r in rows
    )
    images = index_files(root, "images")
    for r in rows:
        i = r["id"]
        for sub, name in (("masks", f"{i}.png"), ("density", f"{i}.png"), ("labels", f"{i}.txt")):
            assert (root / sub / name).read_bytes() == (plain / sub / name).read_bytes()
        a = load_image_file(images[i]).pixels
        b = load_image_file(plain / "images" / f"{i}.png").pixels
        assert a.shape == b.shape == (128, 128, 1)
        # Measured: at most 0.024 (JPEG q63); 0 for PNG.
        assert float(np.abs(a - b).mean()) < 0.04, r


def test_inpaint_variants_masks_density_and_labels_agree(built_plain: Path) -> None:
    root = built_plain / "medfakeinpaint"
    rows = {r["id"]: r for r in _rows(root / "manifest.csv")}
    assert len(rows) == INPAINT
    assert all(re.fullmatch(r"ph\d{5}_0_(orig|m1|m2|m3|m45)", i) for i in rows)
    untouched = sum(r["variant"] == "orig" for r in rows.values())
    assert untouched == INPAINT // 5
    kinds = Counter(k for r in rows.values() for k in r["kind"].split("+") if k)
    assert set(kinds) == set(DEFAULT_INPAINT_KINDS) == {"lesion", "removal"}  # the paper's kind
    min_area = min_region_area(128)
    for image_id, row in rows.items():
        image = _gray(root / "images" / f"{image_id}.png").astype(np.int16)
        mask = _gray(root / "masks" / f"{image_id}.png") > 127
        density = _gray(root / "density" / f"{image_id}.png").astype(np.float32) / 255
        label_boxes = yolo_to_boxes((root / "labels" / f"{image_id}.txt").read_text(), 128, 128)
        mask_boxes = mask_to_boxes(mask)
        _, n = ndimage.label(mask, structure=np.ones((3, 3)))
        assert int(row["n_regions"]) == n == len(mask_boxes) == len(label_boxes)
        if row["variant"] == "orig":
            assert n == 0 and density.max() == 0
            continue
        assert 1 <= n <= 5 and n == len(row["kind"].split("+"))
        areas = ndimage.sum_labels(mask, ndimage.label(mask, np.ones((3, 3)))[0], range(1, n + 1))
        assert min(areas) >= min_area
        for lb, mb in zip(label_boxes, mask_boxes, strict=True):
            assert box_iou(lb, mb) >= 0.9
        density_boxes = density_to_boxes(density, 0.28, 1)
        assert len(density_boxes) == n
        for mb in mask_boxes:
            assert max(box_iou(mb, db) for db in density_boxes) >= 0.9
        # The mask is exact: every pixel changed noticeably from the untouched slice is in it.
        orig = _gray(root / "images" / f"{group_of(image_id)}_orig.png").astype(np.int16)
        changed = np.abs(image - orig) >= CHANGE_THRESHOLD
        assert not (changed & ~mask).any()
        assert changed[mask].mean() >= 0.5


def test_split_json_keeps_source_groups_whole(built: Path) -> None:
    root = built / "medfakeinpaint"
    fixed = json.loads((root / "split_fixed_density.json").read_text())
    split = load_split(root, "json")
    assert split["val"] == fixed["val"] and split["test"] == fixed["test"]
    groups = {k: {group_of(i) for i in v} for k, v in split.items()}
    assert not groups["train"] & groups["val"]
    assert not groups["train"] & groups["test"]
    assert not groups["val"] & groups["test"]
    assert len(split["val"]) >= 5 and len(split["test"]) >= 5


def test_same_seed_gives_identical_bytes_whatever_the_workers(tmp_path: Path) -> None:
    small = {"per_class": 3, "inpaint": 10, "seed": 11, **FAST, "contact_sheet": False}
    build_datasets(tmp_path / "a", workers=1, **small)
    build_datasets(tmp_path / "b", workers=2, **small)
    a, b = _hashes(tmp_path / "a"), _hashes(tmp_path / "b")
    assert len(a) == 8 * 3 + 1 + 10 * 4 + 2 and a == b
    build_datasets(tmp_path / "c", workers=1, **{**small, "seed": 12})
    c = _hashes(tmp_path / "c")
    # Same files up to the suffix (another seed draws other encodes), other bytes.
    assert {k.rsplit(".", 1)[0] for k in a} == {k.rsplit(".", 1)[0] for k in c}
    first = "medfake/brain/real/brain_real_00000."
    assert next(v for k, v in a.items() if k.startswith(first)) != next(
        v for k, v in c.items() if k.startswith(first)
    )
    # A rebuild into the same folder replaces the old build.
    build_datasets(tmp_path / "a", workers=1, **{**small, "per_class": 2})
    assert len(list((tmp_path / "a" / "medfake" / "brain" / "real").iterdir())) == 2


def test_inpaint_kinds_and_split_shares_are_options(tmp_path: Path) -> None:
    """copy_move is opt-in; the split shares are honoured; bad values are refused up front."""
    summary = build_datasets(
        tmp_path / "cm",
        per_class=1,
        inpaint=50,
        seed=4,
        workers=1,
        **{**FAST, "contact_sheet": False},
        inpaint_kinds=["copy_move"],
        inpaint_fractions=(0.6, 0.2, 0.2),
    )
    assert set(summary["counts"]["inpaint_kinds"]) == {"copy_move"}
    assert summary["counts"]["inpaint_split"] == {"train": 30, "val": 10, "test": 10}
    assert summary["args"]["inpaint_kinds"] == ["copy_move"]
    with pytest.raises(ValueError, match="inpaint_kinds must name some of"):
        build_datasets(tmp_path / "bad", per_class=1, inpaint=5, inpaint_kinds=["blur"], **FAST)
    with pytest.raises(ValueError, match="three positive shares summing to 1"):
        build_datasets(tmp_path / "bad", per_class=1, inpaint=5, inpaint_fractions=(0.9, 0.1, 0.1))
    assert not (tmp_path / "bad").exists()


def test_build_refuses_a_folder_that_is_not_a_build(tmp_path: Path) -> None:
    (tmp_path / "medfake").mkdir()
    (tmp_path / "medfake" / "precious.png").write_bytes(b"x")
    with pytest.raises(FileExistsError, match="not a previous build"):
        build_datasets(tmp_path, per_class=1, inpaint=0, **FAST)
    assert (tmp_path / "medfake" / "precious.png").exists()


@pytest.mark.skipif(not REAL_DEV.is_dir(), reason="../shared/data/real-dev is absent")
def test_build_from_real_dir(tmp_path: Path) -> None:
    out = tmp_path / "rd"
    summary = build_datasets(
        out, real_dir=REAL_DEV, per_class=6, inpaint=20, seed=3, workers=1, **FAST
    )
    assert summary["counts"]["medfake"] == dict.fromkeys(sorted(CLASS_NAMES), 6)
    report = check_dataset(out)
    assert report.ok, report.problems
    # One encode path: no format / mode / size shortcut between real and fake.
    assert not [w for w in report.warnings if "differ in" in w], report.warnings
    rows = _rows(out / "medfake" / "manifest.csv")
    reals = [r for r in rows if r["label"] == "real"]
    assert all(r["approach"] == "real-dir" for r in reals)
    for r in reals:
        assert (REAL_DEV / r["source"]).is_file() and r["source"].startswith(r["organ"] + "/")
    ids = [r["id"] for r in _rows(out / "medfakeinpaint" / "manifest.csv")]
    assert len(ids) == 20
    brain_stems = {Path(r["source"]).stem for r in reals if r["organ"] == "brain"}
    sources = {group_of(i)[: -len("_0")] for i in ids}
    assert len(sources) == 4
    assert all(any(s == re.sub(r"[^A-Za-z0-9-]+", "-", st) for st in brain_stems) for s in sources)
    for path in index_files(out / "medfakeinpaint", "images").values():
        with Image.open(path) as im:
            assert im.mode in ("L", "I;16") and im.size == (128, 128)


@pytest.mark.skipif(not REAL_DEV.is_dir(), reason="../shared/data/real-dev is absent")
def test_inpaint_size_builds_the_localizer_set_at_its_own_side(tmp_path: Path) -> None:
    """The real recipe writes MedFake at 256 px and MedFakeInpaint at 128 (REAL_SIZE,
    REAL_INPAINT_SIZE): the localizer's set is then the one a build at its side alone makes."""
    common = {"real_dir": REAL_DEV, "per_class": 2, "inpaint": 10, "seed": 3, "workers": 1,
              "encode": "none", **{**FAST, "contact_sheet": False}}  # fmt: skip
    build_datasets(tmp_path / "two", size=96, inpaint_size=64, **common)
    build_datasets(tmp_path / "one", size=64, **common)
    two = json.loads((tmp_path / "two" / "build.json").read_text())["args"]
    assert (two["size"], two["inpaint_size"]) == (96, 64)
    assert _hashes(tmp_path / "two" / "medfakeinpaint") == _hashes(
        tmp_path / "one" / "medfakeinpaint"
    )
    for path in (tmp_path / "two" / "medfake").rglob("*.png"):
        with Image.open(path) as im:
            assert im.size == (96, 96)
    with pytest.raises(ValueError, match="32 <= size"):
        build_datasets(tmp_path / "bad", size=64, inpaint_size=16, **common)
