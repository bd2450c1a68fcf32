"""Evaluate an artifact on a dataset split: ``metrics.json``, ``report.md`` and PNG plots.

``python -m training.evaluate --artifact artifacts/synthesis8 --data data/embedded --split test
--out docs/reports/synthesis8``

The work is split so that each part can be tested on its own:

- ``predict_*``: run the model over a dataset (optionally corrupted) -> plain numpy predictions;
- ``compute_*_metrics``: predictions + calibration -> a metrics dict (pure arithmetic);
- ``plot_*`` and :func:`write_report`: files for people.

Calibration (temperature; presence and box thresholds) always comes from the artifact, i.e.
from the validation split; test data never tunes anything.
"""

from __future__ import annotations

import argparse
import io
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn
from torch.utils.data import DataLoader, Dataset

from medfakedet.artifacts import Artifact, load_artifact
from medfakedet.data.inpaint import read_manipulation_kinds
from medfakedet.density import Box, density_to_boxes, presence_score
from medfakedet.imaging import decode_image
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
    roc_curve,
    softmax,
    threshold_sweep,
)
from medfakedet.preprocess import PreprocessConfig, normalize, resize_tensor, to_channels, to_tensor
from training.common import machine_info, progress, select_device, setup_threads, write_json

#: The paper reports boxes matched at IoU 0.5 (val) and 0.28 (test); we report both everywhere.
BOX_IOUS: tuple[float, ...] = (0.5, 0.28)
SWEEP_THRESHOLDS: tuple[float, ...] = tuple(round(t, 2) for t in np.arange(0.05, 0.951, 0.05))
NOISE_SIGMA = 0.03
DOWNSCALE_FACTOR = 0.5

# ----------------------------------------------------------------------------------------------
# data roots


def resolve_data_root(path: str | Path, kind: str) -> Path:
    """Accept the dataset folder itself or the builder's output folder that holds it.

    ``kind`` is "medfake" or "medfakeinpaint"; ``data/embedded`` resolves to
    ``data/embedded/medfake`` (or ``.../medfakeinpaint``) when that subfolder exists.
    """
    path = Path(path)
    if (path / kind).is_dir():
        return path / kind
    if not path.is_dir():
        raise FileNotFoundError(
            f"data folder {path} not found; give the {kind} folder or the folder that holds it "
            "(e.g. the output of `python -m medfakedet.data.builder`)"
        )
    return path


# ----------------------------------------------------------------------------------------------
# corruptions for the robustness table, applied to the model-size image in [0, 1]


def _jpeg(quality: int) -> Callable[[torch.Tensor, int], torch.Tensor]:
    def corrupt(x: torch.Tensor, _index: int) -> torch.Tensor:
        arr = (x.clamp(0, 1).permute(1, 2, 0).numpy() * 255.0).round().astype(np.uint8)
        image = Image.fromarray(arr[:, :, 0] if arr.shape[2] == 1 else arr)
        buf = io.BytesIO()
        image.save(buf, format="JPEG", quality=quality)
        # Decode with the same code serving uses.
        return to_channels(to_tensor(decode_image(buf.getvalue()).pixels), x.shape[0])

    return corrupt


def _down_up(x: torch.Tensor, _index: int) -> torch.Tensor:
    size = x.shape[-1]
    small = resize_tensor(x, max(8, round(size * DOWNSCALE_FACTOR)))
    return F.interpolate(small[None], size=x.shape[-2:], mode="bilinear", align_corners=False)[0]


def _noise(x: torch.Tensor, index: int) -> torch.Tensor:
    # Seeded by the item index: the same noise on every run and for every model.
    g = torch.Generator().manual_seed(1_000_003 + index)
    return (x + NOISE_SIGMA * torch.randn(x.shape, generator=g)).clamp(0, 1)


CORRUPTIONS: dict[str, Callable[[torch.Tensor, int], torch.Tensor]] = {
    "jpeg_q95": _jpeg(95),
    "jpeg_q75": _jpeg(75),
    "jpeg_q50": _jpeg(50),
    "downscale_x0.5_upscale": _down_up,
    f"gaussian_noise_{NOISE_SIGMA:g}": _noise,
}


