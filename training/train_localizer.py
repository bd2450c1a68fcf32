"""Train the manipulation density localizer and write a calibrated medfakedet artifact.

``python -m training.train_localizer --data data/embedded --out artifacts/manipulation_density
[--config training/configs/localizer.yaml | embedded] [--set arch=smp_unet:resnet18 ...]``

Paper recipe (defaults): UNetDensity on 1-channel 128 px input in [0, 1]; loss = SmoothL1(density)
+ BCE(mask logits) + 0.05 * total variation(density); AdamW 1e-3 (wd 1e-4), batch 16, 100
epochs, random h/v flips; keep the lowest validation loss. ``crop_size`` trains on random square
crops (the network is fully convolutional, evaluation always sees the whole image), which cuts
CPU time about 4x at 64 px.

Calibration on the validation split, stored in the artifact: the presence threshold (max of the
RAW density map, best F1; or, with ``max_false_alarm``, the best box F1 among thresholds that
flag at most that share of the untouched val images) and the box threshold (best box F1 at IoU
0.5); ``min_area`` is 20 pixels at 128 px, scaled with the area for other sizes.
"""

from __future__ import annotations

import argparse
import contextlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from medfakedet.models import LOCALIZER_ARCHS, build_localizer
from medfakedet.preprocess import PreprocessConfig
from medfakedet.pretrained import init_problem
from training.augment import DegradationFields
from training.calibration import PAPER_THRESHOLD, calibrate_localizer, fit_ood
from training.common import epoch_generator
from training.config import CONFIG_DIR, build_arg_parser, parse_config_args
from training.inference import LocalizerPredictions, predict_localizer
from training.loop import LR_SCHEDULES, Precision
from training.task_metrics import compute_localizer_metrics
from training.trainer import TrainingTask, run_cli, train_task

TASK = "manipulation_density"
SELECT_BY = ("loss", "box_f1")
#: Box thresholds tried at each validation when ``select_by="box_f1"`` (calibration at the end
#: uses the fine 0.01 grid).
_SELECTION_THRESHOLDS = np.round(np.arange(0.10, 0.91, 0.05), 2)


@dataclass(frozen=True)
class LocalizerConfig(DegradationFields):
    """Everything that decides a localizer training run (saved with the artifact)."""

    arch: str = "unet_density"  # or smp_unet:resnet18, smp_unet:resnet34
    init: str = "scratch"  # initial weights: scratch, imagenet or a state-dict file
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
    # Manipulation kinds trained on (None: all): images with a region of another kind (from the
    # builder's manifest.csv) are left out of training; untouched images always stay in.
    train_kinds: list[str] | None = None
    min_area: int = 20  # at 128 px; scaled by (size / 128)^2
    # Presence calibration: None picks the best validation presence F1 (the paper); a share
    # picks the best box F1 among presence thresholds that flag at most that share of the
    # untouched validation images (the false-alarm limit).
    max_false_alarm: float | None = None
    # With max_false_alarm: score each region by a logistic fit on the validation regions
    # (medfakedet.density.RegionScorer: peak, mean, area, fill, mass, aspect) instead of its
    # peak, when that reaches a better validation box F1. Applied at the final calibration only
    # (the epoch is still picked by the peak rule).
    region_scorer: bool = False
    # Which epoch's weights to keep: "loss" (lowest validation loss, the paper) or "box_f1"
    # (best validation box F1 at IoU 0.5 over a coarse threshold grid; ties: lower loss).
    select_by: str = "loss"
    eval_batch_size: int = 32
    bn_recalibration_images: int = 64  # whole images; re-estimate BN stats before validation
    device: str = "auto"
    amp: bool = True
    # bf16 autocast of the training steps on a CPU with native bf16 (AVX512-BF16 / AMX): about
    # 2x faster there; ignored elsewhere (amp covers CUDA).
    cpu_bf16: bool = False
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
        if self.aug_zoom_p:
            problems.append("aug_zoom_p must be 0 for the localizer (its maps ignore the crop)")
        if self.max_false_alarm is not None and not 0 <= self.max_false_alarm < 1:
            problems.append(f"max_false_alarm must be in [0, 1), got {self.max_false_alarm}")
        if self.max_minutes is not None and self.max_minutes <= 0:
            problems.append(f"max_minutes must be > 0, got {self.max_minutes}")
        if (problem := init_problem(self.init, self.arch)) is not None:
            problems.append(problem)
        problems += self.degradation_problems()
        if problems:
            raise ValueError("invalid localizer config: " + "; ".join(problems))

    def preprocess(self) -> PreprocessConfig:
        return PreprocessConfig(size=self.size, channels=1, mean=(0.0,), std=(1.0,))

    def scaled_min_area(self) -> int:
        return max(1, round(self.min_area * (self.size / 128.0) ** 2))


