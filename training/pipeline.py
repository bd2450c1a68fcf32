"""``make report`` / ``make train-real`` in one command: build the data if missing, train both
models, evaluate both, and write a summary with the machine and the time of every stage.

``python -m training.pipeline [--data data/embedded] [--artifacts artifacts]
[--reports docs/reports] [--config embedded] [--force] [--real-dir DIR] [--init INIT]
[--set KEY=VALUE ...]``

Existing artifacts are kept unless ``--force`` (so ``make serve`` trains only when no model
exists); the reports are always rewritten. With ``--real-dir`` the data is built around that
folder of real scans (``python -m medfakedet.data build --real-dir DIR``), and rebuilt when
``--data`` holds a build of another folder; without it, a real build in ``--data`` is used as it
is, around the folder its ``build.json`` names. ``--set KEY=VALUE`` overrides both trainers'
presets; ``--set synthesis8.KEY=VALUE`` / ``--set localizer.KEY=VALUE`` one of them.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import multiprocessing
import os
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from medfakedet.artifacts import META_FILE, read_meta
from medfakedet.labels import CLASS_NAMES, ORGANS
from medfakedet.runtime import machine_info, setup_threads
from training.common import write_json
from training.config import apply_overrides, load_yaml_config, parse_set, preset_path
from training.evaluate import evaluate_artifact
from training.external import external_check
from training.real_report import REENCODINGS, write_real_report
from training.report import markdown_table
from training.task_metrics import headline

TASK_DIRS = {"synthesis8": "synthesis8", "manipulation_density": "manipulation_density"}
#: The trainers' preset prefixes, also the scopes of ``--set PREFIX.KEY=VALUE``.
PRESET_PREFIXES = {"synthesis8": "synthesis8", "manipulation_density": "localizer"}


def has_data(data: Path) -> bool:
    return (data / "medfake").is_dir() and (data / "medfakeinpaint" / "images").is_dir()


def built_real_dir(data: Path) -> Path | None:
    """The real-scan folder ``data`` was built around (its ``build.json``), None for a phantom
    build, a dataset the builder did not write, or none at all."""
    try:
        built_from = json.loads((data / "build.json").read_text())["args"].get("real_dir")
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None
    return Path(built_from) if built_from else None


def needs_build(data: Path, real_dir: Path | None) -> bool:
    """True when ``data`` holds no dataset, a build of another real folder than ``real_dir``, or
    a real build split otherwise than REAL_INPAINT_FRACTIONS, at other sides than REAL_SIZE /
    REAL_INPAINT_SIZE (before session 22 MedFake was built at 128 px) or with other fakes than
    ``real_fake_options`` makes here (before session 26). Without ``real_dir`` any
    dataset there is used as it is: a real build is never replaced by phantoms because a command
    left out ``--real-dir`` (:func:`main` then reads the folder from ``build.json``), and a dataset
    not made by the builder is never replaced."""
    if not has_data(data):
        return True
    if real_dir is None:
        return False
    try:
        args = json.loads((data / "build.json").read_text())["args"]
        built_from, shares = args.get("real_dir"), args.get("inpaint_fractions")
        sides = (args.get("size"), args.get("inpaint_size", args.get("size")))
        fakes = (args.get("gan_steps"), args.get("detail_match", []))
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        raise ValueError(
            f"{data} holds a dataset that was not built from {real_dir}; give another --data"
        ) from None
    same = built_from is not None and Path(built_from).resolve() == real_dir.resolve()
    # A real build of before REAL_INPAINT_FRACTIONS (20 untouched test slices) is rebuilt.
    from medfakedet.data.builder import REAL_INPAINT_SIZE, REAL_SIZE, real_fake_options
    from medfakedet.data.inpaint import REAL_INPAINT_FRACTIONS

    old_split = shares is not None and not np.allclose(shares, REAL_INPAINT_FRACTIONS)
    wanted = real_fake_options()
    old_fakes = fakes != (wanted.gan_steps, list(wanted.detail_match))
    return not same or old_split or sides != (REAL_SIZE, REAL_INPAINT_SIZE) or old_fakes


def trainer_configs(config: str, overrides: Sequence[str] = ()) -> dict[str, Any]:
    """Each task's trainer config: the ``config`` preset with the ``--set`` items applied."""
    from training.train_localizer import LocalizerConfig
    from training.train_synthesis8 import Synthesis8Config

    classes = {"synthesis8": Synthesis8Config, "manipulation_density": LocalizerConfig}
    configs = {}
    for task, cls in classes.items():
        prefix = PRESET_PREFIXES[task]
        cfg = load_yaml_config(cls, preset_path(config, prefix))
        configs[task] = apply_overrides(cfg, task_overrides(overrides, prefix), "--set")
    return configs


