"""Evaluation metrics: classification, ranking, calibration, boxes and pixels.

The generic ones (confusion matrix, per-class report, ROC-AUC, average precision, ROC curve) are
scikit-learn's, behind the names and return shapes the rest of the project uses; the
domain-specific ones (box matching, count MAE, pooled pixel IoU, top-label ECE) are here.
Fitting calibration (temperature, thresholds) is training's job: :mod:`training.calibration`.

Conventions: a metric whose denominator is zero is 0.0 (precision with no predicted positive,
recall with no actual positive), except where a docstring says otherwise. Labels are integers;
binary labels are 0/1 (or booleans) with 1 = positive (manipulated / fake).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence

import numpy as np
from sklearn import metrics as skm
from sklearn.exceptions import UndefinedMetricWarning

from medfakedet.density import Box, match_boxes

# --------------------------------------------------------------------------------------------
# counts, precision / recall / F1


def _binary_labels(values: np.ndarray | Sequence, name: str) -> np.ndarray:
    array = np.asarray(values)
    if array.ndim != 1:
        raise ValueError(f"{name} must be a 1-D sequence of 0/1 labels; got shape {array.shape}")
    if array.dtype != bool and not np.isin(array, (0, 1)).all():
        raise ValueError(f"{name} must hold only 0/1 (or booleans); got values {np.unique(array)}")
    return array.astype(bool)


def _same_length(a: np.ndarray, b: np.ndarray, names: str) -> None:
    if len(a) != len(b):
        raise ValueError(f"{names} must have the same length; got {len(a)} and {len(b)}")


def precision_recall_f1(tp: int, fp: int, fn: int) -> tuple[float, float, float]:
    """Precision, recall and F1 from counts; each is 0.0 where its denominator is 0."""
    precision = tp / (tp + fp) if tp + fp > 0 else 0.0
    recall = tp / (tp + fn) if tp + fn > 0 else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall > 0 else 0.0
    return float(precision), float(recall), float(f1)


def binary_counts(y_true: Sequence, y_pred: Sequence) -> tuple[int, int, int, int]:
    """``(tp, fp, fn, tn)`` of binary predictions (1 = positive)."""
    t = _binary_labels(y_true, "y_true")
    p = _binary_labels(y_pred, "y_pred")
    _same_length(t, p, "y_true and y_pred")
    tn, fp, fn, tp = skm.confusion_matrix(t, p, labels=[False, True]).ravel()
    return int(tp), int(fp), int(fn), int(tn)


def binary_metrics(y_true: Sequence, y_pred: Sequence) -> dict[str, float | int]:
    """Accuracy, precision, recall, F1 and the four counts of binary predictions."""
    tp, fp, fn, tn = binary_counts(y_true, y_pred)
    precision, recall, f1 = precision_recall_f1(tp, fp, fn)
    total = tp + fp + fn + tn
    return {
        "accuracy": (tp + tn) / total if total else 0.0,
        "precision": precision,
        "recall": recall,
        "f1": f1,
        "tp": tp,
        "fp": fp,
        "fn": fn,
        "tn": tn,
    }


def confusion_matrix(y_true: Sequence, y_pred: Sequence, num_classes: int) -> np.ndarray:
    """``num_classes`` x ``num_classes`` int64 counts; rows = true class, columns = predicted."""
    t = np.asarray(y_true)
    p = np.asarray(y_pred)
    _same_length(t, p, "y_true and y_pred")
    for name, a in (("y_true", t), ("y_pred", p)):
        if a.ndim != 1 or (a.size and (a.min() < 0 or a.max() >= num_classes)):
            raise ValueError(
                f"{name} must be a 1-D sequence of class indices in 0..{num_classes - 1}"
            )
    return skm.confusion_matrix(t, p, labels=np.arange(num_classes)).astype(np.int64)


def classification_report(
    y_true: Sequence[int], y_pred: Sequence[int], class_names: Sequence[str]
) -> dict:
    """Per-class precision / recall / F1 / support, accuracy, macro-F1 and the confusion matrix.

    Macro-F1 averages the F1 of the classes that occur in ``y_true`` or ``y_pred`` (as
    scikit-learn does without ``labels=``): a class absent from both says nothing either way.

    Returns:
        ``{"per_class": {name: {"precision", "recall", "f1", "support"}}, "accuracy",
        "macro_f1", "confusion_matrix": list of lists (rows = true class), "class_names",
        "n"}``.
    """
    names = list(class_names)
    matrix = confusion_matrix(y_true, y_pred, len(names))
    total = int(matrix.sum())
    if total == 0:
        precision = recall = f1 = np.zeros(len(names))
    else:
        precision, recall, f1, _ = skm.precision_recall_fscore_support(
            y_true, y_pred, labels=np.arange(len(names)), zero_division=0
        )
    per_class = {
        name: {
            "precision": float(precision[k]),
            "recall": float(recall[k]),
            "f1": float(f1[k]),
            "support": int(matrix[k, :].sum()),
        }
        for k, name in enumerate(names)
    }
    macro_f1 = skm.f1_score(y_true, y_pred, average="macro", zero_division=0) if total else 0.0
    return {
        "per_class": per_class,
        "accuracy": float(np.trace(matrix) / total) if total else 0.0,
        "macro_f1": float(macro_f1),
        "confusion_matrix": matrix.tolist(),
        "class_names": names,
        "n": total,
    }


# --------------------------------------------------------------------------------------------
# ranking: ROC AUC, average precision, ROC curve


def _scored(y_true: Sequence, scores: Sequence) -> tuple[np.ndarray, np.ndarray]:
    t = _binary_labels(y_true, "y_true")
    s = np.asarray(scores, dtype=np.float64)
    if s.ndim != 1:
        raise ValueError(f"scores must be a 1-D sequence of numbers; got shape {s.shape}")
    _same_length(t, s, "y_true and scores")
    if not np.all(np.isfinite(s)):
        raise ValueError("scores contain NaN or infinite values")
    return t, s


def roc_auc(y_true: Sequence, scores: Sequence) -> float:
    """Area under the ROC curve: P(score of a random positive > score of a random negative).

    scikit-learn's ``roc_auc_score``: the trapezoidal area, in which a tie counts one half
    (equal to the rank statistic Mann-Whitney U / (n_pos * n_neg)).

    Raises:
        ValueError: when ``y_true`` holds only one class (the AUC is undefined).
    """
    t, s = _scored(y_true, scores)
    n_pos = int(t.sum())
    n_neg = len(t) - n_pos
    if n_pos == 0 or n_neg == 0:
        raise ValueError(
            f"ROC AUC needs both classes in y_true; got {n_pos} positives and {n_neg} negatives"
        )
    return float(skm.roc_auc_score(t, s))


def average_precision(y_true: Sequence, scores: Sequence) -> float:
    """Average precision, scikit-learn's ``average_precision_score``:
    ``sum_n (R_n - R_{n-1}) * P_n``.

    The sum runs over the distinct scores as thresholds from the highest down (``R_0 = 0``);
    no interpolation of the precision-recall curve.

    Raises:
        ValueError: when ``y_true`` has no positive (recall is undefined).
    """
    t, s = _scored(y_true, scores)
    if not t.any():
        raise ValueError("average precision needs at least one positive in y_true")
    return float(skm.average_precision_score(t, s))


def roc_curve(y_true: Sequence, scores: Sequence) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """ROC curve: ``(fpr, tpr, thresholds)``, one point per distinct score, plus (0, 0).

    scikit-learn's ``roc_curve`` with ``drop_intermediate=False`` (collinear points are kept):
    ``thresholds[0]`` is ``inf`` (nothing predicted positive); the others are the distinct
    scores from highest to lowest, with ``score >= thr`` predicted positive. A rate is 0 when
    its class is absent.
    """
    t, s = _scored(y_true, scores)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UndefinedMetricWarning)  # one class only: rate 0
        fpr, tpr, thresholds = skm.roc_curve(t, s, drop_intermediate=False)
    return np.nan_to_num(fpr), np.nan_to_num(tpr), thresholds


# --------------------------------------------------------------------------------------------
# probabilities and calibration


def softmax(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    """Softmax of ``logits / temperature`` over the last axis (float64, numerically stable)."""
    if not (math.isfinite(temperature) and temperature > 0):
        raise ValueError(f"temperature must be a finite number > 0; got {temperature!r}")
    z = np.asarray(logits, dtype=np.float64) / temperature
    z = z - z.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)


def _check_probs_labels(probs: np.ndarray, labels: Sequence[int], name: str) -> tuple:
    p = np.asarray(probs, dtype=np.float64)
    y = np.asarray(labels)
    if p.ndim != 2:
        raise ValueError(f"{name} must be a 2-D array (N, K); got shape {p.shape}")
    if y.ndim != 1 or len(y) != len(p):
        raise ValueError(f"labels must be 1-D with one label per row of {name} ({len(p)})")
    if len(y) == 0:
        raise ValueError(f"{name} is empty; need at least one sample")
    if y.min() < 0 or y.max() >= p.shape[1]:
        raise ValueError(f"labels must be class indices in 0..{p.shape[1] - 1}")
    return p, y.astype(np.int64)


def expected_calibration_error(probs: np.ndarray, labels: Sequence[int], n_bins: int = 15) -> float:
    """Top-label expected calibration error with ``n_bins`` equal-width confidence bins.

    ``ECE = sum_b |B_b| / N * |accuracy(B_b) - mean confidence(B_b)|`` where the confidence of
    a sample is its largest probability and it is correct when that class is its label. Bins
    are ``(lo, hi]`` (the first also holds 0).
    """
    p, y = _check_probs_labels(probs, labels, "probs")
    if n_bins < 1:
        raise ValueError(f"n_bins must be >= 1; got {n_bins}")
    confidence = p.max(axis=1)
    correct = p.argmax(axis=1) == y
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    bin_of = np.clip(np.searchsorted(edges, confidence, side="left") - 1, 0, n_bins - 1)
    ece = 0.0
    for b in range(n_bins):
        in_bin = bin_of == b
        if in_bin.any():
            gap = abs(correct[in_bin].mean() - confidence[in_bin].mean())
            ece += in_bin.sum() / len(y) * gap
    return float(ece)


def negative_log_likelihood(
    logits: np.ndarray, labels: Sequence[int], temperature: float = 1.0
) -> float:
    """Mean negative log-likelihood of ``labels`` under ``softmax(logits / temperature)``."""
    z, y = _check_probs_labels(logits, labels, "logits")
    z = z / temperature
    z = z - z.max(axis=1, keepdims=True)
    log_norm = np.log(np.exp(z).sum(axis=1))
    return float(np.mean(log_norm - z[np.arange(len(y)), y]))


# --------------------------------------------------------------------------------------------
# boxes and pixels


def count_mae(pred_counts: Sequence[int], gt_counts: Sequence[int]) -> float:
    """Mean absolute error between predicted and true numbers of regions per image."""
    p = np.asarray(pred_counts, dtype=np.float64)
    g = np.asarray(gt_counts, dtype=np.float64)
    _same_length(p, g, "pred_counts and gt_counts")
    return float(np.mean(np.abs(p - g))) if len(p) else 0.0


def box_detection_metrics(
    pred_boxes_per_image: Sequence[Sequence[Box]],
    gt_boxes_per_image: Sequence[Sequence[Box]],
    iou_threshold: float,
) -> dict[str, float | int]:
    """Box precision / recall / F1 pooled over images, matched one-to-one at ``iou_threshold``.

    Matching per image is :func:`medfakedet.density.match_boxes` (greedy by IoU). ``mean_iou``
    is the mean IoU of the matched pairs (0.0 when nothing matched); ``count_mae`` the mean
    absolute difference between the numbers of predicted and true boxes per image.
    """
    if len(pred_boxes_per_image) != len(gt_boxes_per_image):
        raise ValueError(
            "pred_boxes_per_image and gt_boxes_per_image must list the same images; got "
            f"{len(pred_boxes_per_image)} and {len(gt_boxes_per_image)}"
        )
    tp = fp = fn = 0
    matched_ious: list[float] = []
    for pred, gt in zip(pred_boxes_per_image, gt_boxes_per_image, strict=True):
        matches = match_boxes(pred, gt, iou_threshold)
        tp += len(matches)
        fp += len(pred) - len(matches)
        fn += len(gt) - len(matches)
        matched_ious.extend(iou for _, _, iou in matches)
    precision, recall, f1 = precision_recall_f1(tp, fp, fn)
    return {
        "tp": tp,
        "fp": fp,
        "fn": fn,
        "precision": precision,
        "recall": recall,
        "f1": f1,
        "mean_iou": float(np.mean(matched_ious)) if matched_ious else 0.0,
        "count_mae": count_mae(
            [len(p) for p in pred_boxes_per_image], [len(g) for g in gt_boxes_per_image]
        ),
        "iou_threshold": float(iou_threshold),
        "n_images": len(gt_boxes_per_image),
    }


def pixel_iou_f1(pred_mask: np.ndarray, gt_mask: np.ndarray) -> tuple[float, float]:
    """Pixel IoU and F1 (Dice) of binary masks, pooled over every pixel of the arrays.

    For a stack of masks (N, H, W) intersections and unions are summed over all images before
    dividing (micro average), so large regions weigh more than small ones and images without
    any region do not count as perfect scores. When both masks are empty everywhere the
    masks agree and both scores are 1.0.
    """
    p = np.asarray(pred_mask).astype(bool)
    g = np.asarray(gt_mask).astype(bool)
    if p.shape != g.shape:
        raise ValueError(f"pred_mask and gt_mask shapes differ: {p.shape} vs {g.shape}")
    intersection = int(np.sum(p & g))
    union = int(np.sum(p | g))
    if union == 0:
        return 1.0, 1.0
    return intersection / union, 2 * intersection / (int(p.sum()) + int(g.sum()))
