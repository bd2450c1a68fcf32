"""Train the 8-class synthesis detector (ResNet18) and write a calibrated medfakedet artifact.

``python -m training.train_synthesis8 --data data/embedded --out artifacts/synthesis8
[--config training/configs/synthesis8.yaml | embedded] [--epochs 3 --set lr=3e-4 ...]``

Paper recipe (defaults): 128 px RGB normalised with mean = std = 0.5, h-flip + 10 deg rotation,
Adam 1e-4, batch 32, 15 epochs, keep the best validation accuracy (ties: lower val loss). The
temperature is then fitted on the validation logits and stored in the artifact.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

from medfakedet.artifacts import save_artifact
from medfakedet.labels import CLASS_NAMES
from medfakedet.metrics import fit_temperature
from medfakedet.models import build_classifier
from medfakedet.preprocess import PreprocessConfig
from training.common import (
    CONFIG_DIR,
    LR_SCHEDULES,
    LrScheduler,
    Precision,
    build_arg_parser,
    config_to_dict,
    epoch_generator,
    fit,
    fixed_subset,
    machine_info,
    prepare_run,
    recalibrate_batchnorm,
    resolve_config,
    write_json,
)
from training.evaluate import compute_synthesis8_metrics, predict_synthesis8

TASK = "synthesis8"


@dataclass(frozen=True)
class Synthesis8Config:
    """Everything that decides a synthesis8 training run (saved with the artifact)."""

    arch: str = "resnet18"
    size: int = 128
    epochs: int = 15
    epoch_repeats: int = 1  # passes over the train split per epoch (fewer validations)
    batch_size: int = 32
    lr: float = 1e-4
    lr_schedule: str = "constant"  # "constant" (paper) or "onecycle" (warm-up + cosine)
    weight_decay: float = 0.0
    augment: bool = True  # h-flip + rotation 10 deg (medfakedet.preprocess.train_transform)
    split_mode: str = "paper"  # "paper" (stratified random 70/15/15) or "group"
    seed: int = 42
    max_minutes: float | None = None
    max_train_per_class: int | None = None  # cap train images per class (quick runs)
    eval_batch_size: int = 128
    bn_recalibration_images: int = 256  # re-estimate BN stats before each validation (0: off)
    device: str = "auto"
    amp: bool = True  # mixed precision on CUDA only
    num_threads: int | None = None  # None: all cores
    num_workers: int = 0
    version: str = "1.0"

    def validate(self) -> None:
        problems = []
        if self.epochs < 0:
            problems.append(f"epochs must be >= 0, got {self.epochs}")
        if self.epoch_repeats < 1:
            problems.append(f"epoch_repeats must be >= 1, got {self.epoch_repeats}")
        if self.batch_size < 1 or self.eval_batch_size < 1:
            problems.append("batch sizes must be >= 1")
        if self.lr_schedule not in LR_SCHEDULES:
            problems.append(f"lr_schedule must be one of {LR_SCHEDULES}, got {self.lr_schedule!r}")
        if not self.lr > 0:
            problems.append(f"lr must be > 0, got {self.lr}")
        if self.split_mode not in ("paper", "group"):
            problems.append(f"split_mode must be 'paper' or 'group', got {self.split_mode!r}")
        if not 32 <= self.size <= 1024:
            problems.append(f"size must be within 32..1024, got {self.size}")
        if self.max_minutes is not None and self.max_minutes <= 0:
            problems.append(f"max_minutes must be > 0, got {self.max_minutes}")
        if problems:
            raise ValueError("invalid synthesis8 config: " + "; ".join(problems))

    def preprocess(self) -> PreprocessConfig:
        return PreprocessConfig(size=self.size, channels=3, mean=(0.5,) * 3, std=(0.5,) * 3)


def _cap_per_class(dataset: Any, cap: int | None, seed: int) -> list[int]:
    """Indices of at most ``cap`` images per class (a seeded choice), in dataset order."""
    if cap is None:
        return list(range(len(dataset)))
    rng = np.random.default_rng(seed)
    targets = np.asarray(dataset.targets)
    keep = []
    for label in np.unique(targets):
        idx = np.flatnonzero(targets == label)
        keep.extend(rng.permutation(idx)[:cap].tolist())
    return sorted(keep)


def train(
    cfg: Synthesis8Config,
    data: str | Path,
    out: str | Path,
    resume: bool = False,
    show_progress: bool = True,
) -> Path:
    """Train, calibrate and save; returns the artifact folder."""
    from medfakedet.data.medfake import MedFakeDataset

    wall_start = time.monotonic()
    run = prepare_run(cfg, data, out, "medfake", MedFakeDataset)
    device, out, root = run.device, run.out, run.root
    pre = cfg.preprocess()
    train_ds, val_ds = run.train, run.val
    train_idx = _cap_per_class(train_ds, cfg.max_train_per_class, cfg.seed)
    subset = torch.utils.data.Subset(train_ds, train_idx * cfg.epoch_repeats)
    # Clean (non-augmented) training images for BatchNorm statistics.
    bn_ds = torch.utils.data.Subset(
        run.clean_train,
        [train_idx[i] for i in fixed_subset(len(train_idx), cfg.bn_recalibration_images, cfg.seed)],
    )

    model = build_classifier(len(CLASS_NAMES), cfg.arch).to(device)
    # NHWC: tensor cores on GPU; on this 2-core CPU too, training runs 15-25% faster with it.
    model = model.to(memory_format=torch.channels_last)
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    steps_per_epoch = -(-len(subset) // cfg.batch_size)
    scheduler = LrScheduler(optimizer, cfg.lr_schedule, cfg.lr, steps_per_epoch, cfg.epochs)
    precision = Precision(device, cfg.amp)
    config = {"task": TASK, **config_to_dict(cfg)}

    def batches(epoch: int):
        train_ds.set_epoch(epoch)
        scheduler.start_epoch(epoch)
        return iter(
            DataLoader(
                subset,
                batch_size=cfg.batch_size,
                shuffle=True,
                generator=epoch_generator(cfg.seed, epoch),
                num_workers=cfg.num_workers,
                pin_memory=device.type == "cuda",
            )
        )

    def train_step(batch) -> dict[str, float]:
        x, y = batch
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        x = x.contiguous(memory_format=torch.channels_last)
        with precision.autocast():
            logits = model(x)
            loss = F.cross_entropy(logits.float(), y)
        scheduler.step()
        precision.step(loss, optimizer)
        acc = (logits.argmax(1) == y).float().mean().item()
        return {"loss": loss.item(), "acc": acc, "n": len(y)}

    def validate() -> dict[str, float]:
        if len(bn_ds):
            loader = DataLoader(bn_ds, batch_size=cfg.batch_size, num_workers=cfg.num_workers)
            recalibrate_batchnorm(model, (x for x, _ in loader), device)
        p = predict_synthesis8(model, val_ds, device, cfg.eval_batch_size)
        m = compute_synthesis8_metrics(p["logits"], p["labels"])
        loss = float(F.cross_entropy(torch.from_numpy(p["logits"]), torch.from_numpy(p["labels"])))
        return {"acc": m["accuracy"], "macro_f1": m["macro_f1"], "loss": loss}

    result = fit(
        model=model,
        optimizer=optimizer,
        precision=precision,
        epochs=cfg.epochs,
        batches=batches,
        n_batches=lambda _e: steps_per_epoch,
        train_step=train_step,
        validate=validate,
        score=lambda v: (v["acc"], -v["loss"]),
        out=out,
        config=config,
        resume=resume,
        max_minutes=cfg.max_minutes,
        show_progress=show_progress,
    )

    # Calibrate the best weights on validation: temperature scaling.
    model.load_state_dict(result.best_weights)
    p = predict_synthesis8(model, val_ds, device, cfg.eval_batch_size)
    temperature = fit_temperature(p["logits"], p["labels"])
    val = compute_synthesis8_metrics(p["logits"], p["labels"], temperature)
    val_summary = {
        "accuracy": val["accuracy"],
        "macro_f1": val["macro_f1"],
        "organ_accuracy": val["organ_accuracy"],
        "real_vs_fake_auc": val["real_vs_fake"]["roc_auc"],
        **{
            k: val["calibration"][k] for k in ("ece_before", "ece_after", "nll_before", "nll_after")
        },
        "n": val["n"],
    }
    training = {
        "config": config,
        "data": str(root),
        "split_sizes": {"train": len(train_idx), "val": len(val_ds)},
        "class_counts_train": {
            CLASS_NAMES[k]: int(v)
            for k, v in zip(
                *np.unique(np.asarray(train_ds.targets)[train_idx], return_counts=True), strict=True
            )
        },
        "history": result.state.history,
        "best_epoch": result.state.best_epoch,
        "epochs_run": result.state.epoch,
        "stopped_early": result.state.stopped_early,
        "train_seconds": round(result.train_seconds, 2),
        "total_seconds": round(time.monotonic() - wall_start, 2),
        "machine": machine_info(device),
    }
    model.to("cpu")
    save_artifact(
        out,
        model,
        task=TASK,
        arch=cfg.arch,
        preprocess=pre,
        class_names=list(CLASS_NAMES),
        calibration={"temperature": temperature},
        metrics={"val": val_summary},
        training=training,
        version=cfg.version,
    )
    write_json(out / "config.json", config)
    print(
        f"saved {out}: val accuracy {val['accuracy']:.4f}, macro-F1 {val['macro_f1']:.4f}, "
        f"T={temperature:.3f} (ECE {val_summary['ece_before']:.4f} -> "
        f"{val_summary['ece_after']:.4f}), {training['total_seconds']:.0f} s",
        file=sys.stderr,
    )
    return out


def parse_args(argv: Sequence[str] | None = None) -> tuple[argparse.Namespace, Synthesis8Config]:
    parser = build_arg_parser(__doc__.splitlines()[0], CONFIG_DIR / "synthesis8.yaml")
    args = parser.parse_args(argv)
    try:
        cfg = resolve_config(Synthesis8Config, args, "synthesis8")
    except (ValueError, FileNotFoundError) as e:
        parser.error(str(e))
    return args, cfg


def main(argv: Sequence[str] | None = None) -> int:
    args, cfg = parse_args(argv)
    train(cfg, args.data, args.out, resume=args.resume, show_progress=not args.quiet)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
