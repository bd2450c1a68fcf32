"""JSON Lines for ``medfakedet scan --format jsonl``: one row per line, written (and flushed) as
each file finishes, so an interrupted run keeps every result so far; ``--resume`` reads such a
file back and scans only what it does not hold yet.

Each line is :meth:`medfakedet.scan.ScanRow.to_dict` of one file, with the file's sha256 and the
models' versions and weight hashes.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import IO, Any

from medfakedet.hashing import file_sha256
from medfakedet.scan import UsageError


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """The rows of an earlier run's JSONL. A last line cut short (the run was killed while
    writing it) is dropped; any other line that is not a JSON object is an error."""
    lines = path.read_text(encoding="utf-8").splitlines()
    rows = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            if number == len(lines):
                break  # the line being written when the run stopped
            raise UsageError(f"{path}:{number}: not a JSON line of a scan") from None
        if not isinstance(row, dict) or "file" not in row or "status" not in row:
            raise UsageError(f"{path}:{number}: not a row of medfakedet scan")
        rows.append(row)
    return rows


def finished_rows(previous: list[dict[str, Any]], files: list[Path]) -> dict[str, dict]:
    """The rows of ``previous`` that need no new scan: status ok, and the file on disk still
    has the sha256 that was scanned (a changed file is scanned again). Keyed by file name."""
    wanted = {str(f): f for f in files}
    done: dict[str, dict] = {}
    for row in previous:
        path = wanted.get(row["file"])
        if path is None or row["status"] != "ok" or not row.get("sha256"):
            continue
        try:
            same = file_sha256(path) == row["sha256"]
        except OSError:
            same = False
        if same:
            done[row["file"]] = row
    return done


class JsonlWriter:
    """Writes rows to ``out`` one line each, flushed at once."""

    def __init__(self, out: IO[str]) -> None:
        self.out = out

    def write(self, row: dict[str, Any]) -> None:
        self.out.write(json.dumps(row, separators=(",", ":")) + "\n")
        self.out.flush()


def rewrite_without_errors(path: Path, rows: list[dict[str, Any]]) -> None:
    """Rewrite ``path`` with only ``rows`` (the finished ones), before a resumed run appends."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text("".join(json.dumps(r, separators=(",", ":")) + "\n" for r in rows))
    tmp.replace(path)
