"""``medfakedet scan --server`` against the real stack (nginx in front of TorchServe).

The served localizer marks bright pixels (see ``bright_region_localizer``), so the box of a bright
rectangle is known exactly; the classifier's numbers are compared with the in-process predictor
on the same artifact.
"""

from __future__ import annotations

import hashlib
import json
import re
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from dicom_files import dicom_bytes
from test_web import browser  # noqa: F401  (the fixture: one chromium for this module)

from medfakedet.cli import main
from medfakedet.deploy import free_port
from medfakedet.imaging import encode_png

pytestmark = pytest.mark.integration


@pytest.fixture
def files(tmp_path: Path) -> dict[str, Path]:
    """A 128x128 PNG with a bright 40x32 rectangle at (40, 32) and a text file named .png."""
    pixels = np.full((128, 128), 0.1, np.float32)
    pixels[32:64, 40:80] = 0.9
    scan = tmp_path / "scan.png"
    scan.write_bytes(encode_png(pixels))
    notes = tmp_path / "notes.png"
    notes.write_text("this is not an image\n")
    return {"scan": scan, "notes": notes}


def scan_json(capsys, *args: str) -> tuple[int, dict]:
    code = main(["scan", *args, "--format", "json"])
    return code, json.loads(capsys.readouterr().out)


def test_scan_posts_each_file_and_reports_the_served_results(stack, files, capsys):
    code, report = scan_json(
        capsys, str(files["scan"]), str(files["notes"]), "--server", stack.base_url,
        "--localize", "always",
    )  # fmt: skip
    assert code == 2  # notes.png is not an image: an error row, and the run says so
    scan, notes = report["results"]
    expected = stack.served_predictor("synthesis8").predict([files["scan"].read_bytes()])[0]
    assert (scan["status"], scan["class_name"]) == ("ok", expected["class_name"])
    assert scan["fake_probability"] == pytest.approx(expected["fake_probability"], abs=1e-4)
    assert scan["probabilities"] == pytest.approx(expected["probabilities"], abs=1e-4)
    assert scan["model_version"] == "0.0.1-test" and scan["localizer_version"] == "0.0.2-test"
    assert (scan["manipulated"], scan["count"]) == (True, 1)
    (box,) = scan["boxes"]
    assert (box["x1"], box["y1"], box["x2"], box["y2"]) == (40, 32, 80, 64)
    assert (scan["width"], scan["height"]) == (128, 128)
    # the decoder's 400, reported as this file's error; the other file is unaffected
    assert notes["status"] == "error" and notes["class_name"] is None
    assert notes["error"].startswith("synthesis8: HTTP 400: ")
    assert "not a recognised image" in notes["error"]
    assert (scan["verdict"], scan["in_distribution"]) == ("uncertain", False)
    assert scan["localizer_verdict"] == "manipulated"
    summary = {"files": 2, "fake": 0, "manipulated": 1, "uncertain": 1, "errors": 1}
    assert report["summary"] == summary


def test_thr_and_min_area_travel_as_form_fields(stack, files, capsys):
    # 40x32 = 1280 model pixels: min_area 2000 hides the box, and the message echoes both values
    _, report = scan_json(
        capsys, str(files["scan"]), "--server", stack.base_url, "--localize", "always",
        "--thr", "0.3", "--min-area", "2000",
    )  # fmt: skip
    (row,) = report["results"]
    assert (row["manipulated"], row["count"], row["boxes"]) == (True, 0, [])
    assert "no region reaches thr=0.3 with at least 2000 pixels" in row["message"]


def test_table_shows_the_served_verdicts(stack, files, capsys):
    expected = stack.served_predictor("synthesis8").predict([files["scan"].read_bytes()])[0]
    code = main(["scan", str(files["scan"]), "--server", stack.base_url, "--localize", "always"])
    lines = capsys.readouterr().out.splitlines()
    assert code == 0
    assert expected["verdict"] == "uncertain"  # the stack's synthesis8 always abstains
    (row,) = [line for line in lines if "scan.png" in line]
    assert row.split()[1:] == [
        expected["organ"],
        "uncertain",
        f"{expected['fake_probability']:.3f}",
        "0.00",
        "MANIPULATED",
        "1",
    ]
    assert lines[-1] == "1 file, 0 fake, 1 manipulated, 1 uncertain, 0 errors"