def corrupt_batch(
    x: torch.Tensor, cfg: PreprocessConfig, corruption: str, first_index: int
) -> torch.Tensor:
    """Undo the normalisation, corrupt each image in [0, 1], normalise again."""
    fn = CORRUPTIONS[corruption]
    mean = torch.tensor(cfg.mean).view(-1, 1, 1)
    std = torch.tensor(cfg.std).view(-1, 1, 1)
    out = [
        normalize(fn((im * std + mean).clamp(0, 1), first_index + i), cfg) for i, im in enumerate(x)
    ]
    return torch.stack(out)


# ----------------------------------------------------------------------------------------------
# running a model over a dataset


def _loader(dataset: Dataset, batch_size: int, num_workers: int = 0) -> DataLoader:
    return DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=num_workers)


def _autocast(device: torch.device):
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.float16)
    return torch.autocast("cpu", enabled=False)


@torch.inference_mode()
def predict_synthesis8(
    model: nn.Module,
    dataset: Dataset,
    device: torch.device,
    batch_size: int = 64,
    corruption: str | None = None,
    cfg: PreprocessConfig | None = None,
    show_progress: bool = False,
) -> dict[str, np.ndarray]:
    """``{"logits": (N, 8) float64, "labels": (N,) int64}`` over ``dataset`` in order."""
    model.eval()
    logits, labels, seen = [], [], 0
    desc = f"predict {corruption or 'clean'}"
    for x, y in progress(_loader(dataset, batch_size), show_progress, desc=desc, leave=False):
        if corruption is not None:
            x = corrupt_batch(x, cfg, corruption, seen)
        seen += len(x)
        x = x.to(device, non_blocking=True)
        if device.type == "cuda":
            x = x.contiguous(memory_format=torch.channels_last)
        with _autocast(device):
            out = model(x)
        logits.append(out.float().cpu().numpy().astype(np.float64))
        labels.append(np.asarray(y, dtype=np.int64))
    if not logits:
        raise ValueError("the split is empty: nothing to predict")
    return {"logits": np.concatenate(logits), "labels": np.concatenate(labels)}


@dataclass
class LocalizerPredictions:
    """Everything the localizer metrics need, at model resolution."""

    density: np.ndarray  # (N, S, S) float32 raw density maps
    mask_pred: np.ndarray  # (N, S, S) bool: mask head logits > 0
    gt_mask: np.ndarray  # (N, S, S) bool
    gt_boxes: list[list[Box]]
    present: np.ndarray  # (N,) bool: image is manipulated
    ids: list[str]
    loss: float | None = None


@torch.inference_mode()
def predict_localizer(
    model: nn.Module,
    dataset: Any,
    device: torch.device,
    batch_size: int = 32,
    corruption: str | None = None,
    loss_fn: Callable[..., torch.Tensor] | None = None,
    show_progress: bool = False,
) -> LocalizerPredictions:
    """Density maps, mask-head masks and ground truth of every item of a MedFakeInpaintDataset."""
    model.eval()
    density, mask_pred, gt_mask, ids = [], [], [], []
    loss_sum, seen = 0.0, 0
    desc = f"predict {corruption or 'clean'}"
    for batch in progress(_loader(dataset, batch_size), show_progress, desc=desc, leave=False):
        x = batch["image"]
        if corruption is not None:
            x = corrupt_batch(x, dataset.preprocess, corruption, seen)
        with _autocast(device):
            d, m = model(x.to(device))
        d, m = d.float(), m.float()
        if loss_fn is not None:
            loss = loss_fn(d, m, batch["density"].to(device), batch["mask"].to(device))
            loss_sum += float(loss) * len(x)
        seen += len(x)
        density.append(d[:, 0].cpu().numpy())
        mask_pred.append((m[:, 0] > 0).cpu().numpy())
        gt_mask.append(batch["mask"][:, 0].numpy() > 0.5)
        ids.extend(batch["id"])
    if not density:
        raise ValueError("the split is empty: nothing to predict")
    gt = np.concatenate(gt_mask)
    return LocalizerPredictions(
        density=np.concatenate(density),
        mask_pred=np.concatenate(mask_pred),
        gt_mask=gt,
        gt_boxes=[dataset.gt_boxes(i) for i in range(len(dataset))],
        present=gt.reshape(len(gt), -1).any(axis=1),
        ids=ids,
        loss=loss_sum / seen if loss_fn is not None else None,
    )