def task_overrides(items: Sequence[str], prefix: str) -> dict[str, str]:
    """The ``--set`` items for the trainer of ``prefix``: unscoped ones and ``prefix.KEY``."""
    out = {}
    for key, value in parse_set(items).items():
        scope, dot, name = key.partition(".")
        if not dot:
            out[key] = value
        elif scope not in PRESET_PREFIXES.values():
            raise ValueError(
                f"--set {key}: scope {scope!r} is none of {', '.join(PRESET_PREFIXES.values())}"
            )
        elif scope == prefix:
            out[name] = value
    return out


@dataclasses.dataclass(frozen=True)
class Job:
    """One stage to run: ``fn(*args, **kwargs)`` (module-level, so a process pool can take it)."""

    fn: Callable[..., Any]
    args: tuple = ()
    kwargs: dict[str, Any] = dataclasses.field(default_factory=dict)


def _timed(job: Job, threads: int | None) -> tuple[Any, float]:
    if threads is not None:
        setup_threads(threads)
    start = time.monotonic()
    return job.fn(*job.args, **job.kwargs), time.monotonic() - start


def run_jobs(named: Mapping[str, Job], jobs: int, threads: int) -> dict[str, tuple[Any, float]]:
    """``{name: (result, seconds)}`` of every job, in order; ``jobs > 1``: that many at once in
    fresh processes (``threads`` torch threads each): on a machine shared with others, two
    1-thread processes get more CPU than one process and finish sooner than one after the
    other."""
    if jobs <= 1 or len(named) <= 1:
        return {name: _timed(job, None) for name, job in named.items()}
    context = multiprocessing.get_context("spawn")  # no forked torch thread pools
    with ProcessPoolExecutor(min(jobs, len(named)), mp_context=context) as pool:
        futures = {name: pool.submit(_timed, job, threads) for name, job in named.items()}
        return {name: future.result() for name, future in futures.items()}


#: The re-encodings each model is evaluated under on real scans (issue #10: synthesis8 under
#: each of them; the localizer's false alarms clean and at JPEG q75), besides clean.
REAL_CONDITIONS = {"synthesis8": REENCODINGS, "manipulation_density": ("jpeg_q75",)}
#: The stage name of the phantom-trained default's check on the real scans, and the share of
#: them it sees (every third file of each organ, as tests/test_ood.py does).
DEFAULT = "check phantom-trained default on the real scans"
DEFAULT_EVERY = 3


def external_jobs(
    artifacts: Path,
    external: Mapping[str, Path],
    default_artifact: Path | None,
    real_dir: Path | None,
) -> dict[str, Job]:
    """The external checks (:mod:`training.external`): synthesis8 on ``external["real-val"]``
    (real scans from other sources) and ``external["fake-val"]`` (generators' outputs), the
    localizer on the real-val brains; and ``default_artifact`` on ``real_dir``, when both are
    there. Folders that do not exist are skipped (they are optional)."""
    checks = {}
    truths = {"real-val": "real", "fake-val": "fake"}
    for name, folder in external.items():
        if name not in truths:
            raise ValueError(f"unknown external set {name!r}; expected {', '.join(truths)}")
        if not folder.is_dir():
            continue
        checks[f"check synthesis8 {name}"] = Job(
            external_check, (artifacts / TASK_DIRS["synthesis8"], folder, truths[name])
        )
        if truths[name] == "real" and (folder / "brain").is_dir():
            checks[f"check localizer {name}"] = Job(
                external_check, (artifacts / TASK_DIRS["manipulation_density"], folder, "real")
            )
    if default_artifact and real_dir and (default_artifact / META_FILE).is_file():
        checks[DEFAULT] = Job(
            external_check, (default_artifact, real_dir, "real"), {"every": DEFAULT_EVERY}
        )
    return checks


def synthesis8_operating_point(artifacts: Path) -> dict[str, float]:
    """synthesis8's grey zone and temperature, and how far the zone's upper bound moved when
    its val images were resampled (artifacts calibrated before that was measured lack it)."""
    meta = read_meta(artifacts / TASK_DIRS["synthesis8"])
    val = meta.get("metrics", {}).get("val", {})
    point = {k: meta["calibration"][k] for k in ("grey_low", "grey_high", "temperature")}
    point.update({k: val[k] for k in ("val_grey_high_p05", "val_grey_high_p95") if k in val})
    return point


