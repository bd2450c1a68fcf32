"""What a user is told on a labelled split: the served verdicts of synthesis8 (``real`` /
``fake`` / ``uncertain``) and of the localizer (``manipulated`` / ``untouched`` /
``uncertain``), clean or corrupted, and the shares the issue's acceptance counts.

The verdict of each image is :func:`medfakedet.verdict.synthesis8_verdict`, the rule serving
applies, fed with the in-distribution check of the artifact's statistics (features captured in
the same forward pass as the logits) and its calibrated grey zone: a number here is what a
client would have been answered.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from medfakedet.artifacts import Artifact
from medfakedet.density import RegionScorer
from medfakedet.labels import ORGANS, fake_probability
from medfakedet.metrics import box_detection_metrics, roc_auc, softmax
from medfakedet.ood import captured_features, stacked
from medfakedet.verdict import (
    NO_GREY_ZONE,
    UNKNOWN,
    InDistribution,
    density_verdict,
    synthesis8_verdict,
)
from training.inference import LocalizerPredictions, predict_localizer, predict_synthesis8
from training.task_metrics import served_findings


def artifact_grey_zone(calibration: dict[str, Any]) -> tuple[float, float]:
    """The artifact's P(fake) grey zone (empty for artifacts calibrated before it existed)."""
    return (
        float(calibration.get("grey_low", NO_GREY_ZONE[0])),
        float(calibration.get("grey_high", NO_GREY_ZONE[1])),
    )


def predict_with_checks(
    artifact: Artifact,
    dataset: Any,
    device: torch.device,
    batch_size: int = 64,
    corruption: str | None = None,
    show_progress: bool = False,
) -> dict[str, np.ndarray]:
    """:func:`training.inference.predict_synthesis8`'s ``logits`` and ``labels``, plus each
    image's in-distribution check: ``inside`` (bool, or None without statistics) and
    ``score``."""
    with captured_features(artifact.model) as found:
        pred = predict_synthesis8(
            artifact.model, dataset, device, batch_size, corruption, artifact.preprocess,
            show_progress,
        )  # fmt: skip
    n = len(pred["labels"])
    if artifact.ood is None:
        pred["inside"], pred["score"] = np.full(n, None), np.full(n, None)
    else:
        pred["inside"], pred["score"] = artifact.ood.check(stacked(found))
    return pred


def answers(
    probs: np.ndarray,
    inside: np.ndarray,
    score: np.ndarray,
    grey_zone: tuple[float, float],
) -> np.ndarray:
    """(N,) the served verdict of each row of calibrated 8-class probabilities."""
    verdicts = []
    for p, i, s in zip(probs, inside, score, strict=True):
        check = UNKNOWN if i is None else InDistribution(bool(i), float(s))
        p_fake = float(fake_probability(p))
        verdicts.append(synthesis8_verdict(int(np.argmax(p)) % 2 == 1, p_fake, check, grey_zone)[0])
    return np.asarray(verdicts)


def _share(mask: np.ndarray, within: np.ndarray) -> float | None:
    return float(mask[within].mean()) if within.any() else None


