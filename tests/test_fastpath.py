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


def _is_quantized(module: torch.nn.Module) -> bool:
    return any(isinstance(m, torch.ao.nn.quantized.Conv2d) for m in module.modules())


def test_int8_is_opt_in_and_only_for_resnet18(s8_dir, density_dir):  # noqa: F811
    resnet = Synthesis8Predictor.from_artifact(s8_dir).float_model
    unet = DensityPredictor.from_artifact(density_dir).float_model
    flags = {"avx512f", "avx512_bf16"}
    assert "int8" not in [p.name for p in fastpath.candidates(flags)]  # auto never measures it
    if "x86" not in torch.backends.quantized.supported_engines:
        pytest.skip("this torch has no x86 quantized engine")
    assert [p.name for p in fastpath.runnable(resnet, flags)][-1] == "int8"
    assert "int8" not in [p.name for p in fastpath.runnable(unet, flags)]


def test_forced_int8_runs_a_quantized_copy_and_keeps_the_float_model(s8_dir):  # noqa: F811
    if "x86" not in torch.backends.quantized.supported_engines:
        pytest.skip("this torch has no x86 quantized engine")
    plain = Synthesis8Predictor.from_artifact(s8_dir, cpu_path="fp32")
    q = Synthesis8Predictor.from_artifact(s8_dir, cpu_path="int8")
    assert q.runtime["cpu_path"] == "int8" and "forced" in q.runtime["reason"]
    assert _is_quantized(q.model) and not _is_quantized(q.float_model)
    assert q.runtime["check_set"] == f"{fastpath.CHECK_IMAGES} seeded fields"  # calibrated on
    # The same answers' shape; probabilities near fp32's (a random-init net: small logits).
    rng = np.random.default_rng(0)
    images = [encode_png(rng.random((96, 96), dtype=np.float32)) for _ in range(4)]
    a, b = plain.predict(images), q.predict(images)
    for x, y in zip(a, b, strict=True):
        assert x.keys() == y.keys()
        gaps = [abs(x["probabilities"][k] - y["probabilities"][k]) for k in x["probabilities"]]
        assert max(gaps) < 0.05
    # Grad-CAM needs gradients: it runs the float model, whatever the path.
    (explained,) = q.explain([images[0]])
    assert explained["heatmap_png"] and explained["explanation"]["layer"] == "layer4"


def test_int8_features_reach_the_in_distribution_check(s8_dir):  # noqa: F811
    """Eager quantisation keeps layer1..layer4 as modules: the hooks see dequantized features."""
    if "x86" not in torch.backends.quantized.supported_engines:
        pytest.skip("this torch has no x86 quantized engine")
    from medfakedet.ood import captured_features, stacked

    q = Synthesis8Predictor.from_artifact(s8_dir, cpu_path="int8")
    x = fastpath.check_inputs(q.cfg, 3, seed=5)
    with torch.inference_mode(), captured_features(q.model) as found:
        q.model(x)
    with torch.inference_mode(), captured_features(q.float_model) as ref:
        q.float_model(x)
    got, want = stacked(found), stacked(ref)
    assert {k: v.shape for k, v in got.items()} == {k: v.shape for k, v in want.items()}
    assert got["layer4"].shape == (3, 512)
    # close to the float features (quantisation error), not zeros or garbage
    rel = np.linalg.norm(got["layer4"] - want["layer4"]) / np.linalg.norm(want["layer4"])
    assert rel < 0.2


def test_forced_int8_on_the_localizer_falls_back_to_fp32(density_dir):  # noqa: F811
    p = DensityPredictor.from_artifact(density_dir, cpu_path="int8")
    assert p.runtime["cpu_path"] == "fp32"
    assert "no int8 version of UNetDensity" in p.runtime["reason"]
    assert p.model is p.float_model


def test_int8_passed_as_a_candidate_is_checked_then_chosen_or_rejected(s8_dir):  # noqa: F811
    if "x86" not in torch.backends.quantized.supported_engines:
        pytest.skip("this torch has no x86 quantized engine")
    model = Synthesis8Predictor.from_artifact(s8_dir).float_model
    paths = [fastpath.PATHS["fp32"], fastpath.PATHS["int8"]]
    args = (model, CLASSIFIER_PREPROCESS, fastpath.top1_agreement)
    strict = fastpath.choose(*args, 1.01, paths=paths, images=64)  # no score reaches 1.01
    assert strict.path.name == "fp32" and "int8" in strict.rejected
    assert strict.module is model and next(model.parameters()).is_contiguous()
    lax = fastpath.choose(*args, 0.0, paths=paths, images=64)
    assert set(lax.timings_ms) == {"fp32", "int8"} and 0 <= lax.agreement["int8"] <= 1
    if lax.path.name == "int8":  # measured faster here: the choice carries the quantized copy
        assert _is_quantized(lax.module)
