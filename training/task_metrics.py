"""Each task's metrics dict from its predictions and calibration (pure arithmetic).

Boxes are the served ones (:func:`medfakedet.schema.detect_regions` at the calibrated
thresholds), so the numbers describe what a client of the API gets.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from medfakedet.density import RegionScorer
from medfakedet.labels import CLASS_NAMES, FAKE_CLASS_INDICES, ORGANS, fake_probability, organ_of
from medfakedet.metrics import (
    average_precision,
    binary_metrics,
    box_detection_metrics,
    classification_report,
    expected_calibration_error,
    negative_log_likelihood,
    pixel_iou_f1,
    roc_auc,
    softmax,
)
from medfakedet.schema import Findings, detect_regions
from training.inference import LocalizerPredictions

#: The paper reports boxes matched at IoU 0.5 (val) and 0.28 (test); we report both everywhere.
BOX_IOUS: tuple[float, ...] = (0.5, 0.28)


def ranking_metrics(positive: np.ndarray, scores: np.ndarray) -> dict[str, float | None]:
    """ROC-AUC (None unless both classes occur) and average precision (None without a positive)."""
    both = 0 < positive.sum() < len(positive)
    return {
        "roc_auc": roc_auc(positive, scores) if both else None,
        "average_precision": average_precision(positive, scores) if positive.any() else None,
    }


def compute_synthesis8_metrics(
    logits: np.ndarray,
    labels: np.ndarray,
    temperature: float = 1.0,
    class_names: Sequence[str] = CLASS_NAMES,
) -> dict[str, Any]:
    """Classification, organ, real-vs-fake and calibration metrics of 8-class logits.

    Class predictions are the argmax (temperature does not change them); P(fake) is the sum
    of the four fake classes' calibrated probabilities; the predicted organ is the organ of the
    predicted class, as serving reports it.
    """
    logits = np.asarray(logits, dtype=np.float64)
    labels = np.asarray(labels, dtype=np.int64)
    pred = logits.argmax(axis=1)
    report = classification_report(labels, pred, class_names)
    probs_raw = softmax(logits)
    probs = softmax(logits, temperature)
    organ_true = np.array([ORGANS.index(organ_of(int(i))) for i in labels])
    organ_pred = np.array([ORGANS.index(organ_of(int(i))) for i in pred])
    is_fake = np.isin(labels, FAKE_CLASS_INDICES)
    p_fake = fake_probability(probs)
    binary = binary_metrics(is_fake, p_fake >= 0.5)
    return {
        "n": int(len(labels)),
        "accuracy": report["accuracy"],
        "macro_f1": report["macro_f1"],
        "per_class": report["per_class"],
        "confusion_matrix": report["confusion_matrix"],
        "class_names": list(class_names),
        "organ_accuracy": float(np.mean(organ_true == organ_pred)),
        "real_vs_fake": {
            **ranking_metrics(is_fake, p_fake),
            **{k: binary[k] for k in ("accuracy", "precision", "recall", "f1")},
        },
        "calibration": {
            "temperature": float(temperature),
            "ece_before": expected_calibration_error(probs_raw, labels),
            "ece_after": expected_calibration_error(probs, labels),
            "nll_before": negative_log_likelihood(logits, labels),
            "nll_after": negative_log_likelihood(logits, labels, temperature),
        },
    }


def served_findings(
    densities: Sequence[np.ndarray],
    presence_threshold: float,
    box_threshold: float,
    min_area: int,
    region_scorer: RegionScorer | dict | None = None,
) -> list[Findings]:
    """What serving reports for each map at the calibrated thresholds (and region scorer, as
    stored in the artifact's calibration)."""
    scorer = None if region_scorer is None else RegionScorer.from_dict(region_scorer)
    return [
        detect_regions(d, box_threshold, min_area, presence_threshold, scorer) for d in densities
    ]


def false_alarm_rate(present: np.ndarray, findings: Sequence[Findings]) -> float | None:
    """Share of the untouched images called manipulated; None when there is none."""
    untouched = [f.manipulated for f, p in zip(findings, present, strict=True) if not p]
    return float(np.mean(untouched)) if untouched else None


def compute_localizer_metrics(
    pred: LocalizerPredictions,
    presence_threshold: float,
    box_threshold: float,
    min_area: int,
    region_scorer: RegionScorer | dict | None = None,
) -> dict[str, Any]:
    """Presence, box, count and pixel metrics of raw density maps at calibrated thresholds.

    Presence and boxes: the served findings (:func:`medfakedet.schema.detect_regions`) of every
    image, boxes matched one-to-one at each IoU of :data:`BOX_IOUS`. Pixels: the map
    thresholded at ``box_threshold`` against the ground-truth mask, and the mask head
    (logits > 0) against the same mask.
    """
    findings = served_findings(
        pred.density, presence_threshold, box_threshold, min_area, region_scorer
    )
    scores = np.array([f.presence_score for f in findings])
    presence = binary_metrics(pred.present, [f.manipulated for f in findings])
    presence.update(ranking_metrics(pred.present, scores))
    presence["false_alarm"] = false_alarm_rate(pred.present, findings)
    boxes = [f.boxes for f in findings]
    box_metrics = {
        f"iou_{iou:g}": box_detection_metrics(boxes, pred.gt_boxes, iou) for iou in BOX_IOUS
    }
    pixel_iou, pixel_f1 = pixel_iou_f1(pred.density >= box_threshold, pred.gt_mask)
    head_iou, head_f1 = pixel_iou_f1(pred.mask_pred, pred.gt_mask)
    return {
        "n": int(len(pred.present)),
        "n_manipulated": int(pred.present.sum()),
        "n_gt_boxes": int(sum(len(b) for b in pred.gt_boxes)),
        "presence_threshold": float(presence_threshold),
        "box_threshold": float(box_threshold),
        "min_area": int(min_area),
        "region_scorer": region_scorer is not None,
        "presence": presence,
        "boxes": box_metrics,
        "count_mae": box_metrics[f"iou_{BOX_IOUS[0]:g}"]["count_mae"],
        "pixel": {"iou": pixel_iou, "f1": pixel_f1},
        "mask_head_pixel": {"iou": head_iou, "f1": head_f1},
    }


def localizer_by_kind(
    pred: LocalizerPredictions,
    kinds: dict[str, str],
    presence_threshold: float,
    box_threshold: float,
    min_area: int,
    region_scorer: RegionScorer | dict | None = None,
) -> list[dict[str, Any]]:
    """Presence and box recall per manipulation kind, as served (calibrated thresholds).

    ``kinds`` maps image IDs to the builder's ``"lesion+removal"`` strings. Only images whose
    regions are all of one kind are counted (a region's own kind is not recorded), plus the
    untouched ones, whose "flagged" share is the false-alarm rate.
    """
    groups: dict[str, list[int]] = {}
    for i, image_id in enumerate(pred.ids):
        if image_id not in kinds:
            continue
        parts = {k for k in kinds[image_id].split("+") if k}
        if len(parts) <= 1:
            groups.setdefault(parts.pop() if parts else "untouched", []).append(i)
    rows = []
    for kind, idx in sorted(groups.items()):
        findings = served_findings(
            pred.density[idx], presence_threshold, box_threshold, min_area, region_scorer
        )
        boxes = [f.boxes for f in findings]
        gt = [pred.gt_boxes[i] for i in idx]
        n_regions = sum(len(g) for g in gt)
        m = box_detection_metrics(boxes, gt, 0.5)
        rows.append(
            {
                "kind": kind,
                "images": len(idx),
                "regions": n_regions,
                "flagged": float(np.mean([f.manipulated for f in findings])),
                "median_presence_score": float(np.median([f.presence_score for f in findings])),
                "box_recall@0.5": m["recall"] if n_regions else None,
                "boxes_predicted": int(sum(len(b) for b in boxes)),
            }
        )
    return rows


def headline(task: str, metrics: dict[str, Any]) -> dict[str, float | None]:
    """The few numbers of the robustness table."""
    if task == "synthesis8":
        return {
            "accuracy": metrics["accuracy"],
            "macro_f1": metrics["macro_f1"],
            "real_vs_fake_auc": metrics["real_vs_fake"]["roc_auc"],
            "ece_after": metrics["calibration"]["ece_after"],
        }
    return {
        "false_alarm": metrics["presence"].get("false_alarm"),
        "presence_f1": metrics["presence"]["f1"],
        "presence_accuracy": metrics["presence"]["accuracy"],
        "box_f1@0.5": metrics["boxes"]["iou_0.5"]["f1"],
        "box_f1@0.28": metrics["boxes"]["iou_0.28"]["f1"],
        "pixel_iou": metrics["pixel"]["iou"],
    }
