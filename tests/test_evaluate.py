"""Evaluation: metrics assembly on fixed predictions (numbers worked out by hand below), the
box-threshold choice, the corruptions, the report from its table specs, and the CLI end to end
on the session's trained artifacts."""

import json
import math

import numpy as np
import pytest
import torch

from medfakedet.density import Box
from medfakedet.preprocess import CLASSIFIER_PREPROCESS, LOCALIZER_PREPROCESS
from training.calibration import choose_box_threshold, fit_temperature
from training.corruptions import CORRUPTIONS, corrupt_batch
from training.evaluate import main
from training.inference import LocalizerPredictions
from training.report import Table, markdown_table, render_table, write_report
from training.task_metrics import (
    compute_localizer_metrics,
    compute_synthesis8_metrics,
    localizer_by_kind,
)

# ----------------------------------------------------------------------------------------------
# synthesis8: ten predictions
#
# labels 0 1 2 3 4 5 6 7 1 3, predictions 0 1 2 2 4 5 6 7 0 3: sample 3 (chest_fake) is called
# chest_real and sample 8 (brain_fake) brain_real. Accuracy 8/10.
# class 0: tp 1, fp 1, fn 0 -> P 1/2, R 1, F1 2/3      class 1: tp 1, fp 0, fn 1 -> P 1, R 1/2
# class 2: like class 0;  class 3: like class 1;  classes 4-7: F1 1
# macro-F1 = (4 * 2/3 + 4) / 8 = 5/6. Both errors keep the organ: organ accuracy 1.
#
# Each row has logit c on its predicted class and 0 elsewhere, so P(fake) = (e^c + 3)/(e^c + 7)
# when the predicted class is fake (> 1/2) and 4/(e^c + 7) otherwise (falling with c).
# Positives (fake): samples 1 5 7 9 (predicted fake, high scores) and 3 (c 2.5), 8 (c 0.5).
# Negatives: samples 0 2 4 6 with c 1 2 3 4. Low scores, highest first: s8 (c .5), n(c 1),
# n(c 2), s3 (c 2.5), n(c 3), n(c 4).
# AUC: 4 high positives beat 4 negatives (16), s8 beats 4 (4), s3 beats 2 (2): 22/24.
# AP: ranks 1-5 are positives (precision 1 up to recall 5/6); s3 comes 8th (precision 6/8):
# AP = 5/6 * 1 + 1/6 * 6/8 = 23/24.

S8_LABELS = np.array([0, 1, 2, 3, 4, 5, 6, 7, 1, 3])
S8_PRED = np.array([0, 1, 2, 2, 4, 5, 6, 7, 0, 3])
S8_CONF = np.array([1.0, 3.0, 2.0, 2.5, 3.0, 3.0, 4.0, 3.0, 0.5, 3.0])


def s8_logits():
    logits = np.zeros((10, 8))
    logits[np.arange(10), S8_PRED] = S8_CONF
    return logits


def test_synthesis8_metrics_by_hand():
    m = compute_synthesis8_metrics(s8_logits(), S8_LABELS, temperature=1.0)
    assert m["n"] == 10
    assert m["accuracy"] == pytest.approx(0.8)
    assert m["macro_f1"] == pytest.approx(5 / 6)
    pc = m["per_class"]
    assert (pc["brain_real"]["precision"], pc["brain_real"]["recall"]) == (0.5, 1.0)
    assert (pc["brain_fake"]["precision"], pc["brain_fake"]["recall"]) == (1.0, 0.5)
    assert pc["brain_fake"]["f1"] == pytest.approx(2 / 3)
    assert pc["chest_real"]["f1"] == pytest.approx(2 / 3)
    assert pc["chest_fake"]["support"] == 2
    assert all(pc[n]["f1"] == 1.0 for n in ("kidney_real", "kidney_fake", "lung_real", "lung_fake"))
    cm = np.array(m["confusion_matrix"])
    assert cm[3, 2] == 1 and cm[1, 0] == 1 and np.trace(cm) == 8
    assert m["organ_accuracy"] == 1.0
    rvf = m["real_vs_fake"]
    assert rvf["roc_auc"] == pytest.approx(22 / 24)
    assert rvf["average_precision"] == pytest.approx(23 / 24)
    # At P(fake) >= 0.5: 4 true positives, 2 misses, no false alarm.
    assert (rvf["precision"], rvf["recall"]) == (1.0, pytest.approx(4 / 6))
    cal = m["calibration"]
    assert cal["ece_before"] == pytest.approx(cal["ece_after"])
    assert cal["nll_before"] == pytest.approx(cal["nll_after"])


