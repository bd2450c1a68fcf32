"""Localizer ablation: the paper's UNetDensity vs segmentation-models-pytorch U-Nets.

``python -m training.ablation --data data/embedded --out artifacts/ablation [--config embedded]
[--archs unet_density smp_unet:resnet18 smp_unet:resnet34] [--epochs 3 --set ...]``

Every architecture is trained with the same config, split and seed, calibrated on val and
evaluated on test; ``OUT/ablation.md`` and ``OUT/ablation.json`` hold one table.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from medfakedet.artifacts import load_artifact
from medfakedet.runtime import machine_info
from training.common import write_json
from training.config import CONFIG_DIR, build_arg_parser, parse_config_args
from training.evaluate import evaluate_artifact
from training.report import markdown_table
from training.train_localizer import LocalizerConfig
from training.train_localizer import train as train_localizer

DEFAULT_ARCHS: tuple[str, ...] = ("unet_density", "smp_unet:resnet18", "smp_unet:resnet34")


def arch_dirname(arch: str) -> str:
    return arch.replace(":", "-")


def run_ablation(
    cfg: LocalizerConfig,
    data: str | Path,
    out: str | Path,
    archs: Sequence[str] = DEFAULT_ARCHS,
    split: str = "test",
    resume: bool = False,
    show_progress: bool = True,
) -> list[dict[str, Any]]:
    """Train and evaluate each architecture; write the table; return its rows."""
    out = Path(out)
    rows = []
    for arch in archs:
        arch_cfg = dataclasses.replace(cfg, arch=arch)
        arch_cfg.validate()
        art_dir = out / arch_dirname(arch)
        print(f"== {arch}", file=sys.stderr)
        start = time.monotonic()
        train_localizer(arch_cfg, data, art_dir, resume=resume, show_progress=show_progress)
        artifact = load_artifact(art_dir)
        params = sum(p.numel() for p in artifact.model.parameters())
        result = evaluate_artifact(
            art_dir, data, art_dir / f"eval-{split}", split=split, robustness=False,
            device=cfg.device, batch_size=cfg.eval_batch_size, show_progress=show_progress,
        )  # fmt: skip
        m = result["metrics"]
        rows.append(
            {
                "arch": arch,
                "params_m": params / 1e6,
                "train_seconds": artifact.training.get("train_seconds"),
                "epochs_run": artifact.training.get("epochs_run"),
                "presence_threshold": m["presence_threshold"],
                "box_threshold": m["box_threshold"],
                "presence_f1": m["presence"]["f1"],
                "presence_accuracy": m["presence"]["accuracy"],
                "box_f1@0.5": m["boxes"]["iou_0.5"]["f1"],
                "box_f1@0.28": m["boxes"]["iou_0.28"]["f1"],
                "mean_iou": m["boxes"]["iou_0.5"]["mean_iou"],
                "count_mae": m["count_mae"],
                "pixel_iou": m["pixel"]["iou"],
                "wall_seconds": time.monotonic() - start,
            }
        )
    summary = {
        "split": split,
        "config": dataclasses.asdict(cfg),
        "rows": rows,
        "machine": machine_info(),
    }
    write_json(out / "ablation.json", summary)
    keys = list(rows[0]) if rows else []
    text = [
        f"# Localizer ablation ({split} split)",
        "",
        f"Same config for every architecture (epochs {cfg.epochs}, crop {cfg.crop_size}, "
        f"lr {cfg.lr:g}, split mode {cfg.split_mode}, seed {cfg.seed}); thresholds "
        "calibrated on val. Machine: "
        f"{summary['machine']['cpu']} ({summary['machine']['cpu_cores']} cores), "
        f"torch {summary['machine']['torch']}.",
        "",
        markdown_table(keys, [[r[k] for k in keys] for r in rows]),
        "",
    ]
    (out / "ablation.md").write_text("\n".join(text))
    return rows


def main(argv: Sequence[str] | None = None) -> int:
    parser: argparse.ArgumentParser = build_arg_parser(
        __doc__.splitlines()[0], CONFIG_DIR / "localizer.yaml"
    )
    parser.add_argument("--archs", nargs="+", default=list(DEFAULT_ARCHS))
    parser.add_argument("--split", default="test", choices=("val", "test"))
    args, cfg = parse_config_args(parser, LocalizerConfig, "localizer", argv)
    rows = run_ablation(
        cfg, args.data, args.out, args.archs, args.split, args.resume, not args.quiet
    )
    for r in rows:
        print(
            f"{r['arch']:>20}: presence F1 {r['presence_f1']:.4f}, box F1@0.5 "
            f"{r['box_f1@0.5']:.4f}, pixel IoU {r['pixel_iou']:.4f}"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
