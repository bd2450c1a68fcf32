"""Readers, splits and checks of the two dataset layouts, on small hand-written folders."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from medfakedet.data.__main__ import main
from medfakedet.data.check import check_dataset
from medfakedet.data.inpaint import (
    SPLIT_FILE,
    MedFakeInpaintDataset,
    group_of,
    group_split_ids,
    load_split,
    write_record,
)
from medfakedet.data.manipulations import manipulate
from medfakedet.data.medfake import MedFakeDataset, scan_medfake, split_medfake
from medfakedet.data.phantoms import generate_slice
from medfakedet.labels import CLASS_NAMES, ORGANS, class_index
from medfakedet.preprocess import (
    CLASSIFIER_PREPROCESS,
    LOCALIZER_PREPROCESS,
    normalize,
    resize_tensor,
    to_channels,
    to_tensor,
)


def _save(path: Path, array: np.ndarray, fmt: str = "PNG") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format=fmt)
    path.write_bytes(buf.getvalue())


def _image(seed: int, size: int = 32) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (size, size), dtype=np.uint8)


@pytest.fixture()
def medfake_root(tmp_path: Path) -> Path:
    """20 images per class, PNG; brain_real also holds odd extensions and non-images."""
    root = tmp_path / "mf"
    for c, name in enumerate(CLASS_NAMES):
        organ, src = name.rsplit("_", 1)
        for i in range(20):
            _save(root / organ / src / f"{organ}{i:02d}.png", _image(c * 100 + i))
    real = root / "brain" / "real"
    _save(real / "upper.JPG", _image(5000), "JPEG")
    _save(real / "x.jpeg", _image(5001), "JPEG")
    _save(real / "y.BMP", _image(5002), "BMP")
    _save(real / "z.tiff", _image(5003), "TIFF")
    (real / "notes.txt").write_text("not an image")
    _save(real / "nested" / "deep.png", _image(5004))  # not directly in the class folder
    return root


def test_scan_medfake_reads_the_paper_layout(medfake_root: Path) -> None:
    samples = scan_medfake(medfake_root)
    assert len(samples) == 8 * 20 + 4
    by_class = [sum(s.label == i for s in samples) for i in range(8)]
    assert by_class == [24, 20, 20, 20, 20, 20, 20, 20]
    names = {s.path.name for s in samples}
    assert {"upper.JPG", "x.jpeg", "y.BMP", "z.tiff"} <= names
    assert "notes.txt" not in names and "deep.png" not in names
    s = next(s for s in samples if s.path.name == "kidney03.png" and s.path.parent.name == "fake")
    assert (s.organ, s.is_fake, s.label, s.group) == (
        "kidney",
        True,
        class_index("kidney", True),
        "kidney/kidney03",
    )
    assert [s.label for s in samples] == sorted(s.label for s in samples)


def test_scan_medfake_takes_groups_from_the_manifest(medfake_root: Path) -> None:
    (medfake_root / "manifest.csv").write_text(
        "path,organ,label,approach,group,seed\nlung/fake/lung03.png,lung,fake,vae,lung/lung07,42\n"
    )
    samples = {s.path.name: s for s in scan_medfake(medfake_root)}
    assert samples["lung03.png"].group == "lung/lung07"
    assert samples["lung03.png"].approach == "vae"
    assert samples["lung04.png"].group == "lung/lung04"


def test_scan_medfake_says_what_layout_it_expects(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="<organ>/<real|fake>"):
        scan_medfake(tmp_path)


def test_paper_split_is_stratified_seeded_and_complete(medfake_root: Path) -> None:
    samples = scan_medfake(medfake_root)
    split = split_medfake(samples, "paper", seed=42)
    for label in range(1, 8):  # 20 images: 14 / 3 / 3
        assert [sum(s.label == label for s in split[k]) for k in ("train", "val", "test")] == [
            14,
            3,
            3,
        ]
    paths = [s.path for k in split for s in split[k]]
    assert sorted(paths) == sorted(s.path for s in samples)
    again = split_medfake(samples, "paper", seed=42)
    assert [s.path for s in again["test"]] == [s.path for s in split["test"]]
    other = split_medfake(samples, "paper", seed=7)
    assert {s.path for s in other["test"]} != {s.path for s in split["test"]}


def test_group_split_keeps_every_group_whole(medfake_root: Path) -> None:
    samples = scan_medfake(medfake_root)
    # Groups of four: a real and three fakes made from it (the leak the paper's split has).
    regrouped = [
        type(s)(s.path, s.label, s.organ, s.is_fake, f"{s.organ}/{int(s.path.stem[-2:]) % 10}")
        if s.path.stem[-2:].isdigit()
        else s
        for s in samples
    ]
    split = split_medfake(regrouped, "group", seed=42)
    seen: dict[str, str] = {}
    for k, members in split.items():
        for s in members:
            assert seen.setdefault(s.group, k) == k, f"group {s.group} in {seen[s.group]} and {k}"
    sizes = {k: len(v) for k, v in split.items()}
    assert sum(sizes.values()) == len(samples)
    assert 0.6 < sizes["train"] / len(samples) < 0.8 and sizes["val"] > 10 and sizes["test"] > 10
    paper = split_medfake(regrouped, "paper", seed=42)
    paper_groups = [{s.group for s in paper[k]} for k in ("train", "test")]
    assert paper_groups[0] & paper_groups[1], "the paper split should leak groups here"


def test_medfake_dataset_tensors_cache_and_augmentation(medfake_root: Path, tmp_path: Path) -> None:
    ds = MedFakeDataset(medfake_root, "train", cache=True)
    assert len(ds) == len(ds.samples) == len(ds.targets) == sum(ds.class_counts().values())
    assert ds.class_counts()["chest_fake"] == 14
    x, label = ds[0]
    assert x.shape == (3, 128, 128) and x.dtype == torch.float32 and label == ds.samples[0].label
    assert float(x.min()) >= -1.0 and float(x.max()) <= 1.0
    # A uniform image maps to (v / 255 - 0.5) / 0.5 exactly.
    flat = tmp_path / "flat"
    for organ in ORGANS:
        for src in ("real", "fake"):
            _save(flat / organ / src / "a.png", np.full((16, 16), 51, np.uint8))
    x, _ = MedFakeDataset(flat, "all")[0]
    assert torch.allclose(x, torch.full_like(x, (51 / 255 - 0.5) / 0.5), atol=1e-6)

    uncached = MedFakeDataset(medfake_root, "train", cache=False)
    for i in (0, 5):
        assert torch.equal(ds[i][0], uncached[i][0])  # served from the cache the second time
        assert torch.equal(ds[i][0], uncached[i][0])
    aug = MedFakeDataset(medfake_root, "train", augment=True, seed=1)
    a0 = [aug[i][0] for i in range(6)]
    assert all(torch.equal(a, aug[i][0]) for i, a in enumerate(a0))  # reproducible
    aug.set_epoch(1)
    assert any(not torch.equal(a, aug[i][0]) for i, a in enumerate(a0))  # new draw per epoch
    assert a0[0].shape == (3, 128, 128)
    with pytest.raises(ValueError, match="unknown split"):
        MedFakeDataset(medfake_root, "training")


def test_pixel_cache_keeps_16_bit_images_exact(tmp_path: Path) -> None:
    root = tmp_path / "mf16"
    deep = (np.arange(64 * 64, dtype=np.uint16).reshape(64, 64) * 16 + 3).astype(np.uint16)
    for organ in ORGANS:
        for src in ("real", "fake"):
            _save(root / organ / src / "a.png", deep)
    cached = MedFakeDataset(root, "all", cache=True)
    plain = MedFakeDataset(root, "all", cache=False)
    cached[0]
    assert torch.equal(cached[0][0], plain[0][0])


@pytest.mark.parametrize(
    ("image_id", "group"),
    [
        ("a_3_m2", "a_3"),
        ("BraTS_001_45_orig", "BraTS_001_45"),
        ("slice_7_m45", "slice_7"),
        ("no_variant", "no_variant"),
        ("a_3_m2x", "a_3_m2x"),
    ],
)
def test_group_of_strips_only_the_variant(image_id: str, group: str) -> None:
    assert group_of(image_id) == group


@pytest.fixture()
def inpaint_root(tmp_path: Path) -> Path:
    """6 source slices x 3 variants at 64 px, written with the builder's record writer."""
    root = tmp_path / "ip"
    for sub in ("images", "density", "masks", "labels"):
        (root / sub).mkdir(parents=True)
    for j in range(6):
        sl = generate_slice("brain", np.random.default_rng(j), 64)
        write_record(root, f"src{j}_0_orig", sl.image, np.zeros((64, 64), bool))
        for n in (1, 2):
            image, mask, _ = manipulate(
                sl.image, sl.tissue_mask, n, np.random.default_rng(10 * j + n)
            )
            write_record(root, f"src{j}_0_m{n}", image, mask)
    (root / SPLIT_FILE).write_text(
        json.dumps(
            {
                "val": ["src4_0_orig", "src4_0_m1", "src4_0_m2"],
                "test": ["src5_0_m1", "src5_0_m2", "src5_0_orig"],
            }
        )
    )
    return root