def test_synthesis8_temperature_changes_calibration_not_predictions():
    hot = s8_logits() * 10  # over-confident
    before = compute_synthesis8_metrics(hot, S8_LABELS, temperature=1.0)
    t = fit_temperature(hot, S8_LABELS)
    after = compute_synthesis8_metrics(hot, S8_LABELS, temperature=t)
    assert t > 1.0  # two confident mistakes: the fit softens
    assert after["accuracy"] == before["accuracy"] and after["macro_f1"] == before["macro_f1"]
    cal = after["calibration"]
    assert cal["temperature"] == t
    assert cal["nll_after"] < cal["nll_before"] == before["calibration"]["nll_after"]
    assert cal["ece_before"] == before["calibration"]["ece_after"]
    assert cal["ece_after"] != cal["ece_before"]


# ----------------------------------------------------------------------------------------------
# localizer: five 16x16 maps, presence threshold 0.3, box threshold 0.3, min_area 1
#
# A manipulated, gt (2,2,6,6) [16 px]; density 0.9 on rows 2-5, cols 2-10 -> box (2,2,11,6)
#   [36 px], IoU 16/36 = 0.444: a match at IoU 0.28, not at 0.5.
# B manipulated, gt (0,0,4,4) and (10,10,14,14); density 0.8 exactly on the first (IoU 1) and
#   0.5 on (10,0,12,2) [4 px]: a false box. The second gt box is missed.
# C untouched; a single pixel at 0.2: nothing.
# D untouched; 0.6 on (8,8,12,12): a false presence and a false box.
# E manipulated, gt (4,4,8,8); density peaks at 0.25: presence missed, box missed.
#
# presence: truth 1 1 0 0 1, peaks .9 .8 .2 .6 .25 -> predicted 1 1 0 1 0: tp 2, fp 1, fn 1,
#   tn 1: accuracy 3/5, P = R = F1 = 2/3; AUC: .9 and .8 beat both negatives (4), .25 beats .2
#   (1): 5/6.
# boxes @0.5: tp 1 (B), fp 3 (A's, B's false, D's), fn 3 -> P = R = F1 = 1/4, mean IoU 1.
# boxes @0.28: tp 2, fp 2, fn 2 -> 1/2; mean IoU (4/9 + 1) / 2 = 13/18.
# count MAE: predicted 1 2 0 1 0 vs true 1 2 0 0 1 -> 2/5.
# pixels (density >= .3 vs gt masks = gt boxes): predicted 36 + 20 + 16 = 72, true 16 + 32 + 16
#   = 64, overlap 16 + 16 = 32: IoU 32/104, F1 64/136.


def _fill(a, box, value):
    x1, y1, x2, y2 = box
    a[y1:y2, x1:x2] = value


def localizer_fixture() -> LocalizerPredictions:
    density = np.zeros((5, 16, 16), dtype=np.float32)
    _fill(density[0], (2, 2, 11, 6), 0.9)
    _fill(density[1], (0, 0, 4, 4), 0.8)
    _fill(density[1], (10, 0, 12, 2), 0.5)
    density[2, 5, 5] = 0.2
    _fill(density[3], (8, 8, 12, 12), 0.6)
    _fill(density[4], (4, 4, 8, 8), 0.25)
    gt_boxes = [
        [Box(2, 2, 6, 6)],
        [Box(0, 0, 4, 4), Box(10, 10, 14, 14)],
        [],
        [],
        [Box(4, 4, 8, 8)],
    ]
    gt_mask = np.zeros_like(density, dtype=bool)
    for i, boxes in enumerate(gt_boxes):
        for b in boxes:
            _fill(gt_mask[i], tuple(int(v) for v in (b.x1, b.y1, b.x2, b.y2)), True)
    return LocalizerPredictions(
        density=density,
        mask_pred=gt_mask.copy(),
        gt_mask=gt_mask,
        gt_boxes=gt_boxes,
        present=np.array([True, True, False, False, True]),
        ids=list("ABCDE"),
    )


