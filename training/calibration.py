"""Calibration, fitted on the validation split only: the temperature of synthesis8, and the
presence and box thresholds of the localizer; plus the paper's threshold sweep. Abstention: the
in-distribution statistics of both models (fitted on training images, threshold on validation)
and the grey zone of synthesis8's P(fake).

Boxes always come from :func:`medfakedet.schema.detect_regions`, the rule serving applies, so a
threshold chosen here is judged on exactly the boxes a client would get.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from scipy.optimize import minimize_scalar
from torch import nn
from torch.utils.data import DataLoader, Subset

from medfakedet.density import (
    Box,
    RegionScorer,
    box_iou,
    density_regions,
    presence_score,
    score_regions,
)
from medfakedet.metrics import (
    binary_metrics,
    box_detection_metrics,
    negative_log_likelihood,
)
from medfakedet.ood import DEFAULT_COVERAGE, OODStatistics, model_features
from medfakedet.schema import detect_regions

#: The paper's default threshold, kept when validation holds one class only.
PAPER_THRESHOLD = 0.28
#: Thresholds of the paper's ablation table (one threshold for presence and boxes).
SWEEP_THRESHOLDS: tuple[float, ...] = tuple(round(t, 2) for t in np.arange(0.05, 0.951, 0.05))


def fit_temperature(
    logits: np.ndarray,
    labels: Sequence[int],
    t_min: float = 0.05,
    t_max: float = 20.0,
    tol: float = 1e-5,
) -> float:
    """Temperature ``T`` in ``[t_min, t_max]`` that minimises the NLL of softmax(logits / T).

    The NLL is convex in ``1 / T``, hence unimodal in ``log T``: bounded Brent search
    (``scipy.optimize.minimize_scalar``) on ``log T`` to ``tol``. Deterministic; fit it on
    validation logits, never on test.

    When every image is classified right, the NLL keeps falling as ``T`` shrinks: the fit would
    sharpen to ``t_min`` on no evidence (measured: a real-scan synthesis8 with a perfect val
    split got T = 0.05, every P(fake) near 0 or 1, and its grey zone answered nothing
    `uncertain` while 7% of the test reals were called fake). Such logits keep ``T = 1``.
    """
    if not (0 < t_min < t_max and math.isfinite(t_max)):
        raise ValueError(f"need 0 < t_min < t_max; got t_min={t_min}, t_max={t_max}")
    negative_log_likelihood(logits, labels)  # checks shapes and labels, says what is wrong
    z = np.asarray(logits, dtype=np.float64)
    y = np.asarray(labels, dtype=np.int64)
    if np.array_equal(z.argmax(axis=1), y):
        return 1.0
    result = minimize_scalar(
        lambda log_t: negative_log_likelihood(z, y, math.exp(log_t)),
        bounds=(math.log(t_min), math.log(t_max)),
        method="bounded",
        options={"xatol": tol},
    )
    return float(math.exp(result.x))


def middle_of_best_run(values: Sequence[float]) -> int:
    """Index of the middle of the longest run of (near-)maximal values: the stablest choice.

    The lower middle for an even run; the first run when two are equally long.
    """
    v = np.asarray(values, dtype=np.float64)
    best = np.isclose(v, v.max(), rtol=0.0, atol=1e-12)
    runs, start = [], None
    for i, b in enumerate([*best, False]):
        if b and start is None:
            start = i
        elif not b and start is not None:
            runs.append((i - start, -start))
            start = None
    length, neg_start = max(runs)
    return -neg_start + (length - 1) // 2


def choose_threshold(
    scores: Sequence[float], y_true: Sequence, candidates: Sequence[float] | None = None
) -> tuple[float, float]:
    """The threshold (``score >= thr`` is positive) with the highest F1, and that F1.

    Candidates default to 0.01, 0.02, ..., 0.99. Often a whole range of thresholds ties for
    the best F1 on validation; this returns the middle of the longest run of consecutive
    (sorted) best candidates (:func:`middle_of_best_run`), the threshold furthest from the
    edges where validation F1 starts to drop.
    """
    s = np.asarray(scores, dtype=np.float64)
    if s.ndim != 1 or not np.all(np.isfinite(s)):
        raise ValueError("scores must be a 1-D sequence of finite numbers")
    if candidates is None:
        candidates = np.round(np.arange(1, 100) / 100.0, 2)
    cands = np.unique(np.asarray(candidates, dtype=np.float64))
    if cands.size == 0 or not np.all(np.isfinite(cands)):
        raise ValueError("candidates must be a non-empty sequence of finite thresholds")
    f1s = [binary_metrics(y_true, s >= c)["f1"] for c in cands]
    k = middle_of_best_run(f1s)
    return float(cands[k]), float(f1s[k])


def served_boxes(
    densities: Sequence[np.ndarray], threshold: float, min_area: int, presence_threshold: float
) -> list[list[Box]]:
    """The boxes serving returns for each map (:func:`medfakedet.schema.detect_regions`)."""
    return [detect_regions(d, threshold, min_area, presence_threshold).boxes for d in densities]


def choose_box_threshold(
    densities: Sequence[np.ndarray],
    gt_boxes: Sequence[Sequence[Box]],
    min_area: int,
    candidates: Sequence[float] | None = None,
    iou_threshold: float = 0.5,
    presence_threshold: float = 0.0,
) -> tuple[float, float]:
    """The density threshold with the best box F1 at ``iou_threshold``, and that F1 (fit on
    validation); boxes as served at ``presence_threshold``."""
    if candidates is None:
        candidates = np.round(np.arange(0.05, 0.951, 0.01), 2)
    f1s = [
        box_detection_metrics(
            served_boxes(densities, t, min_area, presence_threshold), gt_boxes, iou_threshold
        )["f1"]
        for t in candidates
    ]
    k = middle_of_best_run(f1s)
    return float(candidates[k]), float(f1s[k])


def false_alarm_limited_thresholds(
    untouched_peaks: Sequence[float], max_false_alarm: float
) -> np.ndarray:
    """The presence thresholds of the grid 0.01, ..., 1.00 at which at most ``max_false_alarm``
    of the untouched images (their presence scores ``untouched_peaks``) would be flagged."""
    peaks = np.asarray(untouched_peaks, dtype=np.float64)
    if peaks.size == 0 or not 0.0 <= max_false_alarm < 1.0:
        raise ValueError(
            f"need untouched images and 0 <= max_false_alarm < 1; got {peaks.size} images and "
            f"{max_false_alarm!r}"
        )
    grid = np.round(np.arange(1, 101) / 100.0, 2)
    return grid[[(peaks >= t).mean() <= max_false_alarm for t in grid]]


def choose_limited_thresholds(
    pred: Any,
    min_area: int,
    max_false_alarm: float,
    box_candidates: Sequence[float] | None = None,
    iou_threshold: float = 0.5,
) -> tuple[float, float, float]:
    """(presence threshold, box threshold, box F1): the best validation box F1 among presence
    thresholds that flag at most ``max_false_alarm`` of the untouched validation images (ties:
    the lowest, the most recall); the box threshold is the middle of the best run at it.

    Boxes are found once per box threshold without the presence gate; the gate only drops the
    boxes whose peak (their score) is below the presence threshold, as serving does.
    """
    peaks = np.array([presence_score(d) for d in pred.density])
    allowed = false_alarm_limited_thresholds(peaks[~pred.present], max_false_alarm)
    if allowed.size == 0:  # saturated maps on untouched images: the strictest threshold
        allowed = np.array([1.0])
    if box_candidates is None:
        box_candidates = np.round(np.arange(0.05, 0.951, 0.01), 2)
    ungated = {t: served_boxes(pred.density, t, min_area, 0.0) for t in box_candidates}
    cache: dict[tuple[float, int], float] = {}  # (box thr, boxes kept) -> F1: same kept set

    def f1_at(t: float, pt: float) -> float:
        kept = [[b for b in boxes if b.score >= pt] for boxes in ungated[t]]
        key = (float(t), sum(len(k) for k in kept))
        if key not in cache:
            cache[key] = box_detection_metrics(kept, pred.gt_boxes, iou_threshold)["f1"]
        return cache[key]

    best = (float(allowed[-1]), float(box_candidates[0]), -1.0)
    for pt in allowed:
        f1s = [f1_at(t, pt) for t in box_candidates]
        k = middle_of_best_run(f1s)
        if f1s[k] > best[2] + 1e-12:
            best = (float(pt), float(box_candidates[k]), float(f1s[k]))
    return best


#: Box thresholds tried when a region scorer is fitted (one logistic fit each).
SCORER_BOX_THRESHOLDS: tuple[float, ...] = tuple(round(t, 2) for t in np.arange(0.2, 0.801, 0.05))


def fit_region_scorer(
    densities: Sequence[np.ndarray],
    gt_boxes: Sequence[Sequence[Box]],
    threshold: float,
    min_area: int,
    iou_threshold: float = 0.5,
) -> RegionScorer | None:
    """A :class:`~medfakedet.density.RegionScorer` fitted on validation maps: every region of
    :func:`~medfakedet.density.density_regions` at ``threshold`` is a positive when its box
    matches a true box at ``iou_threshold``; None with fewer than 3 of either kind.

    Plain L2-regularised logistic regression (scikit-learn, C = 1) on standardised features:
    six numbers, a few hundred regions, nothing to tune."""
    regions = [density_regions(d, threshold, min_area) for d in densities]
    return _fit_scorer_on(regions, gt_boxes, iou_threshold)


def _fit_scorer_on(
    regions: Sequence[tuple[list[Box], np.ndarray]],
    gt_boxes: Sequence[Sequence[Box]],
    iou_threshold: float,
) -> RegionScorer | None:
    """:func:`fit_region_scorer` on each image's ``(boxes, features)`` already found."""
    from sklearn.linear_model import LogisticRegression

    labels = [
        max((box_iou(b, g) for g in truth), default=0.0) >= iou_threshold
        for (boxes, _), truth in zip(regions, gt_boxes, strict=True)
        for b in boxes
    ]
    y = np.array(labels, dtype=bool)
    if y.sum() < 3 or (~y).sum() < 3:
        return None
    x = np.concatenate([features for _, features in regions])
    mean, scale = x.mean(axis=0), x.std(axis=0)
    scale[scale < 1e-9] = 1.0  # a constant feature: leave it unscaled (its weight goes to 0)
    fit = LogisticRegression(C=1.0, max_iter=1000).fit((x - mean) / scale, y)
    return RegionScorer(tuple(mean), tuple(scale), tuple(fit.coef_[0]), float(fit.intercept_[0]))


