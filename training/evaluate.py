"""Evaluate an artifact on a dataset split: ``metrics.json``, ``report.md`` and PNG plots.

``python -m training.evaluate --artifact artifacts/synthesis8 --data data/embedded --split test
--out docs/reports/synthesis8``

This module only orchestrates; each job has its own module: :mod:`training.inference` runs
the model over the split (optionally corrupted by :mod:`training.corruptions`),
:mod:`training.task_metrics` turns predictions into metrics, :mod:`training.calibration`
holds the threshold sweep, :mod:`training.plots` and :mod:`training.report` write the files.

Calibration (temperature; presence and box thresholds) always comes from the artifact, i.e.
from the validation split; test data never tunes anything.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import torch

from medfakedet.artifacts import Artifact, load_artifact
from medfakedet.data.inpaint import read_manipulation_kinds
from medfakedet.data.paths import resolve_data_root
from medfakedet.labels import CLASS_NAMES, FAKE_CLASS_INDICES, fake_probability
from medfakedet.metrics import softmax
from medfakedet.runtime import machine_info, select_device, setup_threads
from training.calibration import threshold_sweep
from training.common import write_json
from training.corruptions import CORRUPTIONS
from training.inference import LocalizerPredictions
from training.plots import (
    plot_confusion_matrix,
    plot_localizer_examples,
    plot_reliability,
    plot_roc,
    plot_sweep,
)
from training.report import format_value, write_report
from training.task_metrics import (
    compute_localizer_metrics,
    compute_synthesis8_metrics,
    headline,
    localizer_by_kind,
)
from training.verdicts import (
    artifact_grey_zone,
    localizer_answer_metrics,
    predict_localizer_with_checks,
    predict_with_checks,
    verdict_metrics,
)


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


def _over_conditions(
    task: str,
    conditions: Sequence[str | None],
    predict: Callable[[str | None], Any],
    compute: Callable[[Any], dict[str, Any]],
) -> tuple[dict[str, Any], Any, dict[str, dict]]:
    """Predict and score each condition (None: clean); ``(clean metrics, clean predictions,
    headline per condition)``."""
    rob: dict[str, dict] = {}
    for corruption in conditions:
        pred = predict(corruption)
        metrics = compute(pred)
        rob[corruption or "clean"] = headline(task, metrics)
        if corruption is None:
            clean, clean_pred = metrics, pred
    return clean, clean_pred, rob


@dataclass
class _Run:
    """One evaluation: the artifact, the split, where it runs and where files go."""

    artifact: Artifact
    dataset: Any
    device: torch.device
    batch_size: int
    show_progress: bool
    out: Path


def _evaluate_synthesis8(
    run: _Run, conditions: Sequence[str | None], result: dict[str, Any]
) -> dict[str, dict]:
    """Metrics into ``result``, plots into ``run.out``; returns the robustness headlines."""
    artifact, out = run.artifact, run.out
    temperature = artifact.calibration["temperature"]
    zone = artifact_grey_zone(artifact.calibration)
    answered: dict[str, dict] = {}  # the served verdicts' shares, per condition

    def predict(corruption: str | None) -> dict[str, np.ndarray]:
        p = predict_with_checks(
            artifact, run.dataset, run.device, run.batch_size, corruption, run.show_progress
        )
        answered[corruption or "clean"] = verdict_metrics(
            p["logits"], p["labels"], p["inside"], p["score"], temperature, zone
        )
        return p

    clean, pred, rob = _over_conditions(
        artifact.task,
        conditions,
        predict,
        lambda p: compute_synthesis8_metrics(p["logits"], p["labels"], temperature),
    )
    result["metrics"] = clean
    result["verdicts"] = answered
    is_fake = np.isin(pred["labels"], FAKE_CLASS_INDICES)
    p_fake = fake_probability(softmax(pred["logits"], temperature))
    plot_confusion_matrix(clean["confusion_matrix"], CLASS_NAMES, out / "confusion_matrix.png")
    title = "real vs fake (P(fake) = sum of fake classes)"
    plot_roc(is_fake, p_fake, title, out / "roc_real_vs_fake.png")
    plot_reliability(pred["logits"], pred["labels"], temperature, out / "reliability.png")
    return rob


def _evaluate_localizer(
    run: _Run, conditions: Sequence[str | None], result: dict[str, Any]
) -> dict[str, dict]:
    """Metrics, sweep and per-kind table into ``result``, plots into ``run.out``."""
    artifact, dataset, out = run.artifact, run.dataset, run.out
    cal = artifact.calibration
    pt, bt, ma = cal["presence_threshold"], cal["box_threshold"], int(cal["min_area"])
    rs = cal.get("region_scorer")  # regions scored by a fit on val (None: by their peak)
    kinds = read_manipulation_kinds(dataset.root)
    answered: dict[str, dict] = {}  # the served verdicts' shares, per condition

    def predict(corruption: str | None) -> LocalizerPredictions:
        p, inside = predict_localizer_with_checks(
            artifact, dataset, run.device, run.batch_size, corruption, run.show_progress
        )
        answered[corruption or "clean"] = localizer_answer_metrics(p, inside, kinds, pt, bt, ma, rs)
        return p

    clean, pred, rob = _over_conditions(
        artifact.task, conditions, predict, lambda p: compute_localizer_metrics(p, pt, bt, ma, rs)
    )
    result["metrics"] = clean
    result["verdicts"] = answered
    result["sweep"] = threshold_sweep(list(pred.density), pred.gt_boxes, pred.present, min_area=ma)
    if kinds:
        result["by_kind"] = localizer_by_kind(pred, kinds, pt, bt, ma, rs)
    plot_sweep(result["sweep"], {"presence thr": pt, "box thr": bt}, out / "threshold_sweep.png")
    plot_localizer_examples(
        dataset, pred, bt, ma, out / "examples.png", presence_threshold=pt, region_scorer=rs
    )
    return rob


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
    corruptions: Sequence[str] | None = None,
) -> dict[str, Any]:
    """Evaluate, write ``metrics.json``, ``report.md`` and the plots into ``out``; return all.

    ``corruptions``: the robustness conditions besides clean (None: every one of
    :data:`training.corruptions.CORRUPTIONS`)."""
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
    unknown = sorted(set(corruptions or ()) - set(CORRUPTIONS))
    if unknown:
        raise ValueError(f"unknown corruptions {unknown}; known: {', '.join(CORRUPTIONS)}")
    chosen = list(CORRUPTIONS) if corruptions is None else list(corruptions)
    conditions = [None, *chosen] if robustness else [None]
    evaluate_task = _evaluate_synthesis8 if artifact.task == "synthesis8" else _evaluate_localizer
    run = _Run(artifact, dataset, dev, batch_size, show_progress, out)
    rob = evaluate_task(run, conditions, result)
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
        print(f"{name:>24}: " + ", ".join(f"{k} {format_value(v)}" for k, v in row.items()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