def test_localizer_metrics_by_hand():
    m = compute_localizer_metrics(localizer_fixture(), 0.3, 0.3, min_area=1)
    assert (m["n"], m["n_manipulated"], m["n_gt_boxes"]) == (5, 3, 4)
    p = m["presence"]
    assert (p["tp"], p["fp"], p["fn"], p["tn"]) == (2, 1, 1, 1)
    assert p["accuracy"] == pytest.approx(0.6)
    assert p["precision"] == pytest.approx(2 / 3)
    assert p["recall"] == pytest.approx(2 / 3)
    assert p["f1"] == pytest.approx(2 / 3)
    assert p["roc_auc"] == pytest.approx(5 / 6)
    b5, b28 = m["boxes"]["iou_0.5"], m["boxes"]["iou_0.28"]
    assert (b5["tp"], b5["fp"], b5["fn"]) == (1, 3, 3)
    assert b5["precision"] == b5["recall"] == b5["f1"] == pytest.approx(0.25)
    assert b5["mean_iou"] == pytest.approx(1.0)
    assert (b28["tp"], b28["fp"], b28["fn"]) == (2, 2, 2)
    assert b28["f1"] == pytest.approx(0.5)
    assert b28["mean_iou"] == pytest.approx(13 / 18)
    assert m["count_mae"] == pytest.approx(0.4)
    assert m["pixel"]["iou"] == pytest.approx(32 / 104)
    assert m["pixel"]["f1"] == pytest.approx(64 / 136)
    assert m["mask_head_pixel"] == {"iou": 1.0, "f1": 1.0}


def test_localizer_metrics_use_the_raw_map():
    # Presence reads the raw map: image C (peak 0.2) is not flagged at 0.3, and doubling its
    # map (peak 0.4) flags it. Dividing each map by its own max would flag C both times.
    pred = localizer_fixture()
    m = compute_localizer_metrics(pred, 0.3, 0.3, min_area=1)
    assert (m["presence"]["tn"], m["presence"]["fp"]) == (1, 1)
    pred.density[2] *= 2
    m = compute_localizer_metrics(pred, 0.3, 0.3, min_area=1)
    assert (m["presence"]["tn"], m["presence"]["fp"]) == (0, 2)
    assert m["boxes"]["iou_0.5"]["fp"] == 4  # and C's pixel is now a served (false) box


def test_boxes_count_only_where_their_peak_reaches_the_presence_threshold():
    # Presence 0.7, boxes 0.3: A (peak .9) and B's first block (.8) stay; B's .5 block and D's
    # .6 block are dropped although they reach 0.3. @0.5: A's box (2,2,11,6) vs (2,2,6,6) has
    # IoU 16/36 -> fp; B's matches -> tp 1, fp 1, fn 3: P 1/2, R 1/4, F1 1/3. Counts 1 1 0 0 0
    # vs 1 2 0 0 1 -> MAE 2/5.
    m = compute_localizer_metrics(localizer_fixture(), 0.7, 0.3, min_area=1)
    b5 = m["boxes"]["iou_0.5"]
    assert (b5["tp"], b5["fp"], b5["fn"]) == (1, 1, 3)
    assert b5["f1"] == pytest.approx(1 / 3)
    assert m["count_mae"] == pytest.approx(0.4)


def test_localizer_by_kind_by_hand():
    # Single-kind images only: lesion = A, B ("lesion+lesion"); removal = E; untouched = C, D.
    # lesion: 3 regions; boxes A (IoU 0.44, miss), B's two (one hit) -> recall 1/3, 3 boxes,
    #   peaks .9 .8 -> flagged 1, median .85.
    # removal: E peaks .25 < .3 -> flagged 0, no box, recall 0.
    # untouched: C .2, D .6 -> flagged 1/2, median .4, D's block is one box; no regions.
    kinds = {"A": "lesion", "B": "lesion+lesion", "C": "", "D": "", "E": "removal", "Z": "x"}
    rows = {r["kind"]: r for r in localizer_by_kind(localizer_fixture(), kinds, 0.3, 0.3, 1)}
    assert list(rows) == ["lesion", "removal", "untouched"]
    lesion, removal, untouched = rows["lesion"], rows["removal"], rows["untouched"]
    assert (lesion["images"], lesion["regions"], lesion["boxes_predicted"]) == (2, 3, 3)
    assert lesion["box_recall@0.5"] == pytest.approx(1 / 3)
    assert lesion["flagged"] == 1.0 and lesion["median_presence_score"] == pytest.approx(0.85)
    assert (removal["flagged"], removal["box_recall@0.5"], removal["boxes_predicted"]) == (0, 0, 0)
    assert (untouched["images"], untouched["regions"], untouched["box_recall@0.5"]) == (2, 0, None)
    assert untouched["flagged"] == 0.5 and untouched["boxes_predicted"] == 1
    assert untouched["median_presence_score"] == pytest.approx(0.4)


