"""The reports of ``medfakedet scan``: a summary line, and a table, JSON or CSV of the rows."""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

from medfakedet.labels import CLASS_NAMES
from medfakedet.scan import ScanRow

CSV_COLUMNS = (
    "file",
    "status",
    "error",
    "organ",
    "class_name",
    "verdict",
    "in_distribution",
    "in_distribution_score",
    "reason",
    "fake_probability",
    "localizer_verdict",
    "localizer_in_distribution_score",
    "manipulated",
    "presence_score",
    "count",
    "boxes",
    "width",
    "height",
    "format",
    *(f"p_{name}" for name in CLASS_NAMES),
)


@dataclass(frozen=True)
class Summary:
    files: int
    fake: int
    manipulated: int
    uncertain: int
    errors: int

    @classmethod
    def of(cls, rows: Sequence[ScanRow]) -> Summary:
        return cls(
            files=len(rows),
            fake=sum(r.is_fake for r in rows),
            manipulated=sum(r.is_manipulated for r in rows),
            uncertain=sum(r.is_uncertain for r in rows),
            errors=sum(r.error is not None for r in rows),
        )

    def line(self) -> str:
        return (
            f"{self.files} file{'s' if self.files != 1 else ''}, {self.fake} fake, "
            f"{self.manipulated} manipulated, {self.uncertain} uncertain, "
            f"{self.errors} error{'s' if self.errors != 1 else ''}"
        )


def _fmt(value: Any, digits: int = 3) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def _shorten(text: str, width: int) -> str:
    return text if len(text) <= width else "..." + text[-(width - 3) :]


def format_table(rows: Sequence[ScanRow], summary: Summary) -> str:
    """A fixed-width table: file, organ, verdict, P(fake), in-distribution score, the
    localizer's verdict, boxes; then the summary. FAKE and MANIPULATED are in capitals."""
    header = ("file", "organ", "verdict", "P(fake)", "in-dist", "manipulated", "boxes")
    body = []
    for row in rows:
        d = row.to_dict()
        if row.error:
            body.append((_shorten(row.file, 60), "-", "ERROR", "-", "-", "-", "-", row.error))
            continue
        loc = d["localizer_verdict"]
        body.append(
            (
                _shorten(row.file, 60),
                _fmt(d["organ"]),
                _fmt(d["verdict"]).upper() if d["verdict"] == "fake" else _fmt(d["verdict"]),
                _fmt(d["fake_probability"]),
                _fmt(d["in_distribution_score"], 2),
                {"manipulated": "MANIPULATED", "untouched": "no"}.get(loc, _fmt(loc)),
                _fmt(d["count"]),
                "",
            )
        )
    n = len(header)
    widths = [max([len(h)] + [len(b[i]) for b in body]) for i, h in enumerate(header)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(header, widths, strict=True)).rstrip()]
    lines.append("  ".join("-" * w for w in widths))
    for b in body:
        cells = "  ".join(c.ljust(w) for c, w in zip(b[:n], widths, strict=True))
        lines.append((cells + ("  " + b[n] if b[n] else "")).rstrip())
    lines.append("")
    lines.append(summary.line())
    return "\n".join(lines) + "\n"


def format_json(rows: Sequence[ScanRow], summary: Summary) -> str:
    doc = {"summary": asdict(summary), "results": [r.to_dict() for r in rows]}
    return json.dumps(doc, indent=2) + "\n"


def format_csv(rows: Sequence[ScanRow]) -> str:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=CSV_COLUMNS, lineterminator="\n")
    writer.writeheader()
    for row in rows:
        d = row.to_dict()
        probs = d.pop("probabilities") or {}
        record = {k: d.get(k) for k in CSV_COLUMNS}
        record["boxes"] = json.dumps(d["boxes"]) if d["boxes"] is not None else None
        for name in CLASS_NAMES:
            record[f"p_{name}"] = probs.get(name)
        writer.writerow({k: "" if v is None else v for k, v in record.items()})
    return buf.getvalue()


def format_report(fmt: str, rows: Sequence[ScanRow], summary: Summary) -> str:
    """The report in ``fmt``: ``table``, ``json`` or ``csv``."""
    if fmt == "table":
        return format_table(rows, summary)
    if fmt == "json":
        return format_json(rows, summary)
    return format_csv(rows)