def cpu_has_bf16() -> bool:
    """Whether this CPU computes bf16 natively (oneDNN's check); emulated bf16 is slower."""
    return bool(
        torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported()
    )


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


class LocalizerTask(TrainingTask):
    """The density localizer: density + mask + TV loss on (cropped) images; presence and box
    thresholds calibrated on val."""

    task = TASK
    layout = "medfakeinpaint"
    #: 128: the localizer's forward is the slower one, and the check runs at every start.
    check_set_count = 128

    def __init__(self, cfg: LocalizerConfig) -> None:
        super().__init__(cfg)
        self.min_area = cfg.scaled_min_area()
        self.crop_rng = epoch_generator(cfg.seed, 0, stream=1)  # replaced each epoch

    def dataset_class(self) -> type:
        from medfakedet.data.inpaint import MedFakeInpaintDataset

        return MedFakeInpaintDataset

    def train_indices(self, train: Any) -> list[int]:
        cfg = self.cfg
        keep = list(range(len(train)))
        if cfg.train_kinds is not None:
            from medfakedet.data.inpaint import read_manipulation_kinds

            kinds = read_manipulation_kinds(train.root)
            allowed = set(cfg.train_kinds)
            keep = [
                i
                for i in keep
                if set(filter(None, kinds.get(train.ids[i], "").split("+"))) <= allowed
            ]
        if cfg.max_train_images is None or cfg.max_train_images >= len(keep):
            return keep
        rng = np.random.default_rng(cfg.seed)
        return sorted(np.asarray(keep)[rng.permutation(len(keep))[: cfg.max_train_images]].tolist())

    def build_model(self) -> nn.Module:
        return build_localizer(self.cfg.arch)

    def build_optimizer(self, model: nn.Module) -> torch.optim.Optimizer:
        cfg = self.cfg
        return torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)

    def images(self, batch: Any) -> torch.Tensor:
        return batch["image"]

    @property
    def bn_batch_size(self) -> int:
        return self.cfg.eval_batch_size

    def start_epoch(self, epoch: int) -> None:
        self.crop_rng = epoch_generator(self.cfg.seed, epoch, stream=1)

    def step(
        self, model: nn.Module, batch: Any, precision: Precision
    ) -> tuple[torch.Tensor, dict[str, float]]:
        cfg = self.cfg
        x, d, m = batch["image"], batch["density"], batch["mask"]
        if cfg.crop_size is not None and cfg.crop_size < cfg.size:
            x, d, m = random_crops(
                (x, d, m), cfg.crop_size, self.crop_rng, m, cfg.crop_positive_fraction
            )
        x, d, m = (t.to(self.run.device, non_blocking=True) for t in (x, d, m))
        x = x.contiguous(memory_format=torch.channels_last)
        with self._autocast(precision):
            density, mask_logits = model(x)
        loss = localizer_loss(density, mask_logits, d, m, cfg)
        return loss, {"loss": loss.item(), "n": len(x)}

    def _autocast(self, precision: Precision) -> contextlib.AbstractContextManager:
        if self.cfg.cpu_bf16 and self.run.device.type == "cpu" and cpu_has_bf16():
            return torch.autocast("cpu", dtype=torch.bfloat16)
        return precision.autocast()

    def _val_predictions(self, model: nn.Module, with_loss: bool = False) -> LocalizerPredictions:
        cfg = self.cfg
        loss_fn = (lambda *a: localizer_loss(*a, cfg)) if with_loss else None
        return predict_localizer(
            model, self.run.val, self.run.device, cfg.eval_batch_size, loss_fn=loss_fn
        )

    def validate(self, model: nn.Module) -> dict[str, float]:
        p = self._val_predictions(model, with_loss=True)
        # Progress numbers at the paper's default thresholds (calibration comes at the end).
        m = compute_localizer_metrics(p, PAPER_THRESHOLD, PAPER_THRESHOLD, self.min_area)
        row = {
            "loss": p.loss,
            "presence_f1@0.28": m["presence"]["f1"],
            "box_f1@0.28": m["boxes"]["iou_0.5"]["f1"],
        }
        if self.cfg.select_by == "box_f1":
            _, row["box_f1"] = calibrate_localizer(
                p, self.min_area, _SELECTION_THRESHOLDS, self.cfg.max_false_alarm
            )
        return row

    def score(self, val: dict[str, float]) -> tuple[float, ...]:
        if self.cfg.select_by == "box_f1":
            return (val["box_f1"], -val["loss"])
        return (-val["loss"],)

    def calibrate(self, model: nn.Module) -> tuple[dict[str, Any], dict[str, Any]]:
        pred = self._val_predictions(model)
        calibration, _ = calibrate_localizer(
            pred,
            self.min_area,
            max_false_alarm=self.cfg.max_false_alarm,
            region_scorer=self.cfg.region_scorer,
        )
        val = compute_localizer_metrics(pred, **calibration)
        summary = {
            "false_alarm": val["presence"]["false_alarm"],
            "presence_f1": val["presence"]["f1"],
            "presence_accuracy": val["presence"]["accuracy"],
            "box_f1@0.5": val["boxes"]["iou_0.5"]["f1"],
            "box_f1@0.28": val["boxes"]["iou_0.28"]["f1"],
            "mean_iou@0.5": val["boxes"]["iou_0.5"]["mean_iou"],
            "count_mae": val["count_mae"],
            "pixel_iou": val["pixel"]["iou"],
            "n": val["n"],
        }
        # Abstention: enc1 / enc2 / bottleneck statistics of the training images, cut-off on val.
        self.ood = fit_ood(
            model, self.run.clean_train, self.train_indices(self.run.train), None, self.run.val,
            self.images, self.run.device, self.cfg.eval_batch_size,
        )  # fmt: skip
        summary["in_distribution_share"] = self.ood.coverage
        return calibration, summary

    def artifact_info(self) -> dict[str, Any]:
        return {"ood": self.ood}

    def summary(self, calibration: dict[str, Any], val: dict[str, Any]) -> str:
        return (
            f"val presence F1 {val['presence_f1']:.4f} "
            f"(thr {calibration['presence_threshold']:.2f}), box F1@0.5 "
            f"{val['box_f1@0.5']:.4f} (thr {calibration['box_threshold']:.2f}), false alarms "
            f"on untouched val images {val['false_alarm']}"
            + (", regions scored by a fit on val" if "region_scorer" in calibration else "")
        )


def train(
    cfg: LocalizerConfig,
    data: str | Path,
    out: str | Path,
    resume: bool = False,
    show_progress: bool = True,
) -> Path:
    """Train, calibrate and save; returns the artifact folder."""
    return train_task(LocalizerTask(cfg), data, out, resume, show_progress)


def parse_args(argv: Sequence[str] | None = None) -> tuple[argparse.Namespace, LocalizerConfig]:
    parser = build_arg_parser(__doc__.splitlines()[0], CONFIG_DIR / "localizer.yaml")
    parser.add_argument("--arch", help="unet_density, smp_unet:resnet18, smp_unet:resnet34")
    return parse_config_args(parser, LocalizerConfig, "localizer", argv)


def main(argv: Sequence[str] | None = None) -> int:
    return run_cli(parse_args, train, argv)


if __name__ == "__main__":
    raise SystemExit(main())
