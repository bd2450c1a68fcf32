"""Evaluation metrics in plain numpy: classification, ranking, calibration, boxes and pixels.

Conventions: a metric whose denominator is zero is 0.0 (precision with no predicted positive,
recall with no actual positive), except where a docstring says otherwise. Labels are integers;
binary labels are 0/1 (or booleans) with 1 = positive (manipulated / fake).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from medfakedet.density import Box, density_to_boxes, match_boxes, presence_score

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
    return (
        int(np.sum(t & p)),
        int(np.sum(~t & p)),
        int(np.sum(t & ~p)),
        int(np.sum(~t & ~p)),
    )


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
    matrix = np.zeros((num_classes, num_classes), dtype=np.int64)
    np.add.at(matrix, (t.astype(np.int64), p.astype(np.int64)), 1)
    return matrix


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
    per_class = {}
    present_f1 = []
    for k, name in enumerate(names):
        tp = int(matrix[k, k])
        fp = int(matrix[:, k].sum()) - tp
        fn = int(matrix[k, :].sum()) - tp
        precision, recall, f1 = precision_recall_f1(tp, fp, fn)
        per_class[name] = {
            "precision": precision,
            "recall": recall,
            "f1": f1,
            "support": tp + fn,
        }
        if tp + fp + fn > 0:
            present_f1.append(f1)
    total = int(matrix.sum())
    return {
        "per_class": per_class,
        "accuracy": float(np.trace(matrix) / total) if total else 0.0,
        "macro_f1": float(np.mean(present_f1)) if present_f1 else 0.0,
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


def _average_ranks(values: np.ndarray) -> np.ndarray:
    """1-based ranks of ``values``; tied values share the average of their ranks."""
    order = np.argsort(values, kind="mergesort")
    sorted_values = values[order]
    # Start index of each run of equal values, and the run each sorted position belongs to.
    starts = np.flatnonzero(np.r_[True, sorted_values[1:] != sorted_values[:-1]])
    ends = np.r_[starts[1:], len(values)]
    run_rank = (starts + 1 + ends) / 2.0  # mean of ranks starts+1 .. ends
    run_of = np.repeat(np.arange(len(starts)), ends - starts)
    ranks = np.empty(len(values), dtype=np.float64)
    ranks[order] = run_rank[run_of]
    return ranks


def roc_auc(y_true: Sequence, scores: Sequence) -> float:
    """Area under the ROC curve: P(score of a random positive > score of a random negative).

    Rank-based (Mann-Whitney U / (n_pos * n_neg)); a tie counts one half, which equals the
    trapezoidal area under the ROC curve.

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
    ranks = _average_ranks(s)
    u = ranks[t].sum() - n_pos * (n_pos + 1) / 2.0
    return float(u / (n_pos * n_neg))


