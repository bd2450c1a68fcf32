"""Metrics (scikit-learn behind medfakedet.metrics) and calibration (training.calibration) on
tiny fixed examples whose values are computed by hand in the comments."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.stats import mannwhitneyu

from medfakedet.density import Box
from medfakedet.metrics import (
    average_precision,
    binary_counts,
    binary_metrics,
    box_detection_metrics,
    classification_report,
    count_mae,
    expected_calibration_error,
    negative_log_likelihood,
    pixel_iou_f1,
    precision_recall_f1,
    roc_auc,
    roc_curve,
    softmax,
)
from training.calibration import (
    choose_threshold,
    fit_temperature,
    middle_of_best_run,
    threshold_sweep,
)

# --------------------------------------------------------------------------------------------
# precision / recall / F1


def test_precision_recall_f1_by_hand_and_undefined_cases() -> None:
    # tp 3, fp 1, fn 2: P = 3/4, R = 3/5, F1 = 2 * .75 * .6 / 1.35 = 2/3.
    assert precision_recall_f1(3, 1, 2) == pytest.approx((0.75, 0.6, 2 / 3))
    assert precision_recall_f1(0, 0, 5) == (0.0, 0.0, 0.0)  # nothing predicted
    assert precision_recall_f1(0, 4, 0) == (0.0, 0.0, 0.0)  # nothing to find


def test_binary_metrics_by_hand() -> None:
    y_true = [1, 1, 1, 0, 0, 0, 1, 0]
    y_pred = [1, 0, 1, 1, 0, 0, 1, 0]
    # tp: idx 0, 2, 6 = 3; fp: idx 3 = 1; fn: idx 1 = 1; tn: idx 4, 5, 7 = 3.
    assert binary_counts(y_true, y_pred) == (3, 1, 1, 3)
    m = binary_metrics(y_true, y_pred)
    assert m["accuracy"] == pytest.approx(6 / 8)
    assert (m["precision"], m["recall"], m["f1"]) == pytest.approx((0.75, 0.75, 0.75))
    assert (m["tp"], m["fp"], m["fn"], m["tn"]) == (3, 1, 1, 3)
    with pytest.raises(ValueError, match="0/1"):
        binary_metrics([0, 2], [0, 1])
    with pytest.raises(ValueError, match="same length"):
        binary_metrics([0, 1], [0])


def test_classification_report_three_class_toy() -> None:
    y_true = [0, 0, 0, 1, 1, 2, 2, 2, 2]
    y_pred = [0, 1, 0, 1, 1, 2, 2, 0, 2]
    report = classification_report(y_true, y_pred, ["a", "b", "c"])
    # Rows = true class: a -> (2 a, 1 b, 0 c); b -> (0, 2, 0); c -> (1, 0, 3).
    assert report["confusion_matrix"] == [[2, 1, 0], [0, 2, 0], [1, 0, 3]]
    # Column sums 3, 3, 3. a: P 2/3 R 2/3 F1 2/3; b: P 2/3 R 1 F1 0.8; c: P 1 R 3/4 F1 6/7.
    a, b, c = (report["per_class"][k] for k in "abc")
    assert (a["precision"], a["recall"], a["f1"], a["support"]) == pytest.approx(
        (2 / 3, 2 / 3, 2 / 3, 3)
    )
    assert (b["precision"], b["recall"], b["f1"], b["support"]) == pytest.approx((2 / 3, 1, 0.8, 2))
    assert (c["precision"], c["recall"], c["f1"], c["support"]) == pytest.approx(
        (1, 0.75, 6 / 7, 4)
    )
    assert report["accuracy"] == pytest.approx(7 / 9)
    # Macro F1 = (2/3 + 4/5 + 6/7) / 3 = 244/315.
    assert report["macro_f1"] == pytest.approx(244 / 315)
    assert report["n"] == 9 and report["class_names"] == ["a", "b", "c"]


def test_classification_report_macro_f1_skips_classes_absent_from_both() -> None:
    # Class "d" never occurs: macro F1 is over a, b only -> (1 + 1) / 2.
    report = classification_report([0, 1], [0, 1], ["a", "b", "d"])
    assert report["macro_f1"] == 1.0
    assert report["per_class"]["d"]["support"] == 0
    with pytest.raises(ValueError, match=r"class indices in 0\.\.2"):
        classification_report([0, 3], [0, 1], ["a", "b", "d"])


# --------------------------------------------------------------------------------------------
# ranking


Y = [1, 1, 0, 0, 1]
S = [0.9, 0.4, 0.35, 0.8, 0.1]


def test_roc_auc_by_hand() -> None:
    # Positives .9, .4, .1; negatives .35, .8. Pairs with pos > neg: (.9,.35) (.9,.8) (.4,.35)
    # = 3 of 3 * 2 = 6 pairs -> AUC = 1/2.
    assert roc_auc(Y, S) == pytest.approx(0.5)
    # Ties count one half: pos .5, .7; neg .5, .2 -> (.5=.5) 0.5 + (.5>.2) + (.7>.5) + (.7>.2)
    # = 3.5 of 4.
    assert roc_auc([1, 0, 1, 0], [0.5, 0.5, 0.7, 0.2]) == pytest.approx(0.875)
    assert roc_auc([0, 1], [0.1, 0.9]) == 1.0 and roc_auc([1, 0], [0.1, 0.9]) == 0.0
    with pytest.raises(ValueError, match="both classes"):
        roc_auc([1, 1], [0.2, 0.3])


def test_roc_auc_equals_mann_whitney_u_on_random_scores_with_ties() -> None:
    rng = np.random.default_rng(3)
    y = rng.integers(0, 2, size=300)
    scores = np.round(rng.normal(size=300) + 0.7 * y, 1)  # rounding makes many ties
    u = mannwhitneyu(scores[y == 1], scores[y == 0]).statistic
    assert roc_auc(y, scores) == pytest.approx(u / ((y == 1).sum() * (y == 0).sum()))


def test_average_precision_by_hand() -> None:
    # Sorted by score: .9 (1), .8 (0), .4 (1), .35 (0), .1 (1); 3 positives.
    # thr .9: P 1,   R 1/3 | .8: P 1/2, R 1/3 | .4: P 2/3, R 2/3 | .35: P 1/2, R 2/3
    # .1: P 3/5, R 1.   AP = 1/3 * 1 + 1/3 * 2/3 + 1/3 * 3/5 = 34/45.
    assert average_precision(Y, S) == pytest.approx(34 / 45)
    # A tie groups samples into one threshold: [.5 (1), .5 (0)] then .2 (1):
    # thr .5: P 1/2, R 1/2 | .2: P 2/3, R 1 -> AP = 1/2 * 1/2 + 1/2 * 2/3 = 7/12.
    assert average_precision([1, 0, 1], [0.5, 0.5, 0.2]) == pytest.approx(7 / 12)
    with pytest.raises(ValueError, match="at least one positive"):
        average_precision([0, 0], [0.1, 0.2])


def test_roc_curve_by_hand() -> None:
    fpr, tpr, thr = roc_curve(Y, S)
    # Thresholds inf, .9, .8, .4, .35, .1 -> (FP, TP) (0,0) (0,1) (1,1) (1,2) (2,2) (2,3).
    np.testing.assert_allclose(thr, [np.inf, 0.9, 0.8, 0.4, 0.35, 0.1])
    np.testing.assert_allclose(fpr, [0, 0, 0.5, 0.5, 1, 1])
    np.testing.assert_allclose(tpr, [0, 1 / 3, 1 / 3, 2 / 3, 2 / 3, 1])
    # The trapezoid area of this curve is the rank AUC.
    assert np.trapezoid(tpr, fpr) == pytest.approx(roc_auc(Y, S))
    # A tie is one point; a rate whose class is absent is 0 (not NaN).
    fpr, tpr, thr = roc_curve([1, 1, 0], [0.5, 0.5, 0.2])
    np.testing.assert_allclose(thr, [np.inf, 0.5, 0.2])
    np.testing.assert_allclose(fpr, [0, 0, 1])
    np.testing.assert_allclose(tpr, [0, 1, 1])
    fpr, tpr, _ = roc_curve([1, 1], [0.5, 0.2])
    np.testing.assert_allclose(fpr, [0, 0, 0])
    np.testing.assert_allclose(tpr, [0, 0.5, 1])


# --------------------------------------------------------------------------------------------
# calibration


def test_softmax_and_temperature() -> None:
    p = softmax(np.array([[0.0, np.log(3.0)]]))
    np.testing.assert_allclose(p, [[0.25, 0.75]])
    # T = 2 halves the logit gap: exp(log 3 / 2) = sqrt 3 -> P = sqrt3 / (1 + sqrt3).
    p2 = softmax(np.array([[0.0, np.log(3.0)]]), temperature=2.0)
    np.testing.assert_allclose(p2[0, 1], np.sqrt(3) / (1 + np.sqrt(3)))
    np.testing.assert_allclose(softmax(np.array([1000.0, 1000.0])), [0.5, 0.5])  # no overflow
    with pytest.raises(ValueError, match="temperature must be"):
        softmax(np.zeros((1, 2)), temperature=0.0)


def test_expected_calibration_error_by_hand() -> None:
    probs = np.array([[0.9, 0.1], [0.75, 0.25], [0.35, 0.65], [0.45, 0.55]])
    labels = [0, 1, 1, 1]
    # Confidences .9 (right), .75 (wrong), .65 (right), .55 (right); 5 bins of width .2.
    # (.8, 1]: acc 1, conf .9   -> 1/4 * .1  = .025
    # (.6, .8]: acc 1/2, conf .7 -> 2/4 * .2  = .1
    # (.4, .6]: acc 1, conf .55  -> 1/4 * .45 = .1125            ECE = .2375
    assert expected_calibration_error(probs, labels, n_bins=5) == pytest.approx(0.2375)
    # One bin: |acc 3/4 - mean conf .7125| = .0375.
    assert expected_calibration_error(probs, labels, n_bins=1) == pytest.approx(0.0375)
    with pytest.raises(ValueError, match="one label per row"):
        expected_calibration_error(probs, [0, 1])


def test_fit_temperature_recovers_two_on_overconfident_logits() -> None:
    rng = np.random.default_rng(42)
    calibrated = rng.normal(scale=1.5, size=(6000, 4))
    # Labels drawn from softmax(calibrated): those logits are calibrated by construction.
    cumulative = softmax(calibrated).cumsum(axis=1)
    labels = (rng.uniform(size=(6000, 1)) > cumulative).sum(axis=1)
    logits = 2.0 * calibrated  # twice as confident: the right temperature is 2
    t = fit_temperature(logits, labels)
    assert t == pytest.approx(2.0, abs=0.15)
    assert negative_log_likelihood(logits, labels, t) < negative_log_likelihood(logits, labels)
    # The fit is a minimum: nudging T either way is worse.
    for nudge in (0.9, 1.1):
        assert negative_log_likelihood(logits, labels, t * nudge) > negative_log_likelihood(
            logits, labels, t
        )
    # Deterministic, and calibrated logits give T close to 1.
    assert fit_temperature(logits, labels) == t
    assert fit_temperature(calibrated, labels) == pytest.approx(1.0, abs=0.08)
    assert expected_calibration_error(softmax(logits, t), labels) < expected_calibration_error(
        softmax(logits), labels
    )


def test_fit_temperature_does_not_sharpen_on_a_perfectly_separated_split() -> None:
    # Every image right: the NLL falls without limit as T shrinks, and the fit would reach its
    # lower bound on no evidence; it keeps T = 1 instead.
    logits = np.array([[2.0, 0.0], [0.0, 1.5], [1.0, 0.2], [0.1, 0.9]])
    labels = [0, 1, 0, 1]
    assert negative_log_likelihood(logits, labels, 0.05) < negative_log_likelihood(logits, labels)
    assert fit_temperature(logits, labels) == 1.0
    # one mistake is evidence: the fit is a real minimum again
    t = fit_temperature(logits, [0, 1, 1, 1])
    assert t != 1.0 and 0.05 < t < 20.0


# --------------------------------------------------------------------------------------------
# boxes and pixels


def test_box_detection_metrics_by_hand() -> None:
    gt = [[Box(0, 0, 10, 10)], [Box(20, 20, 30, 30), Box(50, 50, 60, 60)]]
    pred = [
        # Image A: exact box (IoU 1) and a shifted one (IoU 81/119) on the same gt -> 1 TP 1 FP.
        [Box(0, 0, 10, 10), Box(1, 1, 11, 11)],
        # Image B: half-shifted box on the first gt: overlap 5x10 = 50, union 150 -> IoU 1/3.
        [Box(25, 20, 35, 30)],
    ]
    m = box_detection_metrics(pred, gt, iou_threshold=0.5)
    # IoU 1/3 < .5: image B has 1 FP and 2 FN. Totals TP 1, FP 2, FN 2 -> P = R = F1 = 1/3.
    assert (m["tp"], m["fp"], m["fn"]) == (1, 2, 2)
    assert (m["precision"], m["recall"], m["f1"]) == pytest.approx((1 / 3, 1 / 3, 1 / 3))
    assert m["mean_iou"] == pytest.approx(1.0)
    # Count MAE: |2 - 1| and |1 - 2| -> 1.
    assert m["count_mae"] == pytest.approx(1.0)
    m = box_detection_metrics(pred, gt, iou_threshold=0.3)
    # Now image B matches: TP 2, FP 1, FN 1 -> P = R = 2/3, mean IoU (1 + 1/3) / 2 = 2/3.
    assert (m["tp"], m["fp"], m["fn"]) == (2, 1, 1)
    assert (m["precision"], m["recall"], m["mean_iou"]) == pytest.approx((2 / 3, 2 / 3, 2 / 3))
    assert count_mae([0, 3], [1, 1]) == pytest.approx(1.5)


def test_pixel_iou_f1_pooled_over_a_stack() -> None:
    pred = np.zeros((2, 4, 4), dtype=bool)
    gt = np.zeros((2, 4, 4), dtype=bool)
    pred[0, 0:2, 0:2] = True  # 4 px
    gt[0, 0:2, 0:3] = True  # 6 px, 4 shared
    pred[1, 3, 3] = True  # 1 px, gt empty in image 1
    # Pooled: intersection 4, union 6 + 1 = 7 -> IoU 4/7; F1 = 2*4 / (5 + 6) = 8/11.
    assert pixel_iou_f1(pred, gt) == pytest.approx((4 / 7, 8 / 11))
    assert pixel_iou_f1(np.zeros((3, 3)), np.zeros((3, 3))) == (1.0, 1.0)
    with pytest.raises(ValueError, match="shapes differ"):
        pixel_iou_f1(pred, gt[0])


# --------------------------------------------------------------------------------------------
# thresholds


def test_middle_of_best_run() -> None:
    # Best value 3 runs at 1-2 and 4-6: the longer run, its middle is 5.
    assert middle_of_best_run([1, 3, 3, 2, 3, 3, 3, 0]) == 5
    # Equally long runs: the first; an even run: its lower middle.
    assert middle_of_best_run([2, 2, 0, 2, 2]) == 0
    assert middle_of_best_run([0, 1, 1, 1, 1]) == 2


def test_choose_threshold_middle_of_best_plateau() -> None:
    scores = [0.1, 0.2, 0.6, 0.7]
    y = [0, 0, 1, 1]
    # Any threshold in (0.2, 0.6] separates perfectly (F1 1): candidates .3 .4 .5 .6 -> the
    # lower middle of the run is 0.4.
    thr, f1 = choose_threshold(scores, y, [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7])
    assert (thr, f1) == (0.4, 1.0)
    # Default candidates .01 ... .99: the plateau is .21 ... .60 (40 values) -> .40.
    assert choose_threshold(scores, y) == (0.4, 1.0)
    # Unsorted candidates with a duplicate are fine.
    assert choose_threshold(scores, y, [0.6, 0.3, 0.3, 0.1]) == (0.3, 1.0)


def test_threshold_sweep_on_two_density_maps() -> None:
    manipulated = np.zeros((32, 32))
    manipulated[4:12, 4:12] = 0.6  # 64 px at 0.6
    manipulated[20:25, 20:25] = 0.35  # 25 px at 0.35
    untouched = np.full((32, 32), 0.3)  # a flat map over the lower threshold
    gt = [[Box(4, 4, 12, 12), Box(20, 20, 25, 25)], []]
    rows = threshold_sweep([manipulated, untouched], gt, [1, 0], [0.28, 0.5], min_area=20)
    low, high = rows
    # thr .28: both maps are "present" -> presence TP 1 FP 1: P 1/2, R 1, acc 1/2.
    assert low["threshold"] == 0.28
    assert (low["presence_precision"], low["presence_recall"]) == (0.5, 1.0)
    assert low["presence_accuracy"] == 0.5
    # Boxes at .28: the two regions of the manipulated map, both exact (TP 2); the flat
    # untouched map gives one 32x32 box (FP 1).
    assert (low["box_tp"], low["box_fp"], low["box_fn"]) == (2, 1, 0)
    assert low["mean_iou"] == 1.0 and low["count_mae"] == pytest.approx((0 + 1) / 2)
    # thr .5: presence is perfect; only the strong region is found (TP 1, FN 1).
    assert (high["presence_precision"], high["presence_recall"], high["presence_f1"]) == (1, 1, 1)
    assert (high["box_tp"], high["box_fp"], high["box_fn"]) == (1, 0, 1)
    assert high["box_precision"] == 1.0 and high["box_recall"] == 0.5