def test_box_threshold_choice():
    # Box F1 at IoU 0.5 by threshold t (candidates 0.05, 0.06, ... 0.95):
    # t <= 0.20: C's pixel is a false box too: tp 2 (B, E), fp 4, fn 2 -> 0.4
    # 0.21-0.25: tp 2 (B, E), fp 3 (A, B's false, D), fn 2 -> P 2/5, R 1/2, F1 4/9 (best)
    # 0.26-0.50: 1/4;  0.51-0.60: 2/7;  0.61-0.80: 1/3;  above: 0.
    pred = localizer_fixture()
    thr, f1 = choose_box_threshold(pred.density, pred.gt_boxes, 1, iou_threshold=0.5)
    assert f1 == pytest.approx(4 / 9)
    assert thr == pytest.approx(0.23)  # middle of the best run 0.21..0.25


def test_markdown_table():
    text = markdown_table(["a", "b"], [[1, 0.5], ["x", None]])
    assert text.splitlines() == ["| a | b |", "|---|---|", "| 1 | 0.5000 |", "| x | n/a |"]


RESULT = {
    "thr": 0.25,
    "scores": {"cat": {"p": 0.5, "n": 3}, "dog": {"p": 1.0, "n": 1}},
    "runs": [
        {"kind": "a", "nested": {"f1": 0.125}, "recall@0.5": 1.0},
        {"kind": "b", "nested": {"f1": None}, "recall@0.5": 0.5},
    ],
    "pair": {"before": 0.5, "after": 0.25},
}


def test_tables_render_from_specs():
    keyed = Table("Scores at {thr:g}", rows="scores", columns=(("class", "$key"), ("P", "p")))
    assert render_table(keyed, RESULT) == [
        "## Scores at 0.25", "", "| class | P |", "|---|---|", "| cat | 0.5000 |",
        "| dog | 1.0000 |", "",
    ]  # fmt: skip
    # A dotted path reads nested keys; a key holding a dot is found whole.
    columns = (("kind", "kind"), ("F1", "nested.f1"), ("R", "recall@0.5"))
    listed = Table("Runs", rows="runs", columns=columns, note="A note.", after="![plot](p.png)")
    assert render_table(listed, RESULT) == [
        "## Runs", "", "A note.", "", "| kind | F1 | R |", "|---|---|---|",
        "| a | 0.1250 | 1.0000 |", "| b | n/a | 0.5000 |", "", "![plot](p.png)", "",
    ]  # fmt: skip
    labelled = Table(
        "Summary",
        rows=(("threshold {thr}", "thr"), ("before / after", ("pair.before", "pair.after"))),
        columns=(("metric", "$key"), ("value", "")),
    )
    assert render_table(labelled, RESULT)[4:6] == [
        "| threshold 0.25 | 0.2500 |",
        "| before / after | 0.5000 / 0.2500 |",
    ]
    every_key = Table("All", rows="scores", columns=None, key_header="name")
    assert render_table(every_key, RESULT)[2:4] == ["| name | p | n |", "|---|---|---|"]
    assert render_table(Table("Gone", rows="x", columns=None, when="missing"), RESULT) == []


def test_localizer_report_sections_from_the_metrics(tmp_path):
    pred = localizer_fixture()
    result = {
        "task": "manipulation_density", "split": "test", "artifact": "a", "arch": "unet_density",
        "version": "1.0", "data": "d", "split_mode": "json", "created": "today",
        "metrics": compute_localizer_metrics(pred, 0.3, 0.3, min_area=1),
        "sweep": [], "eval_seconds": 1.0,
        "machine": {"cpu": "c", "cpu_cores": 2, "torch_threads": 2, "device": "cpu",
                    "torch": "t", "python": "p"},
    }  # fmt: skip
    text = write_report(result, tmp_path).read_text()
    headings = [line for line in text.splitlines() if line.startswith("## ")]
    assert headings == [
        "## Presence (max of the raw density map >= presence threshold)",
        "## Boxes (density >= 0.3, min_area 1)",
        "## Pixels",
        "## Threshold sweep (the paper's ablation)",
    ]  # no per-kind or robustness table without their data
    assert "| 0.3000 | 0.6000 | 0.6667 | 0.6667 | 0.6667 | 0.8333 | 5 | 3 |" in text
    assert "| 0.5000 | 0.2500 | 0.2500 | 0.2500 | 1.0000 | 0.4000 | 1 | 3 | 3 |" in text
    assert "| density >= 0.3 vs mask | 0.3077 | 0.4706 |" in text


