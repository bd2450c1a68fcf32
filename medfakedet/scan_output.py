"""The reports of ``medfakedet scan``: a summary line, and a table, JSON or CSV of the rows.

Every report reads the flat records of :meth:`medfakedet.scan.ScanRow.to_dict` (also the lines
of a JSONL run that is resumed), so rows scanned now and rows read back look the same.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

from medfakedet.labels import CLASS_NAMES

Record = dict[str, Any]

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
    "sha256",
    "model_version",
    "model_sha256",
    "localizer_version",
    "localizer_sha256",
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
    def of(cls, rows: Sequence[Record]) -> Summary:
        """Counts over records; ``uncertain``: either model answered uncertain."""
        return cls(
            files=len(rows),
            fake=sum(r["verdict"] == "fake" for r in rows),
            manipulated=sum(r["localizer_verdict"] == "manipulated" for r in rows),
            uncertain=sum("uncertain" in (r["verdict"], r["localizer_verdict"]) for r in rows),
            errors=sum(r["status"] == "error" for r in rows),
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


def format_table(rows: Sequence[Record], summary: Summary) -> str:
    """A fixed-width table: file, organ, verdict, P(fake), in-distribution score, the
    localizer's verdict, boxes; then the summary. FAKE and MANIPULATED are in capitals."""
    header = ("file", "organ", "verdict", "P(fake)", "in-dist", "manipulated", "boxes")
    body = []
    for d in rows:
        if d["error"]:
            body.append((_shorten(d["file"], 60), "-", "ERROR", "-", "-", "-", "-", d["error"]))
            continue
        loc = d["localizer_verdict"]
        body.append(
            (
                _shorten(d["file"], 60),
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


def format_json(rows: Sequence[Record], summary: Summary) -> str:
    doc = {"summary": asdict(summary), "results": list(rows)}
    return json.dumps(doc, indent=2) + "\n"


def format_csv(rows: Sequence[Record]) -> str:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=CSV_COLUMNS, lineterminator="\n")
    writer.writeheader()
    for d in rows:
        probs = d.get("probabilities") or {}
        record = {k: d.get(k) for k in CSV_COLUMNS}
        record["boxes"] = json.dumps(d["boxes"]) if d["boxes"] is not None else None
        for name in CLASS_NAMES:
            record[f"p_{name}"] = probs.get(name)
        writer.writerow({k: "" if v is None else v for k, v in record.items()})
    return buf.getvalue()


def format_report(fmt: str, rows: Sequence[Record], summary: Summary) -> str:
    """The report in ``fmt``: ``table``, ``json``, ``csv`` or ``jsonl`` (all rows at once)."""
    if fmt == "table":
        return format_table(rows, summary)
    if fmt == "json":
        return format_json(rows, summary)
    if fmt == "jsonl":
        return "".join(json.dumps(r, separators=(",", ":")) + "\n" for r in rows)
    return format_csv(rows)