def run_pipeline(
    data: Path,
    artifacts: Path,
    reports: Path,
    config: str = "embedded",
    force: bool = False,
    show_progress: bool = True,
    real_dir: Path | None = None,
    overrides: Sequence[str] = (),
    jobs: int = 1,
    external: Mapping[str, Path] | None = None,
    default_artifact: Path | None = None,
    report_md: Path | None = None,
) -> dict[str, Any]:
    """Build (if needed), train (if needed or forced), evaluate; returns the summary.

    ``real_dir``: build the data around this folder of real scans; ``overrides``: ``--set``
    items for the trainers (see :func:`task_overrides`); ``jobs``: train (and evaluate) both
    models in that many processes at once, the cores shared out; ``external``: folders to
    check the models on (:func:`external_jobs`), ``default_artifact``: a phantom-trained
    synthesis8 to measure on ``real_dir``; ``report_md``: where the real-scans report goes
    (:mod:`training.real_report`)."""
    from training.train_localizer import train as train_localizer
    from training.train_synthesis8 import train as train_synthesis8

    configs = trainer_configs(config, overrides)  # a bad --set fails before the build
    setup_threads()
    stages: dict[str, float | None] = {}
    recorded: dict[str, float | None] = {}  # seconds taken by the earlier run, for reused stages
    start_all = time.monotonic()
    if needs_build(data, real_dir):
        from medfakedet.data.builder import (
            REAL_INPAINT_SIZE,
            REAL_SIZE,
            build_datasets,
            real_fake_options,
        )
        from medfakedet.data.inpaint import INPAINT_FRACTIONS, REAL_INPAINT_FRACTIONS

        start = time.monotonic()
        shares = INPAINT_FRACTIONS if real_dir is None else REAL_INPAINT_FRACTIONS
        recipe = (
            {}
            if real_dir is None
            else {
                "size": REAL_SIZE,
                "inpaint_size": REAL_INPAINT_SIZE,
                "fake_options": real_fake_options(),
            }
        )
        build_datasets(
            data, real_dir=real_dir, inpaint_fractions=shares, progress=show_progress, **recipe
        )
        stages["build data"] = time.monotonic() - start
    else:  # reused: report the time of the build that made it
        stages["build data"] = None
        recorded["build data"] = recorded_seconds(data / "build.json", ("seconds",))
    trainers = {"synthesis8": train_synthesis8, "manipulation_density": train_localizer}
    threads = max(1, (os.cpu_count() or 1) // jobs)  # per job: the cores shared out
    training = {}
    for task, train in trainers.items():
        out = artifacts / TASK_DIRS[task]
        if force or not (out / META_FILE).is_file():
            cfg = configs[task]
            if jobs > 1 and cfg.num_threads is None:
                cfg = dataclasses.replace(cfg, num_threads=threads)
            training[f"train {task}"] = Job(
                train, (cfg, data, out), {"show_progress": show_progress}
            )
        else:
            stages[f"train {task}"] = None
            recorded[f"train {task}"] = recorded_seconds(
                out / META_FILE, ("training", "total_seconds")
            )
    stages.update({k: s for k, (_, s) in run_jobs(training, jobs, threads).items()})
    evaluations = {
        f"evaluate {task}": Job(
            evaluate_artifact,
            (artifacts / TASK_DIRS[task], data, reports / TASK_DIRS[task]),
            {
                "show_progress": show_progress,
                "corruptions": None if real_dir is None else REAL_CONDITIONS[task],
            },
        )  # fmt: skip
        for task in trainers
    }
    done = run_jobs(evaluations, jobs, threads)
    results = {task: done[f"evaluate {task}"][0] for task in trainers}
    stages.update({k: s for k, (_, s) in done.items()})
    checks = external_jobs(artifacts, external or {}, default_artifact, real_dir)
    checked = run_jobs(checks, jobs, threads)
    stages.update({k: s for k, (_, s) in checked.items()})
    stages["total"] = time.monotonic() - start_all
    summary = {
        "data": str(data),
        "artifacts": str(artifacts),
        "config": config,
        "machine": machine_info(),
        "stages_seconds": stages,
        "reused_stages_recorded_seconds": recorded,
        "headline": {task: headline(task, r["metrics"]) for task, r in results.items()},
        "real_scans": {task: real_scan_numbers(task, r["metrics"]) for task, r in results.items()},
        "verdicts": {task: r.get("verdicts", {}) for task, r in results.items()},
        "calibration": {"synthesis8": synthesis8_operating_point(artifacts)},
        "external": {k.removeprefix("check "): r for k, (r, _) in checked.items() if k != DEFAULT},
        "overrides": list(overrides),
    }
    if DEFAULT in checked:
        summary["default_on_real"] = checked[DEFAULT][0]
    if real_dir is not None:
        summary["real_dir"] = str(real_dir)
    write_json(reports / "summary.json", summary)
    if report_md is not None:
        write_real_report(summary, report_md, reports)
    m = summary["machine"]
    if real_dir is None:
        title, described = "the default `make train`", "embedded synthetic set"
    else:
        title = f"`make train-real REAL_DIR={real_dir}`"
        described = f"built around the real scans of `{real_dir}` with the builder's fakes"
    sets = f", `--set {' '.join(overrides)}`" if overrides else ""
    lines = [
        f"# MedFakeDet: metrics of {title}",
        "",
        f"Data `{data}` ({described}), `--config {config}` presets{sets}, test split.",
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
        extra = summary["real_scans"][task]
        lines += [
            f"### {task} ([full report]({TASK_DIRS[task]}/report.md))",
            "",
            markdown_table(list(row), [list(row.values())]),
            "",
            markdown_table(list(extra), [list(extra.values())]),
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
    p.add_argument("--real-dir", type=Path, help="build the data around this real-scan folder")
    p.add_argument(
        "--set", action="append", default=[], metavar="[TRAINER.]KEY=VALUE",
        help="override a preset key of both trainers, or of one (synthesis8.KEY, localizer.KEY)",
    )  # fmt: skip
    p.add_argument("--jobs", type=int, default=1, help="train / evaluate this many at once")
    p.add_argument("--real-val", type=Path, help="real scans to check on (optional, never trained)")
    p.add_argument("--fake-val", type=Path, help="generators' outputs to check on (optional)")
    p.add_argument(
        "--default-artifact", type=Path,
        help="a phantom-trained synthesis8 to measure on --real-dir (skipped when absent)",
    )  # fmt: skip
    p.add_argument("--report-md", type=Path, help="write the real-scans report here")
    p.add_argument("--quiet", action="store_true")
    args = p.parse_args(argv)
    if args.jobs < 1:
        p.error(f"--jobs must be >= 1, got {args.jobs}")
    if args.real_dir is not None and not args.real_dir.is_dir():
        p.error(f"--real-dir {args.real_dir} is not a folder")
    if args.real_dir is None and (built := built_real_dir(Path(args.data))) is not None:
        if not built.is_dir():
            p.error(f"{args.data} was built around {built}, which is gone: give --real-dir")
        args.real_dir = built
        print(f"{args.data} was built around {built}: using it as --real-dir", file=sys.stderr)
    try:
        trainer_configs(args.config, args.set)
        needs_build(Path(args.data), args.real_dir)
    except (ValueError, FileNotFoundError) as e:  # a bad --config or --set; a foreign --data
        p.error(str(e))
    summary = run_pipeline(
        Path(args.data), Path(args.artifacts), Path(args.reports), args.config, args.force,
        not args.quiet, args.real_dir, args.set, args.jobs,
        {k: v for k, v in (("real-val", args.real_val), ("fake-val", args.fake_val)) if v},
        args.default_artifact, args.report_md,
    )  # fmt: skip
    for stage, seconds in summary["stages_seconds"].items():
        print(f"{stage:>30}: {'reused' if seconds is None else f'{seconds:.1f} s'}")
    return 0


def real_scan_numbers(task: str, metrics: dict[str, Any]) -> dict[str, float | None]:
    """What a user of real scans asks first: how often an untouched image is flagged, and how
    many fakes / manipulations are caught (test split, calibrated thresholds)."""
    if task == "synthesis8":
        confusion = np.asarray(metrics["confusion_matrix"])
        real_rows = confusion[[CLASS_NAMES.index(f"{o}_real") for o in ORGANS]]
        fake_cols = [CLASS_NAMES.index(f"{o}_fake") for o in ORGANS]
        return {
            "real called fake": float(real_rows[:, fake_cols].sum() / max(real_rows.sum(), 1)),
            "fake recall": metrics["real_vs_fake"]["recall"],
            "organ accuracy": metrics["organ_accuracy"],
            "real-vs-fake ROC-AUC": metrics["real_vs_fake"]["roc_auc"],
        }
    presence = metrics["presence"]
    return {
        "false alarms on untouched": presence["fp"] / max(presence["fp"] + presence["tn"], 1),
        "manipulated found": presence["recall"],
        "box F1 @ IoU 0.5": metrics["boxes"]["iou_0.5"]["f1"],
    }


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
