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
from medfakedet.data.inpaint import MedFakeInpaintDataset, group_of, load_split
from medfakedet.data.manipulations import CHANGE_THRESHOLD, min_region_area
from medfakedet.data.medfake import MedFakeDataset
from medfakedet.density import box_iou, density_to_boxes, mask_to_boxes, yolo_to_boxes
from medfakedet.labels import CLASS_NAMES

REAL_DEV = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "real-dev"
PER_CLASS, INPAINT = 12, 60
# Fake generators train for 0 s in tests: fast, and deterministic (no time-dependent steps).
FAST = {"fake_time_budget_s": 0.0, "progress": False, "contact_sheet": True}


@pytest.fixture(scope="session")
def built(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("build")
    build_datasets(out, per_class=PER_CLASS, inpaint=INPAINT, seed=5, workers=1, **FAST)
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
        "seed": 5,
        "workers": 1,
        "fake_time_budget_s": 0.0,
        "inpaint_kinds": list(DEFAULT_INPAINT_KINDS),
        "inpaint_fractions": [0.85, 0.1, 0.05],
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
    assert list(rows[0])[:6] == ["path", "organ", "label", "approach", "group", "seed"]
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
        p.relative_to(built / "medfake").as_posix() for p in (built / "medfake").rglob("*.png")
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


def test_real_and_fake_share_size_mode_and_format(built: Path) -> None:
    """Nothing but content may tell the classes apart: same size, mode, format, PNG header."""
    stats: dict[str, set] = defaultdict(set)
    for row in _rows(built / "medfake" / "manifest.csv"):
        path = built / "medfake" / row["path"]
        data = path.read_bytes()
        with Image.open(path) as im:
            # IHDR: width, height, bit depth, colour type, compression, filter, interlace.
            stats[f"{row['organ']}_{row['label']}"].add((im.format, im.mode, im.size, data[16:29]))
    assert len({frozenset(v) for v in stats.values()}) == 1
    assert len(next(iter(stats.values()))) == 1
    fmt, mode, size, _ = next(iter(next(iter(stats.values()))))
    assert (fmt, mode, size) == ("PNG", "L", (128, 128))


def test_inpaint_variants_masks_density_and_labels_agree(built: Path) -> None:
    root = built / "medfakeinpaint"
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
    assert a.keys() == c.keys()
    assert (
        a["medfake/brain/real/brain_real_00000.png"] != c["medfake/brain/real/brain_real_00000.png"]
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
    with Image.open(out / "medfakeinpaint" / "images" / f"{ids[0]}.png") as im:
        assert (im.mode, im.size) == ("L", (128, 128))
