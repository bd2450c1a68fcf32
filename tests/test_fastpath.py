"""The CPU path chosen at load (issue #12): agreement check, forcing, metadata."""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import pytest
import torch

from medfakedet import fastpath
from medfakedet.fastpath import CpuPath
from medfakedet.imaging import encode_png
from medfakedet.predictors import DensityPredictor, Synthesis8Predictor
from medfakedet.preprocess import CLASSIFIER_PREPROCESS
from tests.test_predictors import density_dir, s8_dir  # noqa: F401 (fixtures)

AGREEMENT_NEGATED = 0.305  # measured: the classes of 61 of the 200 fixed inputs survive


@dataclass(frozen=True)
class Negated(CpuPath):
    """A broken candidate: it runs the model on the negative of each input."""

    def inputs(self, x: torch.Tensor) -> torch.Tensor:
        return -x


def small_classifier() -> torch.nn.Module:
    """A seeded conv -> pool -> linear net whose top-1 class depends on the input."""
    torch.manual_seed(0)
    return torch.nn.Sequential(
        torch.nn.Conv2d(3, 16, 3, padding=1),
        torch.nn.AdaptiveAvgPool2d(1),
        torch.nn.Flatten(),
        torch.nn.Linear(16, 8),
    ).eval()


@pytest.fixture(autouse=True)
def fast_checks(monkeypatch):
    """No forced path from the caller's environment; a short check (the machine is shared)."""
    monkeypatch.delenv(fastpath.CPU_PATH_ENV, raising=False)
    monkeypatch.setattr(fastpath, "CHECK_IMAGES", 32)
    monkeypatch.setattr(fastpath, "BOX_CHECK_IMAGES", 8)
    monkeypatch.setattr(fastpath, "TIMING_REPEATS", 1)


def test_bf16_is_a_candidate_only_with_native_units():
    assert [p.name for p in fastpath.candidates({"avx2"})] == ["fp32", "fp32_cl"]
    names = [p.name for p in fastpath.candidates({"avx512f", "avx512_bf16"})]
    assert names == ["fp32", "fp32_cl", "bf16_cl"]
    assert fastpath.native_bf16({"amx_bf16"}) and not fastpath.native_bf16({"avx512f"})


def test_a_disagreeing_candidate_is_rejected_and_fp32_kept(caplog):
    model = small_classifier()
    broken = Negated("negated", channels_last=True)
    with caplog.at_level(logging.INFO, logger="medfakedet.fastpath"):
        choice = fastpath.choose(
            model,
            CLASSIFIER_PREPROCESS,
            fastpath.top1_agreement,
            fastpath.MIN_TOP1_AGREEMENT,
            paths=[fastpath.PATHS["fp32"], broken],
            images=200,
        )
    assert choice.path.name == "fp32"
    assert choice.agreement["negated"] == pytest.approx(AGREEMENT_NEGATED)
    assert "negated" in choice.rejected and "negated" not in choice.timings_ms
    assert "CPU path fp32" in caplog.text
    assert next(model.parameters()).is_contiguous()  # the model is back on the fp32 layout


def test_an_agreeing_candidate_is_checked_and_timed():
    model = small_classifier()
    choice = fastpath.choose(
        model,
        CLASSIFIER_PREPROCESS,
        fastpath.top1_agreement,
        fastpath.MIN_TOP1_AGREEMENT,
        paths=[fastpath.PATHS["fp32"], fastpath.PATHS["fp32_cl"]],
        images=200,
    )
    assert choice.agreement["fp32_cl"] >= 0.995
    assert set(choice.timings_ms) == {"fp32", "fp32_cl"}
    assert choice.path.name in ("fp32", "fp32_cl")  # whichever was faster here


def test_box_agreement_scores_shifted_boxes_low():
    maps = torch.zeros(2, 1, 64, 64)
    maps[0, 0, 10:30, 10:30] = 1.0
    shifted = maps.roll(8, dims=-1)
    score = fastpath.box_agreement(0.5)
    assert score(maps, maps) == 1.0
    # image 0: IoU of two 20x20 boxes 8 px apart = 240/560; image 1: empty on both sides
    assert score(maps, shifted) == pytest.approx((240 / 560 + 1.0) / 2)


def test_forced_path_by_env_and_setting_shows_in_metadata(s8_dir, monkeypatch):  # noqa: F811
    p = Synthesis8Predictor.from_artifact(s8_dir, cpu_path="fp32_cl")
    assert p.runtime["cpu_path"] == "fp32_cl" and "forced" in p.runtime["reason"]
    assert next(p.model.parameters()).is_contiguous(memory_format=torch.channels_last)
    monkeypatch.setenv(fastpath.CPU_PATH_ENV, "fp32")  # the environment wins over the setting
    q = Synthesis8Predictor.from_artifact(s8_dir, cpu_path="fp32_cl")
    assert q.runtime["cpu_path"] == "fp32" and q.cpu_path.name == "fp32"
    monkeypatch.setenv(fastpath.CPU_PATH_ENV, "int4")
    with pytest.raises(ValueError, match="use one of"):
        Synthesis8Predictor.from_artifact(s8_dir)


def test_auto_path_finds_the_same_boxes_as_fp32(density_dir):  # noqa: F811
    """(synthesis8's auto path is checked on the served model: tests/integration/test_perf_*.)"""
    image = np.zeros((128, 128), np.float32)
    image[30:70, 40:90] = 0.9
    auto = DensityPredictor.from_artifact(density_dir, cpu_path="auto")
    plain = DensityPredictor.from_artifact(density_dir, cpu_path="fp32")
    assert auto.runtime["reason"].startswith("measured") and "fp32" in auto.runtime["timings_ms"]
    a, b = auto.predict([encode_png(image)])[0], plain.predict([encode_png(image)])[0]
    assert a["count"] == b["count"] == 1
    assert a["boxes"][0]["x1"] == pytest.approx(b["boxes"][0]["x1"], abs=2)
    assert set(auto.timings) == {"decode", "preprocess", "forward", "postprocess"}
