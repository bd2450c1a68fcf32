"""``report.md`` from an evaluation result, rendered from declarative table specs.

Each section of the report is a :class:`Table`: a heading, where its rows come from in the
result, and one ``(header, path)`` pair per column. A path is a dotted key path (``"presence.f1"``)
into the row, ``""`` for the row itself, ``"$key"`` for the row's key or label, or a tuple of
paths for a ``"a / b"`` cell. Headings and row labels are ``str.format``-ed with the result.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

KeyPath = str | tuple[str, ...]


@dataclass(frozen=True)
class Table:
    """One report section: ``## heading``, an optional note, the table, optional Markdown after.

    Attributes:
        heading: section title, ``str.format``-ed with the result.
        rows: a path to a list of rows or a mapping of keyed rows; None for one row (the result
            itself); or ``(label, path)`` pairs, one labelled row each.
        columns: ``(header, path within the row)`` pairs; None: a ``key_header`` column, then
            every key of the first row.
        when: a path that must hold something (non-empty) for the section to be written.
    """

    heading: str
    rows: str | tuple[tuple[str, KeyPath], ...] | None
    columns: tuple[tuple[str, KeyPath], ...] | None
    note: str = ""
    after: str = ""
    when: str | None = None
    key_header: str = ""


def _pairs(*names: str, prefix: str = "") -> tuple[tuple[str, str], ...]:
    """``("precision", "recall")`` -> ``(("precision", "precision"), ("recall", "recall"))``."""
    return tuple((name, prefix + name) for name in names)


SYNTHESIS8_TABLES: tuple[Table, ...] = (
    Table(
        "Summary",
        rows=(
            ("accuracy (8 classes)", "metrics.accuracy"),
            ("macro-F1", "metrics.macro_f1"),
            ("organ accuracy", "metrics.organ_accuracy"),
            ("real-vs-fake ROC-AUC", "metrics.real_vs_fake.roc_auc"),
            ("real-vs-fake average precision", "metrics.real_vs_fake.average_precision"),
            ("real-vs-fake accuracy (P(fake) >= 0.5)", "metrics.real_vs_fake.accuracy"),
            ("temperature (fit on val)", "metrics.calibration.temperature"),
            (
                "ECE before / after temperature",
                ("metrics.calibration.ece_before", "metrics.calibration.ece_after"),
            ),
            (
                "NLL before / after temperature",
                ("metrics.calibration.nll_before", "metrics.calibration.nll_after"),
            ),
        ),
        columns=(("metric", "$key"), ("value", "")),
    ),
    Table(
        "Per class",
        rows="metrics.per_class",
        columns=(
            ("class", "$key"),
            *_pairs("precision", "recall"),
            ("F1", "f1"),
            ("support", "support"),
        ),
        after="![confusion matrix](confusion_matrix.png) ![ROC](roc_real_vs_fake.png) "
        "![reliability](reliability.png)",
    ),
)

LOCALIZER_TABLES: tuple[Table, ...] = (
    Table(
        "Presence (max of the raw density map >= presence threshold)",
        rows=None,
        columns=(
            ("threshold (val)", "metrics.presence_threshold"),
            *_pairs("accuracy", "precision", "recall", prefix="metrics.presence."),
            ("F1", "metrics.presence.f1"),
            ("ROC-AUC", "metrics.presence.roc_auc"),
            ("n", "metrics.n"),
            ("manipulated", "metrics.n_manipulated"),
        ),
    ),
    Table(
        "Boxes (density >= {metrics[box_threshold]:g}, min_area {metrics[min_area]})",
        rows="metrics.boxes",
        columns=(
            ("IoU", "iou_threshold"),
            *_pairs("precision", "recall"),
            ("F1", "f1"),
            ("mean IoU (matched)", "mean_iou"),
            ("count MAE", "count_mae"),
            *(("TP", "tp"), ("FP", "fp"), ("FN", "fn")),
        ),
    ),
    Table(
        "Pixels",
        rows=(
            ("density >= {metrics[box_threshold]:g} vs mask", "metrics.pixel"),
            ("mask head (logit > 0) vs mask", "metrics.mask_head_pixel"),
        ),
        columns=(("map", "$key"), ("IoU", "iou"), ("F1", "f1")),
    ),
    Table(
        "Threshold sweep (the paper's ablation)",
        note="One threshold for presence and boxes; boxes matched at IoU 0.5.",
        rows="sweep",
        columns=(
            ("thr", "threshold"),
            ("presence P", "presence_precision"),
            ("presence R", "presence_recall"),
            ("presence F1", "presence_f1"),
            ("box P", "box_precision"),
            ("box R", "box_recall"),
            ("box F1", "box_f1"),
            ("mean IoU", "mean_iou"),
            ("count MAE", "count_mae"),
        ),
        after="![threshold sweep](threshold_sweep.png)\n\n![examples](examples.png)",
    ),
    Table(
        "By manipulation kind",
        when="by_kind",
        note="Images whose regions are all of one kind (from the builder's manifest.csv), at the "
        "calibrated thresholds; for untouched images, 'flagged' is the false-alarm rate.",
        rows="by_kind",
        columns=(
            *_pairs("kind", "images", "regions", "flagged"),
            ("median presence score", "median_presence_score"),
            ("box recall @ IoU 0.5", "box_recall@0.5"),
            ("boxes predicted", "boxes_predicted"),
        ),
    ),
)

SYNTHESIS8_VERDICTS_TABLE = Table(
    "Served verdicts, clean and corrupted (calibrated grey zone and in-distribution check)",
    when="verdicts",
    note="What a user is answered: `fake` / `real` / `uncertain` (medfakedet.verdict). The "
    "false-'fake' rate on real images counts `fake` answers; `uncertain` ones are counted "
    "apart. 'raw' columns: the model's own call (the paper's is_fake), without abstention.",
    rows="verdicts",
    columns=(
        ("condition", "$key"),
        ("real answered fake", "real_answered_fake"),
        ("real uncertain", "real_uncertain"),
        ("fake answered fake", "fake_answered_fake"),
        ("uncertain (all)", "uncertain"),
        ("out of distribution", "out_of_distribution"),
        ("organ accuracy", "organ_accuracy"),
        ("ROC-AUC", "roc_auc"),
        ("real called fake (raw)", "real_called_fake"),
        ("fake called fake (raw)", "fake_called_fake"),
    ),
)

LOCALIZER_VERDICTS_TABLE = Table(
    "Served verdicts, clean and corrupted (calibrated thresholds and in-distribution check)",
    when="verdicts",
    note="False alarm: untouched images answered `manipulated` ('raw': flagged before "
    "abstention). Per kind (images whose regions are all lesion insertions, or all removals): "
    "share answered `manipulated`, and box F1 at IoU 0.5 of the served boxes.",
    rows="verdicts",
    columns=(
        ("condition", "$key"),
        ("false alarm", "false_alarm_untouched"),
        ("false alarm (raw)", "flagged_untouched"),
        ("uncertain (all)", "uncertain"),
        ("insertion found", "lesion.answered_manipulated"),
        ("insertion box F1", "lesion.box_f1@0.5"),
        ("removal found", "removal.answered_manipulated"),
        ("removal box F1", "removal.box_f1@0.5"),
    ),
)

ROBUSTNESS_TABLE = Table(
    "Robustness (corruption applied to the model-size image, same calibration)",
    when="robustness",
    rows="robustness",
    columns=None,
    key_header="condition",
)

TABLES: dict[str, tuple[Table, ...]] = {
    "synthesis8": (*SYNTHESIS8_TABLES, SYNTHESIS8_VERDICTS_TABLE, ROBUSTNESS_TABLE),
    "manipulation_density": (*LOCALIZER_TABLES, LOCALIZER_VERDICTS_TABLE, ROBUSTNESS_TABLE),
}


def format_value(value: Any) -> str:
    """A table cell: 4 decimals for floats, ``n/a`` for None, ``a / b`` for a pair."""
    if value is None:
        return "n/a"
    if isinstance(value, tuple):
        return " / ".join(format_value(v) for v in value)
    if isinstance(value, float):
        return f"{value:.4f}"
    return str(value)


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A GitHub Markdown table; cells through :func:`format_value`."""
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(format_value(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def lookup(data: Any, path: KeyPath, key: str | None = None) -> Any:
    """The value at a dotted key ``path`` in ``data`` (see the module docstring); a key that
    itself holds dots (``"box_recall@0.5"``) is found whole."""
    if isinstance(path, tuple):
        return tuple(lookup(data, p, key) for p in path)
    if path == "$key":
        return key
    if not path:
        return data
    if isinstance(data, dict) and path in data:
        return data[path]
    head, _, rest = path.partition(".")
    return lookup(data[head], rest)


def _rows(table: Table, result: dict[str, Any]) -> list[tuple[str | None, Any]]:
    if table.rows is None:
        return [(None, result)]
    if isinstance(table.rows, tuple):
        return [(label.format(**result), lookup(result, p)) for label, p in table.rows]
    rows = lookup(result, table.rows)
    return list(rows.items()) if isinstance(rows, dict) else [(None, r) for r in rows]


def render_table(table: Table, result: dict[str, Any]) -> list[str]:
    """The Markdown lines of one section, or none when its ``when`` path is empty."""
    if table.when is not None and not result.get(table.when):
        return []
    rows = _rows(table, result)
    if table.columns is None:
        keys = list(rows[0][1])
        header = [table.key_header, *keys]
        cells = [[key, *(row[k] for k in keys)] for key, row in rows]
    else:
        header = [h for h, _ in table.columns]
        cells = [[lookup(row, p, key) for _, p in table.columns] for key, row in rows]
    lines = [f"## {table.heading.format(**result)}", ""]
    if table.note:
        lines += [table.note, ""]
    lines += [*markdown_table(header, cells).splitlines(), ""]
    if table.after:
        lines += [*table.after.splitlines(), ""]
    return lines


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
    """``OUT/report.md`` from the result of :func:`training.evaluate.evaluate_artifact`."""
    m = result["metrics"]
    lines = [
        f"# {result['task']} evaluation: {result['split']} split",
        "",
        f"- artifact: `{result['artifact']}` (arch {result['arch']}, version {result['version']})",
        f"- data: `{result['data']}`, split mode `{result['split_mode']}`, n = {m['n']}",
        f"- generated {result['created']}",
        *_machine_lines(result),
        "",
    ]
    for table in TABLES[result["task"]]:
        lines += render_table(table, result)
    path = out / "report.md"
    path.write_text("\n".join(lines))
    return path
