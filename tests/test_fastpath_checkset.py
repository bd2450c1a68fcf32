"""The CPU path's agreement check on the artifact's stored check set, and the stable choice
(issue #12)."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch

from medfakedet import checkset, fastpath
from medfakedet.data.phantoms import ORGAN_NAMES, generate_slice
from medfakedet.deploy.archive import stage_archive_files
from medfakedet.imaging import decode_image, encode_png
from medfakedet.predictors import Synthesis8Predictor
from medfakedet.preprocess import (
    CLASSIFIER_PREPROCESS,
    LOCALIZER_PREPROCESS,
    PreprocessConfig,
    preprocess_batch,
)
from tests.test_fastpath import Negated, small_classifier
from tests.test_predictors import s8_dir  # noqa: F401 (fixture)


@pytest.fixture(autouse=True)
def short_timing(monkeypatch):
    monkeypatch.delenv(fastpath.CPU_PATH_ENV, raising=False)
    monkeypatch.setattr(fastpath, "TIMING_REPEATS", 1)
    monkeypatch.setattr(fastpath, "CHECK_IMAGES", 32)  # the seeded fallback: short here


@pytest.fixture
def scans(tmp_path):
    """12 encoded phantom slices (PNG, 96 to 160 px) in organ folders, like a training set."""
    rng = np.random.default_rng(3)
    for i in range(12):
        organ = ORGAN_NAMES[i % 4]
        image = generate_slice(organ, rng, size=96 + 32 * (i % 3)).image
        folder = tmp_path / "scans" / organ
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"{i:02d}.png").write_bytes(encode_png(image.astype(np.float32) / 255))
    (tmp_path / "scans" / "notes.txt").write_text("not an image")
    return tmp_path / "scans"


def test_check_set_keeps_the_served_inputs_of_a_seeded_sample(scans, tmp_path):
    files = checkset.sample_files([scans], 8, seed=1)
    assert files == checkset.sample_files([scans], 8, seed=1) and len(set(files)) == 8
    assert all(f.suffix == ".png" for f in files)
    pixels = checkset.build(files, CLASSIFIER_PREPROCESS)
    assert pixels.dtype == torch.uint8 and pixels.shape == (8, 1, 128, 128)  # gray: one channel
    checkset.save(tmp_path, pixels)
    x = checkset.load(tmp_path, CLASSIFIER_PREPROCESS)
    served = preprocess_batch(
        [decode_image(f.read_bytes()).pixels for f in files], CLASSIFIER_PREPROCESS
    )
    assert x.shape == served.shape == (8, 3, 128, 128)
    assert float((x - served).abs().max()) <= 1 / 255 / 0.5 + 1e-6  # uint8 rounding only
    assert checkset.load(tmp_path, LOCALIZER_PREPROCESS).shape == (8, 1, 128, 128)
    assert checkset.load(tmp_path, PreprocessConfig(size=64)) is None  # another model size
    assert checkset.load(tmp_path / "elsewhere", CLASSIFIER_PREPROCESS) is None
    with pytest.raises(ValueError, match="no .png/.jpg/.jpeg images"):
        checkset.sample_files([tmp_path / "elsewhere"], 4)


def test_a_disagreeing_path_is_rejected_on_the_stored_set():
    model = small_classifier()
    stored = fastpath.check_inputs(CLASSIFIER_PREPROCESS, 64, seed=5)
    choice = fastpath.choose(
        model,
        CLASSIFIER_PREPROCESS,
        fastpath.top1_agreement,
        fastpath.MIN_TOP1_AGREEMENT,
        paths=[fastpath.PATHS["fp32"], Negated("negated")],
        images=48,
        check_set=stored,
    )
    assert choice.path.name == "fp32" and "negated" in choice.rejected
    assert choice.check_set == "64 stored training images"  # all of it, whatever `images` says


def test_the_served_predictor_checks_on_the_artifact_s_check_set_and_the_archive_carries_it(
    s8_dir,  # noqa: F811
    scans,
    tmp_path,
):
    artifact = shutil.copytree(s8_dir, tmp_path / "s8")
    assert (
        checkset.main(["--artifact", str(artifact), "--images", str(scans), "--count", "10"]) == 0
    )
    auto = Synthesis8Predictor.from_artifact(artifact, cpu_path="auto")
    assert auto.runtime["check_set"] == "10 stored training images"
    assert auto.runtime["agreement"]["fp32_cl"] == 1.0  # same maths, another memory layout
    plain = Synthesis8Predictor.from_artifact(s8_dir, cpu_path="auto")
    assert plain.runtime["check_set"] == f"{fastpath.CHECK_IMAGES} seeded fields"
    stage = stage_archive_files(artifact, tmp_path / "stage")
    assert (stage / checkset.CHECK_FILE).read_bytes() == (
        artifact / checkset.CHECK_FILE
    ).read_bytes()
    assert (stage / "medfakedet" / "checkset.py").is_file()  # the worker imports it


@pytest.mark.parametrize(
    ("timings", "adopted"),
    [
        ({"fp32": 100.0, "fp32_cl": 60.0, "bf16_cl": 57.0}, "fp32_cl"),  # bf16 within 10 %
        ({"fp32": 100.0, "fp32_cl": 95.0, "bf16_cl": 50.0}, "bf16_cl"),
        ({"fp32": 100.0, "fp32_cl": 92.0}, "fp32"),  # fp32 within 10 % of the fastest
        ({"fp32": 100.0, "fp32_cl": 97.0, "bf16_cl": 120.0}, "fp32"),  # under MIN_GAIN
        ({"fp32": 100.0}, "fp32"),
    ],
)
def test_the_choice_prefers_the_path_nearest_fp32_within_the_margin(timings, adopted):
    assert fastpath.preferred(timings) == adopted