def test_unreachable_server_is_an_error_before_anything_is_sent(files, capsys):
    code = main(["scan", str(files["scan"]), "--server", f"http://127.0.0.1:{free_port()}"])
    assert code == 2
    assert "cannot reach the server" in capsys.readouterr().err


def many_scans(folder: Path, n: int) -> list[Path]:
    """``n`` distinct 160x160 PNGs (seeded noise around a bright square at a varying place)."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(7)
    paths = []
    for i in range(n):
        pixels = np.clip(0.1 + rng.normal(0, 0.03, (160, 160)), 0, 1).astype(np.float32)
        pixels[20 + i : 60 + i, 30:90] = 0.9
        path = folder / f"scan_{i:02d}.png"
        path.write_bytes(encode_png(pixels))
        paths.append(path)
    return paths


def batch_sizes(log: str, model: str) -> list[int]:
    return [int(n) for n in re.findall(rf"{model} batch_size=(\d+)", log)]


def test_concurrent_scan_is_batched_by_the_server_and_streams_jsonl(stack, tmp_path, capsys):
    paths = many_scans(tmp_path / "scans", 32)
    out = tmp_path / "run.jsonl"
    before = len(batch_sizes(stack.model_log(), "synthesis8"))
    code = main(["scan", str(tmp_path / "scans"), "--server", stack.base_url, "--concurrency",
                 "8", "--localize", "never", "--format", "jsonl", "-o", str(out)])  # fmt: skip
    err = capsys.readouterr().err
    assert code == 0
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert sorted(r["file"] for r in rows) == sorted(map(str, paths))  # each file once
    (peak,) = re.findall(r"server: up to (\d+) requests in flight", err)
    assert 1 < int(peak) <= 8  # requests overlapped, never more than the pool
    # TorchServe put several of them into one forward pass (the handler logs each batch).
    deadline = time.monotonic() + 30  # the log is written asynchronously
    while sum(sizes := batch_sizes(stack.model_log(), "synthesis8")[before:]) < 32:
        assert time.monotonic() < deadline, sizes
        time.sleep(0.5)
    assert max(sizes) > 1, sizes  # measured here: batches of 1, 8, 3, 6, 6, 4, ...
    sha = hashlib.sha256(paths[0].read_bytes()).hexdigest()
    (first,) = [r for r in rows if r["file"] == str(paths[0])]
    assert first["sha256"] == sha and first["model_version"] == "0.0.1-test"
    weights = stack.artifacts["synthesis8"] / "model.safetensors"
    assert first["model_sha256"] == hashlib.sha256(weights.read_bytes()).hexdigest()


def test_jsonl_resume_scans_only_what_is_missing_or_failed(stack, tmp_path, capsys):
    paths = many_scans(tmp_path / "scans", 6)
    bad = tmp_path / "scans" / "broken.png"
    bad.write_text("not an image")
    out = tmp_path / "run.jsonl"
    args = ["scan", str(tmp_path / "scans"), "--server", stack.base_url, "--localize", "never",
            "--format", "jsonl", "-o", str(out)]  # fmt: skip
    assert main(args) == 2  # the broken file
    first = out.read_text().splitlines()
    assert len(first) == 7
    # A run killed mid-way: two finished rows lost, the last line cut in half.
    kept = [line for line in first if "scan_00" not in line and "scan_01" not in line]
    out.write_text("\n".join(kept) + "\n" + kept[0][: len(kept[0]) // 2])
    bad.write_bytes(paths[5].read_bytes())  # the broken file was fixed meanwhile
    assert main([*args, "--resume"]) == 0
    err = capsys.readouterr().err
    assert "resuming" in err and "4 of 7 files done" in err  # 5 ok rows left, scan_05 kept...
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert sorted(r["file"] for r in rows) == sorted(map(str, [*paths, bad]))
    assert all(r["status"] == "ok" for r in rows)
    fixed = [r for r in rows if r["file"] == str(bad)]
    assert fixed[0]["sha256"] == hashlib.sha256(paths[5].read_bytes()).hexdigest()
    # Nothing left to do: a third run sends nothing and keeps the file as it is.
    text = out.read_text()
    assert main([*args, "--resume"]) == 0
    assert out.read_text() == text
    assert "server: up to 0 requests in flight" in capsys.readouterr().err


def test_transient_errors_are_retried_and_a_dead_server_mid_run_keeps_results(
    stack, tmp_path, capsys
):
    """A proxy in front of nginx answers 503 to every third request and then dies: the 503s are
    retried, and the files after its death become error rows (exit 2) without losing the
    others."""
    import http.server
    import socketserver

    import requests

    counter = {"n": 0, "dead_after": 10}

    class Flaky(http.server.BaseHTTPRequestHandler):
        def do_GET(self):  # /ping
            self.send_response(200)
            self.end_headers()

        def do_POST(self):
            counter["n"] += 1
            body = self.rfile.read(int(self.headers["Content-Length"]))
            if counter["n"] > counter["dead_after"]:
                self.connection.close()  # like a server that went away
                return
            if counter["n"] % 3 == 0:
                self.send_response(503)
                self.end_headers()
                self.wfile.write(b'{"code": 503, "type": "x", "message": "busy"}')
                return
            headers = {"Content-Type": self.headers["Content-Type"]}
            r = requests.post(stack.base_url + self.path, data=body, headers=headers, timeout=60)
            self.send_response(r.status_code)
            self.send_header("Content-Type", "application/json")
            self.end_headers()
            self.wfile.write(r.content)

        def log_message(self, *args):
            pass

    server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), Flaky)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        paths = many_scans(tmp_path / "scans", 8)
        url = f"http://127.0.0.1:{server.server_address[1]}"
        args = ["--server", url, "--localize", "never", "--concurrency", "1", "--retries", "1"]
        code, report = scan_json(capsys, str(tmp_path / "scans"), *args)
    finally:
        server.shutdown()
        server.server_close()
    assert code == 2
    rows = {Path(r["file"]).name: r for r in report["results"]}
    assert len(rows) == 8
    ok = [n for n, r in rows.items() if r["status"] == "ok"]
    failed = [n for n, r in rows.items() if r["status"] == "error"]
    # requests 1-10: 3, 6, 9 answered 503 and were retried: 7 files done; then the server died
    assert ok == [p.name for p in paths[:7]] and failed == [paths[7].name]
    assert "connection failed" in rows[paths[7].name]["error"]
    assert "(after 2 tries)" in rows[paths[7].name]["error"]


@pytest.mark.browser
def test_html_report_from_the_server_opens_offline_in_chromium(stack, files, browser, tmp_path):  # noqa: F811
    dcm = tmp_path / "scan.dcm"  # a format browsers cannot show: the report has its preview
    pixels = np.full((96, 128), 0.1, np.float32)
    pixels[20:60, 30:90] = 0.9
    dcm.write_bytes(dicom_bytes(pixels, bits=16))
    report = tmp_path / "audit.html"
    code = main(["scan", str(files["scan"]), str(dcm), "--server", stack.base_url,
                 "--localize", "always", "--format", "html", "-o", str(report)])  # fmt: skip
    assert code == 0
    text = report.read_text()
    assert "http" not in text.replace(stack.base_url, "")  # nothing to fetch but the source line
    context = browser.new_context(viewport={"width": 1200, "height": 900}, offline=True)
    page = context.new_page()
    page.goto(report.as_uri())
    images = page.evaluate("Array.from(document.images).map(i => [i.alt, i.naturalWidth])")
    assert len(images) == 4 and all(width > 0 for _, width in images)  # previews + heatmaps
    boxes = page.evaluate(
        "Array.from(document.querySelectorAll('rect')).map(r => "
        "[r.x.baseVal.value, r.y.baseVal.value, r.width.baseVal.value, r.height.baseVal.value])"
    )
    # each file's bright rectangle (the DICOM's edges at +-0.25 px: a 128-px grid over 96 rows)
    assert boxes == [[40, 32, 40, 32], pytest.approx([30, 20, 60, 40], abs=0.5)]
    assert page.locator("#summary").inner_text() == (
        "2 files, 0 fake, 2 manipulated, 2 uncertain, 0 errors"
    )
    shot = tmp_path / "audit.png"
    page.screenshot(path=str(shot), full_page=True)
    context.close()
    from PIL import Image

    pixels = np.asarray(Image.open(shot).convert("L"), dtype=np.float32)
    assert pixels.shape[0] > 400 and pixels.std() > 20  # a real page, not a blank one
