"""``medfakedet scan --server`` against the real stack (nginx in front of TorchServe).

The served localizer marks bright pixels (see ``bright_region_localizer``), so the box of a bright
rectangle is known exactly; the classifier's numbers are compared with the in-process predictor
on the same artifact.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from medfakedet.cli import main
from medfakedet.deploy import free_port
from medfakedet.imaging import encode_png
from medfakedet.predictors import Synthesis8Predictor

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
    assert code == 0
    scan, notes = report["results"]
    expected = Synthesis8Predictor.from_artifact(stack.artifacts["synthesis8"]).predict(
        [files["scan"].read_bytes()]
    )[0]
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
    expected = Synthesis8Predictor.from_artifact(stack.artifacts["synthesis8"]).predict(
        [files["scan"].read_bytes()]
    )[0]
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


def test_unreachable_server_is_a_usage_error(files, capsys):
    code = main(["scan", str(files["scan"]), "--server", f"http://127.0.0.1:{free_port()}"])
    assert code == 1
    assert "cannot reach the server" in capsys.readouterr().err