def choose_scored_thresholds(
    pred: Any,
    min_area: int,
    max_false_alarm: float,
    box_candidates: Sequence[float] = SCORER_BOX_THRESHOLDS,
    iou_threshold: float = 0.5,
) -> tuple[dict[str, Any], float] | None:
    """(calibration, box F1) with a region scorer: for each box threshold a scorer is fitted on
    the validation regions (:func:`fit_region_scorer`), and the presence threshold on its scores
    is the one of the best box F1 among those that flag at most ``max_false_alarm`` of the
    untouched validation images; the best pair wins (ties: the lowest thresholds). None when no
    scorer could be fitted."""
    best: tuple[dict[str, Any], float] | None = None
    untouched = ~np.asarray(pred.present, dtype=bool)
    for t in box_candidates:
        found = [density_regions(d, t, min_area) for d in pred.density]  # once per level
        scorer = _fit_scorer_on(found, pred.gt_boxes, iou_threshold)
        if scorer is None:
            continue
        regions = [score_regions(boxes, features, scorer) for boxes, features in found]
        tops = np.array([r[0].score if r else 0.0 for r in regions])
        for pt in false_alarm_limited_thresholds(tops[untouched], max_false_alarm):
            kept = [[b for b in r if b.score >= pt] for r in regions]
            f1 = box_detection_metrics(kept, pred.gt_boxes, iou_threshold)["f1"]
            if best is None or f1 > best[1] + 1e-12:
                cal = {"presence_threshold": float(pt), "box_threshold": float(t)}
                cal.update(min_area=int(min_area), region_scorer=scorer.to_dict())
                best = (cal, float(f1))
    return best