def verdict_metrics(
    logits: np.ndarray,
    labels: np.ndarray,
    inside: np.ndarray,
    score: np.ndarray,
    temperature: float,
    grey_zone: tuple[float, float],
) -> dict[str, Any]:
    """The acceptance numbers of one condition.

    ``real_answered_fake`` / ``real_uncertain``: shares of the real images answered ``fake`` /
    ``uncertain`` (the false-"fake" rate counts ``fake`` answers only); ``fake_answered_fake``:
    fake recall of the answers; ``*_called_fake``: the model's raw call (the paper's
    ``is_fake``, argmax of 8 classes), without abstention; ``uncertain``: share of all images;
    ``out_of_distribution``: share of all images whose check says out; organ accuracy of the
    argmax class over all images; ROC-AUC of the calibrated P(fake)."""
    labels = np.asarray(labels)
    probs = softmax(np.asarray(logits, dtype=np.float64), temperature)
    verdict = answers(probs, inside, score, grey_zone)
    is_fake, real = labels % 2 == 1, labels % 2 == 0
    called_fake = probs.argmax(axis=1) % 2 == 1
    organ = labels // 2
    both = 0 < is_fake.sum() < len(is_fake)
    out = np.array([i is not None and not i for i in inside])
    result: dict[str, Any] = {
        "n_real": int(real.sum()),
        "n_fake": int(is_fake.sum()),
        "real_answered_fake": _share(verdict == "fake", real),
        "real_uncertain": _share(verdict == "uncertain", real),
        "fake_answered_fake": _share(verdict == "fake", is_fake),
        "uncertain": float(np.mean(verdict == "uncertain")),
        "out_of_distribution": float(out.mean()),
        "organ_accuracy": float(np.mean(probs.argmax(axis=1) // 2 == organ)),
        "roc_auc": roc_auc(is_fake, fake_probability(probs)) if both else None,
        "real_called_fake": _share(called_fake, real),
        "fake_called_fake": _share(called_fake, is_fake),
    }
    result["by_organ"] = {
        o: {
            "real_answered_fake": _share(verdict == "fake", real & (organ == k)),
            "real_uncertain": _share(verdict == "uncertain", real & (organ == k)),
            "fake_answered_fake": _share(verdict == "fake", is_fake & (organ == k)),
            "real_called_fake": _share(called_fake, real & (organ == k)),
        }
        for k, o in enumerate(ORGANS)
    }
    return result


def predict_localizer_with_checks(
    artifact: Artifact,
    dataset: Any,
    device: torch.device,
    batch_size: int = 32,
    corruption: str | None = None,
    show_progress: bool = False,
) -> tuple[LocalizerPredictions, np.ndarray]:
    """:func:`training.inference.predict_localizer`'s predictions and each image's
    in-distribution check (``inside``: bool, or None without statistics)."""
    with captured_features(artifact.model) as found:
        pred = predict_localizer(
            artifact.model, dataset, device, batch_size, corruption, show_progress=show_progress
        )
    if artifact.ood is None:
        return pred, np.full(len(pred.ids), None)
    return pred, artifact.ood.check(stacked(found))[0]


def localizer_answer_metrics(
    pred: LocalizerPredictions,
    inside: np.ndarray,
    kinds: dict[str, str],
    presence_threshold: float,
    box_threshold: float,
    min_area: int,
    region_scorer: RegionScorer | dict | None = None,
) -> dict[str, Any]:
    """The localizer's acceptance numbers of one condition, as served.

    ``false_alarm_untouched``: share of the untouched images answered ``manipulated``
    (``flagged_untouched``: the raw call, before abstention); ``uncertain``: share of all
    images; per manipulation kind (images whose regions are all of that kind): the share
    answered ``manipulated`` (recall) and the box F1 / recall at IoU 0.5 of the served boxes
    (none for an uncertain answer, as served)."""
    findings = served_findings(
        pred.density, presence_threshold, box_threshold, min_area, region_scorer
    )
    flagged = np.array([f.manipulated for f in findings])
    verdict = np.array(
        [
            density_verdict(bool(m), UNKNOWN if i is None else InDistribution(bool(i)))
            for m, i in zip(flagged, inside, strict=True)
        ]
    )
    boxes = [[] if v == "uncertain" else f.boxes for f, v in zip(findings, verdict, strict=True)]
    untouched = ~pred.present
    kind_of = [set(filter(None, kinds.get(i, "").split("+"))) for i in pred.ids]
    result: dict[str, Any] = {
        "n": len(pred.ids),
        "n_untouched": int(untouched.sum()),
        "false_alarm_untouched": _share(verdict == "manipulated", untouched),
        "flagged_untouched": _share(flagged, untouched),
        "uncertain": float(np.mean(verdict == "uncertain")),
        "uncertain_untouched": _share(verdict == "uncertain", untouched),
    }
    for kind in ("lesion", "removal"):
        idx = [j for j, k in enumerate(kind_of) if k == {kind}]
        result[kind] = {"images": len(idx), "answered_manipulated": None}
        result[kind].update({"box_f1@0.5": None, "box_recall@0.5": None})
        if idx:
            m = box_detection_metrics([boxes[j] for j in idx], [pred.gt_boxes[j] for j in idx], 0.5)
            result[kind].update(
                answered_manipulated=float(np.mean(verdict[idx] == "manipulated")),
                **{"box_f1@0.5": m["f1"], "box_recall@0.5": m["recall"]},
            )
    return result
