"""``make train`` in one command: build the embedded data if missing, train both models,
evaluate both, and write a summary with the machine and the time of every stage.

``python -m training.pipeline [--data data/embedded] [--artifacts artifacts]
[--reports docs/reports] [--config embedded] [--force]``

Existing artifacts are kept unless ``--force`` (so ``make serve`` trains only when no model
exists); the reports are always rewritten.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from medfakedet.artifacts import META_FILE
from medfakedet.runtime import machine_info, setup_threads
from training.common import write_json
from training.config import load_yaml_config, preset_path
from training.evaluate import evaluate_artifact
from training.report import markdown_table
from training.task_metrics import headline

TASK_DIRS = {"synthesis8": "synthesis8", "manipulation_density": "manipulation_density"}


def has_data(data: Path) -> bool:
    return (data / "medfake").is_dir() and (data / "medfakeinpaint" / "images").is_dir()


def run_pipeline(
    data: Path,
    artifacts: Path,
    reports: Path,
    config: str = "embedded",
    force: bool = False,
    show_progress: bool = True,
) -> dict[str, Any]:
    """Build (if needed), train (if needed or forced), evaluate; returns the summary."""
    from training.train_localizer import LocalizerConfig
    from training.train_localizer import train as train_localizer
    from training.train_synthesis8 import Synthesis8Config
    from training.train_synthesis8 import train as train_synthesis8

    setup_threads()
    stages: dict[str, float | None] = {}
    recorded: dict[str, float | None] = {}  # seconds taken by the earlier run, for reused stages
    start_all = time.monotonic()
    if not has_data(data):
        from medfakedet.data.builder import build_datasets

        start = time.monotonic()
        build_datasets(data, progress=show_progress)
        stages["build data"] = time.monotonic() - start
    else:  # reused: report the time of the build that made it
        stages["build data"] = None
        recorded["build data"] = recorded_seconds(data / "build.json", ("seconds",))
    trainers = {
        "synthesis8": (Synthesis8Config, train_synthesis8, "synthesis8"),
        "manipulation_density": (LocalizerConfig, train_localizer, "localizer"),
    }
    for task, (cls, train, prefix) in trainers.items():
        out = artifacts / TASK_DIRS[task]
        if force or not (out / META_FILE).is_file():
            cfg = load_yaml_config(cls, preset_path(config, prefix))
            start = time.monotonic()
            train(cfg, data, out, show_progress=show_progress)
            stages[f"train {task}"] = time.monotonic() - start
        else:
            stages[f"train {task}"] = None
            recorded[f"train {task}"] = recorded_seconds(
                out / META_FILE, ("training", "total_seconds")
            )
    results = {}
    for task in trainers:
        start = time.monotonic()
        results[task] = evaluate_artifact(
            artifacts / TASK_DIRS[task], data, reports / TASK_DIRS[task],
            show_progress=show_progress,
        )  # fmt: skip
        stages[f"evaluate {task}"] = time.monotonic() - start
    stages["total"] = time.monotonic() - start_all
    summary = {
        "data": str(data),
        "artifacts": str(artifacts),
        "config": config,
        "machine": machine_info(),
        "stages_seconds": stages,
        "reused_stages_recorded_seconds": recorded,
        "headline": {task: headline(task, r["metrics"]) for task, r in results.items()},
    }
    write_json(reports / "summary.json", summary)
    m = summary["machine"]
    lines = [
        "# MedFakeDet: metrics of the default `make train`",
        "",
        f"Data `{data}` (embedded synthetic set), `--config {config}` presets, test split.",
        f"Machine: {m['cpu']}, {m['cpu_cores']} cores, torch {m['torch']}, "
        f"Python {m['python']}, device {m['device']}.",
        "",
        "## Time taken",
        "",
        markdown_table(
            ["stage", "seconds"],
            [[k, stage_cell(v, recorded.get(k))] for k, v in stages.items()],
        ),
        "",
        "## Headline (test split)",
        "",
    ]
    for task, row in summary["headline"].items():
        lines += [
            f"### {task} ([full report]({TASK_DIRS[task]}/report.md))",
            "",
            markdown_table(list(row), [list(row.values())]),
            "",
        ]
    reports.mkdir(parents=True, exist_ok=True)
    (reports / "README.md").write_text("\n".join(lines))
    return summary


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", default="data/embedded")
    p.add_argument("--artifacts", default="artifacts")
    p.add_argument("--reports", default="docs/reports")
    p.add_argument("--config", default="embedded", help="preset name or YAML (both trainers)")
    p.add_argument("--force", action="store_true", help="retrain even if artifacts exist")
    p.add_argument("--quiet", action="store_true")
    args = p.parse_args(argv)
    summary = run_pipeline(
        Path(args.data), Path(args.artifacts), Path(args.reports), args.config, args.force,
        not args.quiet,
    )  # fmt: skip
    for stage, seconds in summary["stages_seconds"].items():
        print(f"{stage:>30}: {'reused' if seconds is None else f'{seconds:.1f} s'}")
    return 0


def recorded_seconds(path: Path, keys: tuple[str, ...]) -> float | None:
    """A duration stored by an earlier run (build.json, artifact.json), or None."""
    try:
        value = json.loads(path.read_text())
        for key in keys:
            value = value[key]
        return float(value)
    except (OSError, ValueError, KeyError, TypeError):
        return None


def stage_cell(seconds: float | None, recorded: float | None) -> str:
    if seconds is not None:
        return f"{seconds:.1f}"
    return "reused" if recorded is None else f"{recorded:.1f} (recorded when made, reused here)"


if __name__ == "__main__":
    raise SystemExit(main())