# ----------------------------------------------------------------------------------------------
# metrics from predictions (pure arithmetic)


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
    both = 0 < is_fake.sum() < len(is_fake)
    return {
        "n": int(len(labels)),
        "accuracy": report["accuracy"],
        "macro_f1": report["macro_f1"],
        "per_class": report["per_class"],
        "confusion_matrix": report["confusion_matrix"],
        "class_names": list(class_names),
        "organ_accuracy": float(np.mean(organ_true == organ_pred)),
        "real_vs_fake": {
            "roc_auc": roc_auc(is_fake, p_fake) if both else None,
            "average_precision": average_precision(is_fake, p_fake) if is_fake.any() else None,
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


def predicted_boxes(
    densities: np.ndarray, threshold: float, min_area: int, min_peak: float = 0.0
) -> list[list[Box]]:
    return [density_to_boxes(d, threshold, min_area, min_peak) for d in densities]


def compute_localizer_metrics(
    pred: LocalizerPredictions,
    presence_threshold: float,
    box_threshold: float,
    min_area: int,
) -> dict[str, Any]:
    """Presence, box, count and pixel metrics of raw density maps at calibrated thresholds.

    Presence: ``max(raw density) >= presence_threshold`` (no per-image normalisation). Boxes:
    ``density_to_boxes(raw density, box_threshold, min_area, min_peak=presence_threshold)`` for
    every image, as serving returns them, matched one-to-one at each IoU of :data:`BOX_IOUS`.
    Pixels: the map thresholded at ``box_threshold`` against the ground-truth mask, and the
    mask head (logits > 0) against the same mask.
    """
    peaks = np.array([presence_score(d) for d in pred.density])
    presence = binary_metrics(pred.present, peaks >= presence_threshold)
    both = 0 < pred.present.sum() < len(pred.present)
    presence["roc_auc"] = roc_auc(pred.present, peaks) if both else None
    presence["average_precision"] = (
        average_precision(pred.present, peaks) if pred.present.any() else None
    )
    boxes = predicted_boxes(pred.density, box_threshold, min_area, presence_threshold)
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
        peaks = np.array([presence_score(pred.density[i]) for i in idx])
        boxes = predicted_boxes(pred.density[idx], box_threshold, min_area, presence_threshold)
        gt = [pred.gt_boxes[i] for i in idx]
        n_regions = sum(len(g) for g in gt)
        m = box_detection_metrics(boxes, gt, 0.5)
        rows.append(
            {
                "kind": kind,
                "images": len(idx),
                "regions": n_regions,
                "flagged": float(np.mean(peaks >= presence_threshold)),
                "median_presence_score": float(np.median(peaks)),
                "box_recall@0.5": m["recall"] if n_regions else None,
                "boxes_predicted": int(sum(len(b) for b in boxes)),
            }
        )
    return rows


def _middle_of_best_run(values: Sequence[float]) -> int:
    """Index of the middle of the longest run of (near-)maximal values: the stablest choice."""
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


def choose_box_threshold(
    densities: np.ndarray,
    gt_boxes: Sequence[Sequence[Box]],
    min_area: int,
    candidates: Sequence[float] | None = None,
    iou_threshold: float = 0.5,
    min_peak: float = 0.0,
) -> tuple[float, float]:
    """The density threshold with the best box F1 at ``iou_threshold`` (fit on validation);
    regions whose peak is below ``min_peak`` (the presence threshold) do not count."""
    if candidates is None:
        candidates = np.round(np.arange(0.05, 0.951, 0.01), 2)
    f1s = [
        box_detection_metrics(
            predicted_boxes(densities, t, min_area, min_peak), gt_boxes, iou_threshold
        )["f1"]
        for t in candidates
    ]
    k = _middle_of_best_run(f1s)
    return float(candidates[k]), float(f1s[k])


def localizer_sweep(
    pred: LocalizerPredictions,
    min_area: int,
    thresholds: Sequence[float] = SWEEP_THRESHOLDS,
    iou_threshold: float = 0.5,
) -> list[dict[str, Any]]:
    """The paper's ablation: one threshold for presence and boxes, swept."""
    return threshold_sweep(
        list(pred.density), pred.gt_boxes, pred.present, thresholds, min_area, iou_threshold
    )


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
        "presence_f1": metrics["presence"]["f1"],
        "presence_accuracy": metrics["presence"]["accuracy"],
        "box_f1@0.5": metrics["boxes"]["iou_0.5"]["f1"],
        "box_f1@0.28": metrics["boxes"]["iou_0.28"]["f1"],
        "pixel_iou": metrics["pixel"]["iou"],
    }


# ----------------------------------------------------------------------------------------------
# plots (matplotlib Agg, imported lazily)


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
    min_peak: float = 0.0,
) -> None:
    """A grid of images with the density overlaid, true boxes (green) and predicted (red)."""
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
        for b, color in (
            *((b, "lime") for b in pred.gt_boxes[i]),
            *((b, "red") for b in density_to_boxes(d, box_threshold, min_area, min_peak)),
        ):
            ax.add_patch(
                Rectangle((b.x1 - 0.5, b.y1 - 0.5), b.width, b.height, fill=False, ec=color, lw=1.2)
            )
        ax.set_title(f"{pred.ids[i]}\nscore {presence_score(d):.2f}", fontsize=7)
    fig.suptitle("green: ground truth, red: predicted boxes", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


# ----------------------------------------------------------------------------------------------
# report


def _fmt(value: Any) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, float):
        return f"{value:.4f}"
    return str(value)


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(_fmt(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def _machine_lines(result: dict[str, Any]) -> list[str]:
    m = result["machine"]
    train = result.get("training", {})
    tm = train.get("machine", {})
    lines = [
        f"- evaluated on: {m['cpu']} ({m['cpu_cores']} cores, {m['torch_threads']} torch "
        f"threads), device {m['device']}{', ' + m['gpu'] if 'gpu' in m else ''}, "
        f"torch {m['torch']}, Python {m['python']}",
        f"- evaluation time: {result['eval_seconds']:.1f} s",
    ]
    if train:
        lines.append(
            f"- training: {train.get('train_seconds', 0):.1f} s wall time "
            f"({train.get('epochs_run', '?')} epochs, best epoch {train.get('best_epoch', '?')}"
            f"{', stopped early at the time limit' if train.get('stopped_early') else ''}) on "
            f"{tm.get('cpu', '?')} ({tm.get('cpu_cores', '?')} cores), device "
            f"{tm.get('device', '?')}{', ' + tm['gpu'] if 'gpu' in tm else ''}"
        )
    return lines


def write_report(result: dict[str, Any], out: Path) -> Path:
    """``report.md`` from the result of :func:`evaluate_artifact`."""
    task, m = result["task"], result["metrics"]
    lines = [
        f"# {task} evaluation: {result['split']} split",
        "",
        f"- artifact: `{result['artifact']}` (arch {result['arch']}, version {result['version']})",
        f"- data: `{result['data']}`, split mode `{result['split_mode']}`, n = {m['n']}",
        f"- generated {result['created']}",
        *_machine_lines(result),
        "",
    ]
    if task == "synthesis8":
        cal = m["calibration"]
        rvf = m["real_vs_fake"]
        lines += [
            "## Summary",
            "",
            markdown_table(
                ["metric", "value"],
                [
                    ["accuracy (8 classes)", m["accuracy"]],
                    ["macro-F1", m["macro_f1"]],
                    ["organ accuracy", m["organ_accuracy"]],
                    ["real-vs-fake ROC-AUC", rvf["roc_auc"]],
                    ["real-vs-fake average precision", rvf["average_precision"]],
                    ["real-vs-fake accuracy (P(fake) >= 0.5)", rvf["accuracy"]],
                    ["temperature (fit on val)", cal["temperature"]],
                    [
                        "ECE before / after temperature",
                        f"{cal['ece_before']:.4f} / {cal['ece_after']:.4f}",
                    ],
                    [
                        "NLL before / after temperature",
                        f"{cal['nll_before']:.4f} / {cal['nll_after']:.4f}",
                    ],
                ],
            ),
            "",
            "## Per class",
            "",
            markdown_table(
                ["class", "precision", "recall", "F1", "support"],
                [
                    [name, c["precision"], c["recall"], c["f1"], c["support"]]
                    for name, c in m["per_class"].items()
                ],
            ),
            "",
            "![confusion matrix](confusion_matrix.png) ![ROC](roc_real_vs_fake.png) "
            "![reliability](reliability.png)",
            "",
        ]
    else:
        p = m["presence"]
        lines += [
            "## Presence (max of the raw density map >= presence threshold)",
            "",
            markdown_table(
                [
                    "threshold (val)",
                    "accuracy",
                    "precision",
                    "recall",
                    "F1",
                    "ROC-AUC",
                    "n",
                    "manipulated",
                ],
                [
                    [
                        m["presence_threshold"],
                        p["accuracy"],
                        p["precision"],
                        p["recall"],
                        p["f1"],
                        p["roc_auc"],
                        m["n"],
                        m["n_manipulated"],
                    ]
                ],
            ),
            "",
            f"## Boxes (density >= {m['box_threshold']:g}, min_area {m['min_area']})",
            "",
            markdown_table(
                [
                    "IoU",
                    "precision",
                    "recall",
                    "F1",
                    "mean IoU (matched)",
                    "count MAE",
                    "TP",
                    "FP",
                    "FN",
                ],
                [
                    [
                        b["iou_threshold"],
                        b["precision"],
                        b["recall"],
                        b["f1"],
                        b["mean_iou"],
                        b["count_mae"],
                        b["tp"],
                        b["fp"],
                        b["fn"],
                    ]
                    for b in m["boxes"].values()
                ],
            ),
            "",
            "## Pixels",
            "",
            markdown_table(
                ["map", "IoU", "F1"],
                [
                    [
                        f"density >= {m['box_threshold']:g} vs mask",
                        m["pixel"]["iou"],
                        m["pixel"]["f1"],
                    ],
                    [
                        "mask head (logit > 0) vs mask",
                        m["mask_head_pixel"]["iou"],
                        m["mask_head_pixel"]["f1"],
                    ],
                ],
            ),
            "",
            "## Threshold sweep (the paper's ablation)",
            "",
            "One threshold for presence and boxes; boxes matched at IoU 0.5.",
            "",
            markdown_table(
                [
                    "thr",
                    "presence P",
                    "presence R",
                    "presence F1",
                    "box P",
                    "box R",
                    "box F1",
                    "mean IoU",
                    "count MAE",
                ],
                [
                    [
                        r["threshold"],
                        r["presence_precision"],
                        r["presence_recall"],
                        r["presence_f1"],
                        r["box_precision"],
                        r["box_recall"],
                        r["box_f1"],
                        r["mean_iou"],
                        r["count_mae"],
                    ]
                    for r in result["sweep"]
                ],
            ),
            "",
            "![threshold sweep](threshold_sweep.png)",
            "",
            "![examples](examples.png)",
            "",
        ]
        if result.get("by_kind"):
            lines += [
                "## By manipulation kind",
                "",
                "Images whose regions are all of one kind (from the builder's manifest.csv), at "
                "the calibrated thresholds; for untouched images, 'flagged' is the false-alarm "
                "rate.",
                "",
                markdown_table(
                    [
                        "kind",
                        "images",
                        "regions",
                        "flagged",
                        "median presence score",
                        "box recall @ IoU 0.5",
                        "boxes predicted",
                    ],
                    [
                        [
                            r["kind"],
                            r["images"],
                            r["regions"],
                            r["flagged"],
                            r["median_presence_score"],
                            r["box_recall@0.5"],
                            r["boxes_predicted"],
                        ]
                        for r in result["by_kind"]
                    ],
                ),
                "",
            ]
    if result.get("robustness"):
        keys = list(next(iter(result["robustness"].values())))
        lines += [
            "## Robustness (corruption applied to the model-size image, same calibration)",
            "",
            markdown_table(
                ["condition", *keys],
                [[name, *(row[k] for k in keys)] for name, row in result["robustness"].items()],
            ),
            "",
        ]
    path = out / "report.md"
    path.write_text("\n".join(lines))
    return path


# ----------------------------------------------------------------------------------------------
# the whole evaluation


def open_dataset(artifact: Artifact, data: str | Path, split: str, split_mode: str | None = None):
    """The split of ``data`` that the artifact was trained against (same split mode and seed)."""
    cfg = artifact.training.get("config", {})
    seed = int(cfg.get("seed", 42))
    if artifact.task == "synthesis8":
        from medfakedet.data.medfake import MedFakeDataset

        mode = split_mode or cfg.get("split_mode", "paper")
        root = resolve_data_root(data, "medfake")
        return MedFakeDataset(root, split, artifact.preprocess, split_mode=mode, seed=seed), mode
    from medfakedet.data.inpaint import MedFakeInpaintDataset

    mode = split_mode or cfg.get("split_mode", "json")
    root = resolve_data_root(data, "medfakeinpaint")
    return MedFakeInpaintDataset(root, split, artifact.preprocess, split_mode=mode, seed=seed), mode


def evaluate_artifact(
    artifact_dir: str | Path,
    data: str | Path,
    out: str | Path,
    split: str = "test",
    split_mode: str | None = None,
    robustness: bool = True,
    device: str = "auto",
    batch_size: int = 64,
    show_progress: bool = True,
) -> dict[str, Any]:
    """Evaluate, write ``metrics.json``, ``report.md`` and the plots into ``out``; return all."""
    start = time.monotonic()
    dev = select_device(device)
    artifact = load_artifact(artifact_dir, dev)
    dataset, mode = open_dataset(artifact, data, split, split_mode)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    cal = artifact.calibration
    result: dict[str, Any] = {
        "task": artifact.task,
        "artifact": str(artifact_dir),
        "arch": artifact.arch,
        "version": artifact.version,
        "data": str(data),
        "split": split,
        "split_mode": mode,
        "calibration": cal,
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    conditions = [None, *CORRUPTIONS] if robustness else [None]
    rob: dict[str, dict] = {}
    if artifact.task == "synthesis8":
        for corruption in conditions:
            p = predict_synthesis8(
                artifact.model,
                dataset,
                dev,
                batch_size,
                corruption,
                artifact.preprocess,
                show_progress,
            )
            metrics = compute_synthesis8_metrics(p["logits"], p["labels"], cal["temperature"])
            rob[corruption or "clean"] = headline(artifact.task, metrics)
            if corruption is None:
                clean, clean_pred = metrics, p
        result["metrics"] = clean
        is_fake = np.isin(clean_pred["labels"], FAKE_CLASS_INDICES)
        p_fake = fake_probability(softmax(clean_pred["logits"], cal["temperature"]))
        plot_confusion_matrix(clean["confusion_matrix"], CLASS_NAMES, out / "confusion_matrix.png")
        plot_roc(
            is_fake,
            p_fake,
            "real vs fake (P(fake) = sum of fake classes)",
            out / "roc_real_vs_fake.png",
        )
        plot_reliability(
            clean_pred["logits"], clean_pred["labels"], cal["temperature"], out / "reliability.png"
        )
    else:
        pt, bt, ma = cal["presence_threshold"], cal["box_threshold"], int(cal["min_area"])
        for corruption in conditions:
            p = predict_localizer(
                artifact.model, dataset, dev, batch_size, corruption, show_progress=show_progress
            )
            metrics = compute_localizer_metrics(p, pt, bt, ma)
            rob[corruption or "clean"] = headline(artifact.task, metrics)
            if corruption is None:
                clean, clean_pred = metrics, p
        result["metrics"] = clean
        result["sweep"] = localizer_sweep(clean_pred, ma)
        kinds = read_manipulation_kinds(dataset.root)
        if kinds:
            result["by_kind"] = localizer_by_kind(clean_pred, kinds, pt, bt, ma)
        plot_sweep(
            result["sweep"], {"presence thr": pt, "box thr": bt}, out / "threshold_sweep.png"
        )
        plot_localizer_examples(dataset, clean_pred, bt, ma, out / "examples.png", min_peak=pt)
    if robustness:
        result["robustness"] = rob
    result["machine"] = machine_info(dev)
    result["training"] = {
        k: artifact.training.get(k)
        for k in ("train_seconds", "epochs_run", "best_epoch", "stopped_early", "machine", "config")
        if k in artifact.training
    }
    result["eval_seconds"] = time.monotonic() - start
    write_json(out / "metrics.json", result)
    write_report(result, out)
    return result


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="Evaluate a medfakedet artifact on a dataset split.")
    p.add_argument("--artifact", required=True, help="artifact folder (artifact.json + weights)")
    p.add_argument("--data", required=True, help="dataset folder (or the builder's output)")
    p.add_argument("--split", default="test", choices=("train", "val", "test", "all"))
    p.add_argument("--split-mode", help="default: the one the artifact was trained with")
    p.add_argument("--out", help="report folder (default ARTIFACT/eval-SPLIT)")
    p.add_argument("--no-robustness", action="store_true", help="skip the corruption table")
    p.add_argument("--device", default="auto")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--quiet", action="store_true")
    args = p.parse_args(argv)
    setup_threads()
    out = Path(args.out) if args.out else Path(args.artifact) / f"eval-{args.split}"
    result = evaluate_artifact(
        args.artifact,
        args.data,
        out,
        args.split,
        args.split_mode,
        not args.no_robustness,
        args.device,
        args.batch_size,
        not args.quiet,
    )
    print(f"wrote {out / 'metrics.json'} and {out / 'report.md'}", file=sys.stderr)
    for name, row in result.get(
        "robustness", {"clean": headline(result["task"], result["metrics"])}
    ).items():
        print(f"{name:>24}: " + ", ".join(f"{k} {_fmt(v)}" for k, v in row.items()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
