"""The report's figures (matplotlib, Agg backend, imported on use)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from medfakedet.metrics import expected_calibration_error, roc_auc, roc_curve, softmax
from training.inference import LocalizerPredictions
from training.task_metrics import served_findings


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_confusion_matrix(
    matrix: Sequence[Sequence[int]], names: Sequence[str], path: Path
) -> None:
    plt = _pyplot()
    m = np.asarray(matrix)
    fig, ax = plt.subplots(figsize=(7, 6))
    ax.imshow(m, cmap="Blues")
    ax.set_xticks(range(len(names)), names, rotation=45, ha="right")
    ax.set_yticks(range(len(names)), names)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    for i in range(m.shape[0]):
        for j in range(m.shape[1]):
            color = "white" if m[i, j] > m.max() / 2 else "black"
            ax.text(j, i, str(m[i, j]), ha="center", va="center", color=color, fontsize=8)
    ax.set_title("synthesis8 confusion matrix")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_roc(y_true: np.ndarray, scores: np.ndarray, title: str, path: Path) -> None:
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5, 5))
    if 0 < np.sum(y_true) < len(y_true):
        fpr, tpr, _ = roc_curve(y_true, scores)
        ax.plot(fpr, tpr, label=f"AUC = {roc_auc(y_true, scores):.4f}")
        ax.legend(loc="lower right")
    ax.plot([0, 1], [0, 1], ls="--", color="gray", lw=0.8)
    ax.set_xlabel("false positive rate")
    ax.set_ylabel("true positive rate")
    ax.set_title(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _reliability(probs: np.ndarray, labels: np.ndarray, n_bins: int = 15):
    conf = probs.max(axis=1)
    correct = probs.argmax(axis=1) == labels
    edges = np.linspace(0, 1, n_bins + 1)
    bins = np.clip(np.searchsorted(edges, conf, side="left") - 1, 0, n_bins - 1)
    centers, accs, counts = [], [], []
    for b in range(n_bins):
        sel = bins == b
        if sel.any():
            centers.append(conf[sel].mean())
            accs.append(correct[sel].mean())
            counts.append(int(sel.sum()))
    return np.array(centers), np.array(accs), np.array(counts)


def plot_reliability(
    logits: np.ndarray, labels: np.ndarray, temperature: float, path: Path
) -> None:
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5, 5))
    for t, name in ((1.0, "before (T=1)"), (temperature, f"after (T={temperature:.3f})")):
        probs = softmax(logits, t)
        c, a, n = _reliability(probs, labels)
        ece = expected_calibration_error(probs, labels)
        ax.plot(c, a, marker="o", label=f"{name}, ECE {ece:.4f}")
    ax.plot([0, 1], [0, 1], ls="--", color="gray", lw=0.8)
    ax.set_xlabel("confidence (top-class probability)")
    ax.set_ylabel("accuracy")
    ax.set_title("reliability diagram")
    ax.legend(loc="upper left", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_sweep(rows: Sequence[dict], chosen: dict[str, float], path: Path) -> None:
    plt = _pyplot()
    thr = [r["threshold"] for r in rows]
    fig, ax = plt.subplots(figsize=(6, 4))
    for key, label in (
        ("presence_f1", "presence F1"),
        ("box_precision", "box precision"),
        ("box_recall", "box recall"),
        ("box_f1", "box F1 @ IoU 0.5"),
        ("mean_iou", "mean IoU (matched)"),
    ):
        ax.plot(thr, [r[key] for r in rows], marker=".", label=label)
    for name, value in chosen.items():
        ax.axvline(value, ls=":", color="gray")
        ax.text(value, 0.02, f" {name}", rotation=90, fontsize=7, va="bottom")
    ax.set_xlabel("density threshold")
    ax.set_ylim(0, 1.02)
    ax.set_title("threshold sweep")
    ax.legend(fontsize=7, loc="lower center")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_localizer_examples(
    dataset: Any,
    pred: LocalizerPredictions,
    box_threshold: float,
    min_area: int,
    path: Path,
    n: int = 8,
    presence_threshold: float = 0.0,
    region_scorer: Any = None,
) -> None:
    """A grid of images with the density overlaid, true boxes (green) and served ones (red)."""
    plt = _pyplot()
    from matplotlib.patches import Rectangle

    manipulated = np.flatnonzero(pred.present)
    clean = np.flatnonzero(~pred.present)
    k_clean = min(len(clean), max(1, n // 4))
    picks = [*manipulated[: n - k_clean], *clean[:k_clean]][:n]
    cols = 4
    rows = max(1, int(np.ceil(len(picks) / cols)))
    fig, axes = plt.subplots(rows, cols, figsize=(3 * cols, 3.2 * rows), squeeze=False)
    for ax in axes.ravel():
        ax.axis("off")
    for ax, i in zip(axes.ravel(), picks, strict=False):
        image = dataset[int(i)]["image"][0].numpy()
        d = pred.density[i]
        ax.imshow(image, cmap="gray", vmin=0, vmax=1)
        ax.imshow(np.ma.masked_less(d, 0.05), cmap="jet", alpha=0.35, vmin=0, vmax=1)
        (found,) = served_findings([d], presence_threshold, box_threshold, min_area, region_scorer)
        for b, color in (
            *((b, "lime") for b in pred.gt_boxes[i]),
            *((b, "red") for b in found.boxes),
        ):
            ax.add_patch(
                Rectangle((b.x1 - 0.5, b.y1 - 0.5), b.width, b.height, fill=False, ec=color, lw=1.2)
            )
        ax.set_title(f"{pred.ids[i]}\nscore {found.presence_score:.2f}", fontsize=7)
    fig.suptitle("green: ground truth, red: predicted boxes", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_verdict_shares(verdicts: dict[str, dict[str, Any]], path: Path) -> None:
    """Per condition: the shares of the real images answered fake and uncertain, and of the
    fakes answered fake (synthesis8's served verdicts, :mod:`training.verdicts`)."""
    plt = _pyplot()
    names = list(verdicts)
    series = (
        ("real answered fake", "real_answered_fake", "tab:red"),
        ("real answered uncertain", "real_uncertain", "tab:gray"),
        ("fakes answered fake", "fake_answered_fake", "tab:blue"),
    )
    x = np.arange(len(names))
    fig, ax = plt.subplots(figsize=(9, 4))
    for k, (label, key, color) in enumerate(series):
        values = [verdicts[n][key] or 0.0 for n in names]
        ax.bar(x + (k - 1) * 0.27, values, 0.27, label=label, color=color)
    ax.axhline(0.02, color="tab:red", ls=":", lw=1, label="false-fake target (clean)")
    ax.axhline(0.95, color="tab:blue", ls=":", lw=1, label="fake recall target")
    ax.set_xticks(x, names, rotation=30, ha="right")
    ax.set_ylim(0, 1)
    ax.set_ylabel("share")
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