def test_load_split_json_and_group(inpaint_root: Path) -> None:
    split = load_split(inpaint_root, "json")
    assert split["val"] == ["src4_0_orig", "src4_0_m1", "src4_0_m2"]
    assert split["test"] == ["src5_0_m1", "src5_0_m2", "src5_0_orig"]
    assert len(split["train"]) == 12 and "src3_0_m2" in split["train"]
    grouped = load_split(inpaint_root, "group", seed=3)
    groups = {k: {group_of(i) for i in v} for k, v in grouped.items()}
    assert not (groups["train"] & groups["val"]) and not (groups["train"] & groups["test"])
    assert sum(len(v) for v in grouped.values()) == 18
    assert group_split_ids(sorted(split["train"]), 3) == group_split_ids(sorted(split["train"]), 3)
    (inpaint_root / SPLIT_FILE).unlink()
    with pytest.raises(FileNotFoundError, match="split_mode='group'"):
        load_split(inpaint_root, "json")


def test_inpaint_dataset_items_boxes_and_joint_flips(inpaint_root: Path) -> None:
    ds = MedFakeInpaintDataset(inpaint_root, "all")
    assert len(ds) == 18 and ds.ids[0] == "src0_0_m1"
    item = ds[0]
    assert item["id"] == "src0_0_m1"
    for key in ("image", "density", "mask"):
        assert item[key].shape == (1, 128, 128) and item[key].dtype == torch.float32
    assert set(torch.unique(item["mask"]).tolist()) == {0.0, 1.0}
    assert float(item["density"].min()) >= 0.0 and 0.9 <= float(item["density"].max()) <= 1.0
    assert ds.is_manipulated(0) and not ds.is_manipulated(ds.ids.index("src0_0_orig"))
    assert ds.original_size(0) == (64, 64)
    assert LOCALIZER_PREPROCESS.size == 128
    boxes128, boxes64 = ds.gt_boxes(0), ds.gt_boxes(0, size=64)
    assert len(boxes128) == 1
    assert boxes128[0].x1 == pytest.approx(2 * boxes64[0].x1, abs=1e-3)
    # Mask box at 64 px (from the file) matches the label box.
    mask = np.asarray(Image.open(inpaint_root / "masks" / "src0_0_m1.png")) > 127
    ys, xs = np.nonzero(mask)
    assert (boxes64[0].x1, boxes64[0].y1, boxes64[0].x2, boxes64[0].y2) == pytest.approx(
        (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1), abs=1e-3
    )
    aug = MedFakeInpaintDataset(inpaint_root, "all", augment=True, seed=0)
    flips_seen = set()
    for epoch in range(8):
        aug.set_epoch(epoch)
        a = aug[0]
        for dims in ([], [-1], [-2], [-1, -2]):
            ref = {k: item[k].flip(dims) if dims else item[k] for k in ("image", "density", "mask")}
            if all(torch.equal(a[k], ref[k]) for k in ref):
                flips_seen.add(tuple(dims))
                break
        else:
            pytest.fail("augmented item is not a joint flip of the plain item")
    assert len(flips_seen) >= 3


