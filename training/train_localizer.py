"""Train the manipulation density localizer and write a calibrated medfakedet artifact.

``python -m training.train_localizer --data data/embedded --out artifacts/manipulation_density
[--config training/configs/localizer.yaml | embedded] [--set arch=smp_unet:resnet18 ...]``

Paper recipe (defaults): UNetDensity on 1-channel 128 px input in [0, 1]; loss = SmoothL1(density)
+ BCE(mask logits) + 0.05 * total variation(density); AdamW 1e-3 (wd 1e-4), batch 16, 100
epochs, random h/v flips; keep the lowest validation loss. ``crop_size`` trains on random square
crops (the network is fully convolutional, evaluation always sees the whole image), which cuts
CPU time about 4x at 64 px.

Calibration on the validation split, stored in the artifact: the presence threshold (max of the
RAW density map, best F1) and the box threshold (best box F1 at IoU 0.5); ``min_area`` is 20
pixels at 128 px, scaled with the area for other sizes.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

from medfakedet.artifacts import save_artifact
from medfakedet.density import presence_score
from medfakedet.metrics import choose_threshold
from medfakedet.models import LOCALIZER_ARCHS, build_localizer
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
from training.evaluate import (
    choose_box_threshold,
    compute_localizer_metrics,
    predict_localizer,
)

TASK = "manipulation_density"
SELECT_BY = ("loss", "box_f1")
#: Box thresholds tried at each validation when ``select_by="box_f1"`` (calibration at the end
#: uses the fine 0.01 grid).
_SELECTION_THRESHOLDS = np.round(np.arange(0.10, 0.91, 0.05), 2)


@dataclass(frozen=True)
class LocalizerConfig:
    """Everything that decides a localizer training run (saved with the artifact)."""

    arch: str = "unet_density"  # or smp_unet:resnet18, smp_unet:resnet34
    size: int = 128
    crop_size: int | None = None  # train on random crops of this side (None: whole image)
    crop_positive_fraction: float = 0.0  # share of crops centred near a manipulated pixel
    epochs: int = 100
    epoch_repeats: int = 1  # passes over the train split per epoch (fewer validations)
    batch_size: int = 16
    lr: float = 1e-3
    lr_schedule: str = "constant"  # "constant" (paper) or "onecycle" (warm-up + cosine)
    weight_decay: float = 1e-4
    density_weight: float = 1.0
    mask_weight: float = 1.0
    tv_weight: float = 0.05
    augment: bool = True  # joint random h/v flips
    split_mode: str = "json"  # "json" (split_fixed_density.json) or "group"
    seed: int = 42
    max_minutes: float | None = None
    max_train_images: int | None = None  # seeded subset of the train split (quick runs)
    min_area: int = 20  # at 128 px; scaled by (size / 128)^2
    # Which epoch's weights to keep: "loss" (lowest validation loss, the paper) or "box_f1"
    # (best validation box F1 at IoU 0.5 over a coarse threshold grid; ties: lower loss).
    select_by: str = "loss"
    eval_batch_size: int = 32
    bn_recalibration_images: int = 64  # whole images; re-estimate BN stats before validation
    device: str = "auto"
    amp: bool = True
    num_threads: int | None = None
    num_workers: int = 0
    version: str = "1.0"

    def validate(self) -> None:
        problems = []
        if self.arch not in LOCALIZER_ARCHS and not self.arch.startswith("smp_unet:"):
            problems.append(f"arch must be one of {', '.join(LOCALIZER_ARCHS)}, got {self.arch!r}")
        multiple = 4 if self.arch == "unet_density" else 32
        for name, side in (("size", self.size), ("crop_size", self.crop_size)):
            if side is not None and (side < multiple or side % multiple):
                problems.append(
                    f"{name} must be a multiple of {multiple} for {self.arch}, got {side}"
                )
        if self.crop_size is not None and self.crop_size > self.size:
            problems.append(f"crop_size {self.crop_size} exceeds size {self.size}")
        if self.epochs < 0 or self.batch_size < 1 or self.eval_batch_size < 1:
            problems.append("epochs must be >= 0 and batch sizes >= 1")
        if self.epoch_repeats < 1:
            problems.append(f"epoch_repeats must be >= 1, got {self.epoch_repeats}")
        if self.lr_schedule not in LR_SCHEDULES:
            problems.append(f"lr_schedule must be one of {LR_SCHEDULES}, got {self.lr_schedule!r}")
        if not self.lr > 0:
            problems.append(f"lr must be > 0, got {self.lr}")
        if self.select_by not in SELECT_BY:
            problems.append(f"select_by must be one of {SELECT_BY}, got {self.select_by!r}")
        if self.split_mode not in ("json", "group"):
            problems.append(f"split_mode must be 'json' or 'group', got {self.split_mode!r}")
        if self.max_minutes is not None and self.max_minutes <= 0:
            problems.append(f"max_minutes must be > 0, got {self.max_minutes}")
        if problems:
            raise ValueError("invalid localizer config: " + "; ".join(problems))

    def preprocess(self) -> PreprocessConfig:
        return PreprocessConfig(size=self.size, channels=1, mean=(0.0,), std=(1.0,))

    def scaled_min_area(self) -> int:
        return max(1, round(self.min_area * (self.size / 128.0) ** 2))


def total_variation(x: torch.Tensor) -> torch.Tensor:
    """Mean absolute difference between vertical and horizontal neighbours."""
    return (x[..., 1:, :] - x[..., :-1, :]).abs().mean() + (x[..., 1:] - x[..., :-1]).abs().mean()


def localizer_loss(
    density: torch.Tensor,
    mask_logits: torch.Tensor,
    target_density: torch.Tensor,
    target_mask: torch.Tensor,
    cfg: LocalizerConfig | None = None,
) -> torch.Tensor:
    """SmoothL1(density) + BCE(mask logits) + tv_weight * TV(density) (paper)."""
    cfg = cfg or LocalizerConfig()
    return (
        cfg.density_weight * F.smooth_l1_loss(density.float(), target_density)
        + cfg.mask_weight * F.binary_cross_entropy_with_logits(mask_logits.float(), target_mask)
        + cfg.tv_weight * total_variation(density.float())
    )


def random_crops(
    tensors: Sequence[torch.Tensor],
    crop: int,
    generator: torch.Generator,
    mask: torch.Tensor | None = None,
    positive_fraction: float = 0.0,
) -> list[torch.Tensor]:
    """The same random ``crop`` x ``crop`` window per sample across ``tensors`` (N, C, S, S).

    With ``mask`` (N, 1, S, S), a sample that has manipulated pixels gets, with probability
    ``positive_fraction``, a window around one of them (chosen at random), so that small
    regions are not mostly cropped away.
    """
    n, _, h, w = tensors[0].shape
    windows = []
    for i in range(n):
        y = int(torch.randint(0, h - crop + 1, (), generator=generator))
        x = int(torch.randint(0, w - crop + 1, (), generator=generator))
        focus = float(torch.rand((), generator=generator)) < positive_fraction
        if focus and mask is not None and bool(mask[i].any()):
            ys, xs = torch.nonzero(mask[i, 0] > 0.5, as_tuple=True)
            k = int(torch.randint(0, len(ys), (), generator=generator))
            py, px = int(ys[k]), int(xs[k])
            # Window offsets that keep (py, px) inside, drawn uniformly.
            y_lo, y_hi = max(0, py - crop + 1), min(py, h - crop)
            x_lo, x_hi = max(0, px - crop + 1), min(px, w - crop)
            y = y_lo + int(torch.randint(0, y_hi - y_lo + 1, (), generator=generator))
            x = x_lo + int(torch.randint(0, x_hi - x_lo + 1, (), generator=generator))
        windows.append((y, x))
    return [
        torch.stack([t[i, :, y : y + crop, x : x + crop] for i, (y, x) in enumerate(windows)])
        for t in tensors
    ]


def calibrate(
    pred, min_area: int, box_candidates: Sequence[float] | None = None
) -> tuple[dict[str, float], float]:
    """Presence threshold (best presence F1), then box threshold (best box F1 @ IoU 0.5, boxes
    kept only where their peak reaches the presence threshold, as served), both on val.

    Returns the calibration and the validation box F1 it reaches.
    """
    peaks = np.array([presence_score(d) for d in pred.density])
    if 0 < pred.present.sum() < len(pred.present):
        presence_threshold, _ = choose_threshold(peaks, pred.present)
    else:
        presence_threshold = 0.28  # one class only in val: nothing to fit, keep the paper's
    box_threshold, box_f1 = choose_box_threshold(
        pred.density, pred.gt_boxes, min_area, box_candidates, min_peak=float(presence_threshold)
    )
    calibration = {
        "presence_threshold": float(presence_threshold),
        "box_threshold": float(box_threshold),
        "min_area": int(min_area),
    }
    return calibration, box_f1


def train(
    cfg: LocalizerConfig,
    data: str | Path,
    out: str | Path,
    resume: bool = False,
    show_progress: bool = True,
) -> Path:
    """Train, calibrate and save; returns the artifact folder."""
    from medfakedet.data.inpaint import MedFakeInpaintDataset

    wall_start = time.monotonic()
    run = prepare_run(cfg, data, out, "medfakeinpaint", MedFakeInpaintDataset)
    device, out, root = run.device, run.out, run.root
    pre = cfg.preprocess()
    train_ds, val_ds = run.train, run.val
    train_idx = list(range(len(train_ds)))
    if cfg.max_train_images is not None and cfg.max_train_images < len(train_ds):
        rng = np.random.default_rng(cfg.seed)
        train_idx = sorted(rng.permutation(len(train_ds))[: cfg.max_train_images].tolist())
    subset = torch.utils.data.Subset(train_ds, train_idx * cfg.epoch_repeats)
    # Whole, clean training images for BatchNorm statistics (training may see crops only).
    bn_ds = torch.utils.data.Subset(
        run.clean_train,
        [train_idx[i] for i in fixed_subset(len(train_idx), cfg.bn_recalibration_images, cfg.seed)],
    )
    min_area = cfg.scaled_min_area()

    model = build_localizer(cfg.arch).to(device)
    # NHWC: tensor cores on GPU; on this 2-core CPU too, training runs 15-25% faster with it.
    model = model.to(memory_format=torch.channels_last)
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    steps_per_epoch = -(-len(subset) // cfg.batch_size)
    scheduler = LrScheduler(optimizer, cfg.lr_schedule, cfg.lr, steps_per_epoch, cfg.epochs)
    precision = Precision(device, cfg.amp)
    config = {"task": TASK, **config_to_dict(cfg)}
    crop_rng = [epoch_generator(cfg.seed, 0, stream=1)]  # replaced each epoch

    def batches(epoch: int):
        train_ds.set_epoch(epoch)
        scheduler.start_epoch(epoch)
        crop_rng[0] = epoch_generator(cfg.seed, epoch, stream=1)
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
        x, d, m = batch["image"], batch["density"], batch["mask"]
        if cfg.crop_size is not None and cfg.crop_size < cfg.size:
            x, d, m = random_crops(
                (x, d, m), cfg.crop_size, crop_rng[0], m, cfg.crop_positive_fraction
            )
        x, d, m = (t.to(device, non_blocking=True) for t in (x, d, m))
        x = x.contiguous(memory_format=torch.channels_last)
        with precision.autocast():
            density, mask_logits = model(x)
        loss = localizer_loss(density, mask_logits, d, m, cfg)
        scheduler.step()
        precision.step(loss, optimizer)
        return {"loss": loss.item(), "n": len(x)}

    def validate() -> dict[str, float]:
        if len(bn_ds):
            loader = DataLoader(bn_ds, batch_size=cfg.eval_batch_size, num_workers=cfg.num_workers)
            recalibrate_batchnorm(model, (b["image"] for b in loader), device)
        p = predict_localizer(
            model,
            val_ds,
            device,
            cfg.eval_batch_size,
            loss_fn=lambda *a: localizer_loss(*a, cfg),
        )
        # Progress numbers at the paper's default thresholds (calibration comes at the end).
        m = compute_localizer_metrics(p, 0.28, 0.28, min_area)
        row = {
            "loss": p.loss,
            "presence_f1@0.28": m["presence"]["f1"],
            "box_f1@0.28": m["boxes"]["iou_0.5"]["f1"],
        }
        if cfg.select_by == "box_f1":
            _, row["box_f1"] = calibrate(p, min_area, _SELECTION_THRESHOLDS)
        return row

    def score(v: dict[str, float]) -> tuple[float, ...]:
        return (v["box_f1"], -v["loss"]) if cfg.select_by == "box_f1" else (-v["loss"],)

    result = fit(
        model=model,
        optimizer=optimizer,
        precision=precision,
        epochs=cfg.epochs,
        batches=batches,
        n_batches=lambda _e: steps_per_epoch,
        train_step=train_step,
        validate=validate,
        score=score,
        out=out,
        config=config,
        resume=resume,
        max_minutes=cfg.max_minutes,
        show_progress=show_progress,
    )

    model.load_state_dict(result.best_weights)
    pred = predict_localizer(model, val_ds, device, cfg.eval_batch_size)
    calibration, _ = calibrate(pred, min_area)
    val = compute_localizer_metrics(pred, **calibration)
    val_summary = {
        "presence_f1": val["presence"]["f1"],
        "presence_accuracy": val["presence"]["accuracy"],
        "box_f1@0.5": val["boxes"]["iou_0.5"]["f1"],
        "box_f1@0.28": val["boxes"]["iou_0.28"]["f1"],
        "mean_iou@0.5": val["boxes"]["iou_0.5"]["mean_iou"],
        "count_mae": val["count_mae"],
        "pixel_iou": val["pixel"]["iou"],
        "n": val["n"],
    }
    training = {
        "config": config,
        "data": str(root),
        "split_sizes": {"train": len(train_idx), "val": len(val_ds)},
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
        calibration=calibration,
        metrics={"val": val_summary},
        training=training,
        version=cfg.version,
    )
    write_json(out / "config.json", config)
    print(
        f"saved {out}: val presence F1 {val_summary['presence_f1']:.4f} "
        f"(thr {calibration['presence_threshold']:.2f}), box F1@0.5 "
        f"{val_summary['box_f1@0.5']:.4f} (thr {calibration['box_threshold']:.2f}), "
        f"{training['total_seconds']:.0f} s",
        file=sys.stderr,
    )
    return out


def parse_args(argv: Sequence[str] | None = None) -> tuple[argparse.Namespace, LocalizerConfig]:
    parser = build_arg_parser(__doc__.splitlines()[0], CONFIG_DIR / "localizer.yaml")
    parser.add_argument("--arch", help="unet_density, smp_unet:resnet18, smp_unet:resnet34")
    args = parser.parse_args(argv)
    if args.arch:
        args.set = [f"arch={args.arch}", *args.set]
    try:
        cfg = resolve_config(LocalizerConfig, args, "localizer")
    except (ValueError, FileNotFoundError) as e:
        parser.error(str(e))
    return args, cfg


def main(argv: Sequence[str] | None = None) -> int:
    args, cfg = parse_args(argv)
    train(cfg, args.data, args.out, resume=args.resume, show_progress=not args.quiet)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
