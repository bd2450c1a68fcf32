"""``make loadtest`` against the real stack: a 20-second headless locust run (ramp 5 s, hold
15 s, 6 users) over the procedural format mix, whose CSV and HTML reports must show requests of
the user classes and no failure. :func:`make_loadtest` also runs it against the token stack
(``test_serving.py``)."""

from __future__ import annotations

import csv
import os
import subprocess
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]


def make_loadtest(
    url: str,
    reports: Path,
    shape: tuple[int, int, int],
    token: str | None = None,
    args: str = "",
) -> tuple[subprocess.CompletedProcess, list[dict]]:
    """``make loadtest`` against ``url`` with ``shape`` = (users, ramp s, hold s), the token
    (``MEDFAKEDET_TOKEN``) and ``LOADTEST_ARGS``; its process and the rows of its stats CSV."""
    users, ramp, hold = shape
    env = {
        **os.environ,
        "MEDFAKEDET_USERS": str(users),
        "MEDFAKEDET_RAMP_S": str(ramp),
        "MEDFAKEDET_HOLD_S": str(hold),
    }
    env.pop("MEDFAKEDET_IMAGES", None)  # the procedural mix: DICOM, 16-bit PNG, JPEG, X-rays
    env.pop("MEDFAKEDET_TOKEN", None)
    if token:
        env["MEDFAKEDET_TOKEN"] = token
    done = subprocess.run(
        ["make", "-s", "-o", ".venv/.medfakedet-installed", "loadtest", f"LOADTEST_URL={url}",
         f"LOADTEST_REPORTS={reports}", f"LOADTEST_ARGS={args}"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    stats = reports / "loadtest_stats.csv"
    assert stats.is_file(), done.stdout[-3000:] + done.stderr[-3000:]
    return done, list(csv.DictReader(stats.open()))


def test_make_loadtest_writes_reports_without_failures(stack, tmp_path) -> None:
    reports = tmp_path / "reports"
    done, rows = make_loadtest(stack.base_url, reports, (6, 5, 15))
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    seen = {r["Name"]: (r["Request Count"], r["Median Response Time"]) for r in rows}
    print(seen)  # requests and median ms per name (shown with pytest -s)
    total = next(r for r in rows if r["Name"] == "Aggregated")
    assert int(total["Request Count"]) >= 10, seen
    assert int(total["Failure Count"]) == 0, (reports / "loadtest_failures.csv").read_text()
    names = {r["Name"] for r in rows} - {"Aggregated"}
    # Every user class but the rare Grad-CAM one ran, on more than one kind of file (which
    # kinds is random: 13 to 26 requests in 20 s were measured on the loaded 2-core machine).
    for wanted in ("/detect/synthesis8 [", "/detect/manipulation_density", " raw ["):
        assert any(wanted in n for n in names), seen
    assert len({n.rsplit("[", 1)[-1] for n in names}) >= 2, seen
    assert (reports / "loadtest_failures.csv").read_text().count("\n") == 1  # the header only
    html = (reports / "loadtest.html").read_text()
    assert "<html" in html.lower() and "/detect/synthesis8" in html