def _descending_counts(t: np.ndarray, s: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Cumulative (tp, fp) at each distinct score as threshold (``score >= thr``), highest first."""
    order = np.argsort(-s, kind="mergesort")
    s_sorted = s[order]
    t_sorted = t[order]
    last_of_run = np.r_[np.flatnonzero(s_sorted[1:] != s_sorted[:-1]), len(s) - 1]
    tp = np.cumsum(t_sorted)[last_of_run]
    fp = np.cumsum(~t_sorted)[last_of_run]
    return tp.astype(np.float64), fp.astype(np.float64), s_sorted[last_of_run]


def average_precision(y_true: Sequence, scores: Sequence) -> float:
    """Average precision as scikit-learn defines it: ``sum_n (R_n - R_{n-1}) * P_n``.

    The sum runs over the distinct scores as thresholds from the highest down (``R_0 = 0``);
    no interpolation of the precision-recall curve.

    Raises:
        ValueError: when ``y_true`` has no positive (recall is undefined).
    """
    t, s = _scored(y_true, scores)
    n_pos = int(t.sum())
    if n_pos == 0:
        raise ValueError("average precision needs at least one positive in y_true")
    tp, fp, _ = _descending_counts(t, s)
    precision = tp / (tp + fp)
    recall = tp / n_pos
    return float(np.sum(np.diff(np.r_[0.0, recall]) * precision))


def roc_curve(y_true: Sequence, scores: Sequence) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """ROC curve: ``(fpr, tpr, thresholds)``, one point per distinct score, plus (0, 0).

    ``thresholds[0]`` is ``inf`` (nothing predicted positive); the others are the distinct
    scores from highest to lowest, with ``score >= thr`` predicted positive. Unlike
    scikit-learn's default, collinear points are kept. A rate is 0 when its class is absent.
    """
    t, s = _scored(y_true, scores)
    tp, fp, thresholds = _descending_counts(t, s)
    n_pos = t.sum()
    n_neg = len(t) - n_pos
    tpr = np.r_[0.0, tp / n_pos if n_pos else np.zeros_like(tp)]
    fpr = np.r_[0.0, fp / n_neg if n_neg else np.zeros_like(fp)]
    return fpr, tpr, np.r_[np.inf, thresholds]


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


def _nll(logits: np.ndarray, labels: np.ndarray, temperature: float) -> float:
    z = logits / temperature
    z = z - z.max(axis=1, keepdims=True)
    log_norm = np.log(np.exp(z).sum(axis=1))
    return float(np.mean(log_norm - z[np.arange(len(labels)), labels]))


def negative_log_likelihood(logits: np.ndarray, labels: Sequence[int], temperature: float = 1.0):
    """Mean negative log-likelihood of ``labels`` under ``softmax(logits / temperature)``."""
    z, y = _check_probs_labels(logits, labels, "logits")
    return _nll(z, y, temperature)


def fit_temperature(
    logits: np.ndarray,
    labels: Sequence[int],
    t_min: float = 0.05,
    t_max: float = 20.0,
    grid_size: int = 200,
    tol: float = 1e-5,
) -> float:
    """Temperature ``T`` in ``[t_min, t_max]`` that minimises the NLL of softmax(logits / T).

    The NLL is convex in ``1 / T``, hence unimodal in ``log T``: a log-spaced grid finds the
    bracket of the minimum, then golden-section search on ``log T`` narrows it to ``tol``
    (relative). Deterministic; fit it on validation logits, never on test.
    """
    z, y = _check_probs_labels(logits, labels, "logits")
    if not (0 < t_min < t_max and math.isfinite(t_max)):
        raise ValueError(f"need 0 < t_min < t_max; got t_min={t_min}, t_max={t_max}")
    grid = np.linspace(math.log(t_min), math.log(t_max), grid_size)
    losses = [_nll(z, y, math.exp(g)) for g in grid]
    best = int(np.argmin(losses))
    lo, hi = grid[max(best - 1, 0)], grid[min(best + 1, grid_size - 1)]
    inv_phi = (math.sqrt(5.0) - 1.0) / 2.0
    a, b = lo + (1 - inv_phi) * (hi - lo), lo + inv_phi * (hi - lo)
    fa, fb = _nll(z, y, math.exp(a)), _nll(z, y, math.exp(b))
    while hi - lo > tol:
        if fa <= fb:
            hi, b, fb = b, a, fa
            a = lo + (1 - inv_phi) * (hi - lo)
            fa = _nll(z, y, math.exp(a))
        else:
            lo, a, fa = a, b, fb
            b = lo + inv_phi * (hi - lo)
            fb = _nll(z, y, math.exp(b))
    return float(math.exp((lo + hi) / 2.0))


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


# --------------------------------------------------------------------------------------------
# thresholds


def choose_threshold(
    scores: Sequence[float], y_true: Sequence, candidates: Sequence[float] | None = None
) -> tuple[float, float]:
    """The threshold (``score >= thr`` is positive) with the highest F1, and that F1.

    Candidates default to 0.01, 0.02, ..., 0.99. Often a whole range of thresholds ties for
    the best F1 on validation; this returns the middle of the longest run of consecutive
    (sorted) best candidates -- the lower middle for an even run, the lowest run on a tie --
    as the threshold furthest from the edges where validation F1 starts to drop.
    """
    t, s = _scored(y_true, scores)
    if candidates is None:
        candidates = np.round(np.arange(1, 100) / 100.0, 2)
    cands = np.unique(np.asarray(candidates, dtype=np.float64))
    if cands.size == 0 or not np.all(np.isfinite(cands)):
        raise ValueError("candidates must be a non-empty sequence of finite thresholds")
    f1s = np.array([precision_recall_f1(*binary_counts(t, s >= c)[:3])[2] for c in cands])
    best = np.isclose(f1s, f1s.max(), rtol=0.0, atol=1e-12)
    # Longest run of consecutive best candidates.
    run_start, run_len, i = 0, 0, 0
    while i < len(cands):
        if best[i]:
            j = i
            while j + 1 < len(cands) and best[j + 1]:
                j += 1
            if j - i + 1 > run_len:
                run_start, run_len = i, j - i + 1
            i = j + 1
        else:
            i += 1
    middle = run_start + (run_len - 1) // 2
    return float(cands[middle]), float(f1s[middle])


def threshold_sweep(
    densities: Sequence[np.ndarray],
    gt_boxes_per_image: Sequence[Sequence[Box]],
    gt_present: Sequence,
    thresholds: Sequence[float],
    min_area: int = 20,
    iou_threshold: float = 0.5,
) -> list[dict[str, float | int]]:
    """Presence and box metrics of density maps over a list of thresholds.

    For each threshold ``thr``: presence is ``max(density) >= thr`` against ``gt_present``, and
    boxes are ``density_to_boxes(density, thr, min_area)`` matched to the ground truth at
    ``iou_threshold`` (the same threshold is used for presence and boxes, as in the paper).

    Returns:
        One row per threshold: ``threshold``, ``presence_accuracy`` / ``_precision`` /
        ``_recall`` / ``_f1``, ``box_precision`` / ``_recall`` / ``_f1``, ``box_tp`` / ``_fp``
        / ``_fn``, ``mean_iou``, ``count_mae``.
    """
    present = _binary_labels(gt_present, "gt_present")
    if not len(densities) == len(gt_boxes_per_image) == len(present):
        raise ValueError(
            "densities, gt_boxes_per_image and gt_present must list the same images; got "
            f"{len(densities)}, {len(gt_boxes_per_image)} and {len(present)}"
        )
    peaks = np.array([presence_score(d) for d in densities])
    rows = []
    for thr in thresholds:
        presence = binary_metrics(present, peaks >= thr)
        pred_boxes = [density_to_boxes(d, thr, min_area) for d in densities]
        boxes = box_detection_metrics(pred_boxes, gt_boxes_per_image, iou_threshold)
        rows.append(
            {
                "threshold": float(thr),
                "presence_accuracy": presence["accuracy"],
                "presence_precision": presence["precision"],
                "presence_recall": presence["recall"],
                "presence_f1": presence["f1"],
                "box_precision": boxes["precision"],
                "box_recall": boxes["recall"],
                "box_f1": boxes["f1"],
                "box_tp": boxes["tp"],
                "box_fp": boxes["fp"],
                "box_fn": boxes["fn"],
                "mean_iou": boxes["mean_iou"],
                "count_mae": boxes["count_mae"],
            }
        )
    return rows