def calibrate_localizer(
    pred: Any,
    min_area: int,
    box_candidates: Sequence[float] | None = None,
    max_false_alarm: float | None = None,
    region_scorer: bool = False,
) -> tuple[dict[str, Any], float]:
    """Presence and box thresholds fitted on validation predictions ``pred``
    (:class:`training.inference.LocalizerPredictions`).

    Without ``max_false_alarm`` (the paper): the presence threshold of the best presence F1,
    then the box threshold of the best box F1 @ IoU 0.5 of the boxes served at it. With it: the
    pair of the best box F1 among presence thresholds that flag at most ``max_false_alarm`` of
    the untouched validation images (:func:`choose_limited_thresholds`); best F1 on a split of
    mostly manipulated images flags every untouched one.

    With ``region_scorer`` (and ``max_false_alarm``): regions are scored by a logistic fit on
    the validation regions instead of their peak (:func:`choose_scored_thresholds`), and the
    calibration holds the scorer; the peak rule stays where it reaches a better box F1.

    Returns the calibration and the validation box F1 it reaches.
    """
    if region_scorer and max_false_alarm is not None and not pred.present.all():
        peak_rule = calibrate_localizer(pred, min_area, box_candidates, max_false_alarm)
        scored = choose_scored_thresholds(pred, min_area, max_false_alarm)
        return scored if scored is not None and scored[1] > peak_rule[1] else peak_rule
    if max_false_alarm is not None and not pred.present.all():
        presence_threshold, box_threshold, box_f1 = choose_limited_thresholds(
            pred, min_area, max_false_alarm, box_candidates
        )
    else:
        peaks = np.array([presence_score(d) for d in pred.density])
        if 0 < pred.present.sum() < len(pred.present):
            presence_threshold, _ = choose_threshold(peaks, pred.present)
        else:
            presence_threshold = PAPER_THRESHOLD  # one class only in val: nothing to fit
        box_threshold, box_f1 = choose_box_threshold(
            pred.density,
            pred.gt_boxes,
            min_area,
            box_candidates,
            presence_threshold=float(presence_threshold),
        )
    calibration = {
        "presence_threshold": float(presence_threshold),
        "box_threshold": float(box_threshold),
        "min_area": int(min_area),
    }
    return calibration, box_f1