def test_check_passes_a_clean_inpaint_folder(inpaint_root: Path) -> None:
    report = check_dataset(inpaint_root)
    assert report.ok, report.problems
    assert report.layouts == ["medfakeinpaint"]
    table = report.counts["medfakeinpaint"]
    assert table["images"] == {"total": 18, "train": 12, "val": 3, "test": 3}
    assert table["untouched"]["total"] == 6 and table["groups"]["total"] == 6


def test_check_finds_inpaint_problems(inpaint_root: Path, capsys: pytest.CaptureFixture) -> None:
    (inpaint_root / "images" / "src1_0_m1.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
    (inpaint_root / "masks" / "src2_0_m1.png").unlink()
    (inpaint_root / "labels" / "src3_0_m2.txt").write_text("0 0.1 0.1 0.05 0.05\n")
    (inpaint_root / SPLIT_FILE).write_text(
        json.dumps({"val": ["src0_0_m1", "ghost_0_m1"], "test": ["src0_0_m2"]})
    )
    report = check_dataset(inpaint_root)
    text = "\n".join(report.problems)
    assert "unreadable file" in text and "src1_0_m1.png" in text
    assert "no masks file for image: src2_0_m1" in text
    assert "src3_0_m2" in text and "disagree" in text
    assert "names a missing image: ghost_0_m1" in text
    assert "source group(s) across splits" in text  # src0_0 is in train, val and test
    assert main(["check", str(inpaint_root)]) == 1
    assert "NOT OK" in capsys.readouterr().out


def test_check_medfake_counts_and_problems(medfake_root: Path, tmp_path: Path) -> None:
    report = check_dataset(medfake_root)
    assert report.ok, report.problems
    table = report.counts["medfake"]
    assert table["lung_fake"]["total"] == 20 and table["lung_fake"]["train"] == 14
    # brain_real holds 4 JPEG / BMP / TIFF among 24, brain_fake 20 PNG: too few to tell the
    # classes apart (Fisher p 0.11), so no warning; an all-JPEG brain_fake is one.
    assert not any("differ in" in w for w in report.warnings), report.warnings
    for p in (medfake_root / "brain" / "fake").iterdir():
        _save(p.with_suffix(".jpg"), np.asarray(Image.open(p)), "JPEG")
        p.unlink()
    report = check_dataset(medfake_root)
    assert any(
        "brain: real and fake differ in format (BMP 4%, JPEG 8%, PNG 83%, TIFF 4% vs JPEG 100%)"
        in w
        for w in report.warnings
    ), report.warnings
    assert not any("chest: real and fake differ" in w for w in report.warnings)
    for p in (medfake_root / "kidney" / "fake").iterdir():
        p.unlink()
    (medfake_root / "chest" / "real" / "chest00.png").write_bytes(b"GIF89a nonsense")
    report = check_dataset(medfake_root)
    assert not report.ok
    assert "class kidney_fake has no images" in "\n".join(report.problems)
    assert any("unreadable image" in p and "chest00.png" in p for p in report.problems)
    assert not check_dataset(tmp_path / "nothing").ok


def test_readers_load_the_encoded_files_and_degrade_only_the_image(inpaint_root: Path) -> None:
    """JPEG and 16-bit PNG images (the builder's encode draw) are read like PNG ones; training
    degradation changes the localizer's image, never its density or mask, and keeps the flips."""
    from medfakedet.degrade import Degradation, EncodeSpec

    sl = generate_slice("brain", np.random.default_rng(7), 64)
    image, mask, _ = manipulate(sl.image, sl.tissue_mask, 1, np.random.default_rng(8))
    write_record(inpaint_root, "enc0_0_m1", image, mask, encode=EncodeSpec(1.0, "jpeg", 55, 8))
    write_record(inpaint_root, "enc1_0_m1", image, mask, encode=EncodeSpec(1.0, "png", 0, 16))
    assert (inpaint_root / "images" / "enc0_0_m1.jpg").is_file()
    with pytest.raises(ValueError, match="keep their geometry"):
        write_record(inpaint_root, "enc2_0_m1", image, mask, encode=EncodeSpec(2.0, "png", 0, 8))
    assert check_dataset(inpaint_root).ok
    ds = MedFakeInpaintDataset(inpaint_root, "all")
    jpg, png16 = ds[ds.ids.index("enc0_0_m1")], ds[ds.ids.index("enc1_0_m1")]
    assert torch.equal(jpg["mask"], png16["mask"]) and torch.equal(jpg["density"], png16["density"])
    # 16-bit PNG of 8-bit content is exact; JPEG q55 is close (measured 0.0073).
    assert float((jpg["image"] - png16["image"]).abs().mean()) < 0.02
    strong = Degradation(jpeg_p=1.0, blur_p=1.0, noise_p=1.0, resize_p=1.0)
    flat = MedFakeInpaintDataset(inpaint_root, "all", augment=True, seed=0)
    deg = MedFakeInpaintDataset(inpaint_root, "all", augment=True, seed=0, degradation=strong)
    for i in range(4):
        a, b = flat[i], deg[i]
        assert torch.equal(a["mask"], b["mask"]) and torch.equal(a["density"], b["density"])
        change = float((a["image"] - b["image"]).abs().mean())
        assert 0.004 < change < 0.06, change  # measured 0.012-0.024
        assert torch.equal(b["image"], deg[i]["image"])  # reproducible per (seed, epoch, index)


def test_medfake_dataset_degrades_with_or_without_the_paper_augmentation(
    medfake_root: Path,
) -> None:
    from medfakedet.degrade import Degradation

    d = Degradation(jpeg_p=1.0, noise_p=1.0)
    clean = MedFakeDataset(medfake_root, "train", seed=1)
    only = MedFakeDataset(medfake_root, "train", seed=1, degradation=d)
    both = MedFakeDataset(medfake_root, "train", seed=1, augment=True, degradation=d)
    inactive = MedFakeDataset(medfake_root, "train", seed=1, degradation=Degradation())
    assert inactive.degradation is None and torch.equal(inactive[0][0], clean[0][0])
    for i in range(3):
        x, y = only[i]
        assert y == clean[i][1] and torch.equal(x, only[i][0])
        change = float((x - clean[i][0]).abs().mean()) / 2
        assert 0.01 < change < 0.2, change  # noisy 32 px images: measured 0.02-0.06
        assert not torch.equal(both[i][0], x)  # flips / rotation on top


def test_medfake_real_degradation_touches_only_the_real_images(medfake_root: Path) -> None:
    """The real-only resample softens real images at the model size, leaves every fake exactly
    as it was, and leaves the shared degradation's draws of each image unchanged."""
    from medfakedet.degrade import Degradation, down_up

    shared = Degradation(noise_p=1.0)
    soften = Degradation(resize_p=1.0, resize_scale=(0.5, 0.5))
    base = MedFakeDataset(medfake_root, "all", seed=1, degradation=shared)
    real_soft = MedFakeDataset(
        medfake_root, "all", seed=1, degradation=shared, real_degradation=soften
    )
    plain = MedFakeDataset(medfake_root, "all", seed=1, real_degradation=soften)
    clean = MedFakeDataset(medfake_root, "all", seed=1)
    off = MedFakeDataset(medfake_root, "all", seed=1, real_degradation=Degradation())
    assert off.real_degradation is None and off._train is None
    labels = [s.is_fake for s in base.samples]
    assert any(labels) and not all(labels)
    for i, fake in enumerate(labels):
        x, y = real_soft[i]
        assert y == base[i][1]
        if fake:
            assert torch.equal(x, base[i][0])
        else:
            assert not torch.equal(x, base[i][0])
            # Without the shared degradation it is exactly a 0.5x down-up of the model-size image.
            size = CLASSIFIER_PREPROCESS.size
            raw = resize_tensor(to_tensor(clean.pixel_cache.pixels(clean.image_path(i))), size)
            want = normalize(to_channels(down_up(raw, 0.5), 3), CLASSIFIER_PREPROCESS)
            assert torch.allclose(plain[i][0], want, atol=1e-6)
            assert not torch.allclose(clean[i][0], want, atol=1e-3)


def test_shortcut_rule_needs_more_than_chance() -> None:
    """Six images per class drawn from one encode rule can sit 0.5 apart in total variation
    (the counts below are a real build of real-dev's chest); that is chance, not a shortcut.
    The same six with no size in common are one."""
    from medfakedet.data.check import _differ

    real = {"~128px": 3 / 6, "~181px": 1 / 6, "~64px": 1 / 6, "~91px": 1 / 6}
    fake = {"~128px": 2 / 6, "~181px": 3 / 6, "~256px": 1 / 6}
    assert not _differ(real, fake, 6, 6)
    assert _differ({"~64px": 1.0}, {"~256px": 1.0}, 6, 6)
    assert _differ({"~64px": 0.5, "~91px": 0.5}, {"~181px": 0.5, "~256px": 0.5}, 12, 12)
    assert not _differ({"~64px": 0.5, "~91px": 0.5}, {"~64px": 0.5, "~91px": 0.5}, 12, 12)