@pytest.mark.parametrize("name", sorted(CORRUPTIONS))
@pytest.mark.parametrize("cfg", [CLASSIFIER_PREPROCESS, LOCALIZER_PREPROCESS], ids=["rgb", "gray"])
def test_corruptions_keep_shape_and_are_deterministic(name, cfg):
    g = torch.Generator().manual_seed(0)
    x01 = torch.rand(2, 1, 32, 32, generator=g).expand(2, cfg.channels, 32, 32)
    mean = torch.tensor(cfg.mean).view(1, -1, 1, 1)
    std = torch.tensor(cfg.std).view(1, -1, 1, 1)
    x = (x01 - mean) / std
    a = corrupt_batch(x, cfg, name, 0)
    b = corrupt_batch(x, cfg, name, 0)
    assert a.shape == x.shape
    assert torch.equal(a, b)
    diff = (a - x).abs().mean().item()
    assert 0 < diff < 0.5, diff  # changed, but still the same picture


# ----------------------------------------------------------------------------------------------
# end to end on trained artifacts (session fixtures in conftest.py)


@pytest.mark.slow
def test_evaluate_cli_synthesis8(trained_artifacts, tmp_path, capsys, quick_floors):
    out = tmp_path / "s8"
    rc = main(
        [
            "--artifact", str(trained_artifacts["synthesis8"]),
            "--data", str(trained_artifacts["data"]),
            "--out", str(out), "--quiet",
        ]
    )  # fmt: skip
    assert rc == 0
    for name in ("metrics.json", "report.md", "confusion_matrix.png", "roc_real_vs_fake.png",
                 "reliability.png"):  # fmt: skip
        assert (out / name).is_file() and (out / name).stat().st_size > 0, name
    result = json.loads((out / "metrics.json").read_text())
    assert result["task"] == "synthesis8" and result["split"] == "test"
    m = result["metrics"]
    assert m["macro_f1"] >= quick_floors["synthesis8_macro_f1"]
    assert sum(map(sum, m["confusion_matrix"])) == m["n"]
    assert set(result["robustness"]) == {"clean", *CORRUPTIONS}
    assert result["robustness"]["clean"]["macro_f1"] == m["macro_f1"]
    assert math.isfinite(result["calibration"]["temperature"])
    report = (out / "report.md").read_text()
    assert "macro-F1" in report and "Robustness" in report and "torch" in report
    assert "clean" in capsys.readouterr().out


@pytest.mark.slow
def test_evaluate_cli_localizer(trained_artifacts, tmp_path, quick_floors):
    out = tmp_path / "loc"
    rc = main(
        [
            "--artifact", str(trained_artifacts["manipulation_density"]),
            "--data", str(trained_artifacts["data"]),
            "--out", str(out), "--quiet",
        ]
    )  # fmt: skip
    assert rc == 0
    for name in ("metrics.json", "report.md", "threshold_sweep.png", "examples.png"):
        assert (out / name).is_file() and (out / name).stat().st_size > 0, name
    result = json.loads((out / "metrics.json").read_text())
    m = result["metrics"]
    assert result["task"] == "manipulation_density"
    assert m["presence"]["roc_auc"] >= quick_floors["presence_auc"]
    assert m["boxes"]["iou_0.5"]["f1"] >= quick_floors["box_f1_iou_0.5"]
    assert len(result["sweep"]) == 19 and result["sweep"][0]["threshold"] == 0.05
    assert set(result["robustness"]) == {"clean", *CORRUPTIONS}
    # The builder's manifest gives the per-kind table: the default kinds plus untouched images.
    by_kind = {r["kind"]: r for r in result["by_kind"]}
    assert set(by_kind) == {"lesion", "removal", "untouched"}
    assert by_kind["untouched"]["regions"] == 0 and by_kind["lesion"]["regions"] > 0
    assert by_kind["lesion"]["box_recall@0.5"] >= 0.8  # inserted lesions are the easy kind
    report = (out / "report.md").read_text()
    assert "Threshold sweep" in report and "Presence" in report
    assert "By manipulation kind" in report