def threshold_sweep(
    densities: Sequence[np.ndarray],
    gt_boxes_per_image: Sequence[Sequence[Box]],
    gt_present: Sequence,
    thresholds: Sequence[float] = SWEEP_THRESHOLDS,
    min_area: int = 20,
    iou_threshold: float = 0.5,
) -> list[dict[str, float | int]]:
    """Presence and box metrics of density maps over a list of thresholds.

    For each threshold ``thr`` (the same for presence and boxes, as in the paper): the served
    findings ``detect_regions(density, thr, min_area, thr)``; presence against ``gt_present``,
    boxes matched to the ground truth at ``iou_threshold``.

    Returns:
        One row per threshold: ``threshold``, ``presence_accuracy`` / ``_precision`` /
        ``_recall`` / ``_f1``, ``box_precision`` / ``_recall`` / ``_f1``, ``box_tp`` / ``_fp``
        / ``_fn``, ``mean_iou``, ``count_mae``.
    """
    if not len(densities) == len(gt_boxes_per_image) == len(gt_present):
        raise ValueError(
            "densities, gt_boxes_per_image and gt_present must list the same images; got "
            f"{len(densities)}, {len(gt_boxes_per_image)} and {len(gt_present)}"
        )
    rows = []
    for thr in thresholds:
        findings = [detect_regions(d, thr, min_area, thr) for d in densities]
        presence = binary_metrics(gt_present, [f.manipulated for f in findings])
        pred_boxes = [f.boxes for f in findings]
        boxes = box_detection_metrics(pred_boxes, gt_boxes_per_image, iou_threshold)
        rows.append(
            {
                "threshold": float(thr),
                **{f"presence_{k}": presence[k] for k in ("accuracy", "precision", "recall", "f1")},
                **{f"box_{k}": boxes[k] for k in ("precision", "recall", "f1", "tp", "fp", "fn")},
                "mean_iou": boxes["mean_iou"],
                "count_mae": boxes["count_mae"],
            }
        )
    return rows


def fit_ood(
    model: nn.Module,
    train: Any,
    train_idx: Sequence[int],
    groups: Sequence[int] | None,
    val: Any,
    images_of: Callable[[Any], torch.Tensor],
    device: torch.device,
    batch_size: int = 64,
    coverage: float = DEFAULT_COVERAGE,
) -> OODStatistics:
    """In-distribution statistics of ``model``'s features: group means and shared covariance
    from the (un-augmented) training images ``train_idx`` (``groups``: their group ids, None:
    one group), threshold from every ``val`` image, so that ``coverage`` of them count as in."""

    def features(dataset: Any) -> dict[str, np.ndarray]:
        loader = DataLoader(dataset, batch_size=batch_size, shuffle=False)
        return model_features(model, (images_of(b) for b in loader), device)

    return OODStatistics.fit(
        features(Subset(train, list(train_idx))), groups, features(val), coverage
    )


def grey_zone(
    fake_probability: Sequence[float],
    called_fake: Sequence[bool],
    is_fake: Sequence[bool],
    target_accuracy: float = 0.98,
    max_share: float = 0.2,
    step: float = 0.025,
) -> tuple[float, float]:
    """The band ``(low, high)`` of P(fake) around 0.5 answered ``uncertain``, fit on validation.

    The narrowest band ``0.5 -+ w`` (w = 0, step, 2 step, ...) outside which the real/fake calls
    (``called_fake``) reach ``target_accuracy``, widened no further than holding ``max_share``
    of the images. ``(0.5, 0.5)``, an empty band, when the model is confident enough as it is.
    """
    p = np.asarray(fake_probability, dtype=np.float64)
    right = np.asarray(called_fake, dtype=bool) == np.asarray(is_fake, dtype=bool)
    if len(p) != len(right) or len(p) == 0:
        raise ValueError("need the same non-zero number of probabilities, calls and labels")
    best = 0.0
    for w in np.arange(0.0, 0.5, step):
        inside = (p > 0.5 - w) & (p < 0.5 + w)
        if inside.mean() > max_share:
            break
        best = float(w)
        if not (~inside).any() or right[~inside].mean() >= target_accuracy:
            break
    return round(0.5 - best, 6), round(0.5 + best, 6)
