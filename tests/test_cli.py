"""``medfakedet scan`` offline on crafted artifacts (server mode runs against the real stack in
``tests/integration/test_cli_server.py``).

The artifacts are random networks whose outputs are fixed by construction: the classifier's fc
weights are zero and its bias makes one class win with a known softmax; the localizer's density
head is zero with a constant bias, so the density map is sigmoid(bias) everywhere and the one box
covers the whole image. Every number below is therefore known in advance.
"""

from __future__ import annotations

import csv
import io
import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from medfakedet.artifacts import save_artifact
from medfakedet.cli import main
from medfakedet.labels import CLASS_NAMES
from medfakedet.models import build_classifier, build_localizer
from medfakedet.ood import LayerStatistics, OODStatistics
from medfakedet.preprocess import CLASSIFIER_PREPROCESS, LOCALIZER_PREPROCESS
from medfakedet.scan_output import CSV_COLUMNS

LOGIT = 8.0  # the winning class's logit; all others are 0
DENSITY_BIAS = 6.0  # density map = sigmoid(+-6) everywhere


def _far_away(layer: str, dim: int) -> OODStatistics:
    """In-distribution statistics that no image meets: the mean is 1000 in every feature."""
    far = LayerStatistics(np.full((1, dim), 1e3), np.eye(dim), np.linspace(0.0, 1.0, 20))
    return OODStatistics({layer: far}, np.linspace(0.05, 1.0, 20), 0.05)


def _make_artifacts(root: Path, winner: str, density_bias: float, ood: bool = False) -> Path:
    torch.manual_seed(0)
    clf = build_classifier()
    with torch.no_grad():
        clf.fc.weight.zero_()
        clf.fc.bias.zero_()
        clf.fc.bias[CLASS_NAMES.index(winner)] = LOGIT
    save_artifact(
        root / "synthesis8",
        clf,
        task="synthesis8",
        arch="resnet18",
        preprocess=CLASSIFIER_PREPROCESS,
        calibration={"temperature": 1.0},
        version="test-clf",
        ood=_far_away("layer4", 512) if ood else None,
    )
    loc = build_localizer("unet_density")
    with torch.no_grad():
        loc.density_head.weight.zero_()
        loc.density_head.bias.fill_(density_bias)
    save_artifact(
        root / "manipulation_density",
        loc,
        task="manipulation_density",
        arch="unet_density",
        preprocess=LOCALIZER_PREPROCESS,
        calibration={"presence_threshold": 0.28, "box_threshold": 0.28, "min_area": 20},
        version="test-loc",
        ood=_far_away("bottleneck", 128) if ood else None,
    )
    return root


@pytest.fixture(scope="module")
def fake_brain_artifacts(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _make_artifacts(tmp_path_factory.mktemp("fake_brain"), "brain_fake", DENSITY_BIAS)


@pytest.fixture(scope="module")
def unlike_artifacts(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The fake-brain models, with statistics that call every image out of distribution."""
    return _make_artifacts(tmp_path_factory.mktemp("ood"), "brain_fake", DENSITY_BIAS, ood=True)


@pytest.fixture(scope="module")
def real_chest_artifacts(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _make_artifacts(tmp_path_factory.mktemp("real_chest"), "chest_real", -DENSITY_BIAS)


def _gray(width: int, height: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    ramp = np.linspace(0, 255, width)[None, :] * np.ones((height, 1))
    return np.clip(ramp + rng.normal(0, 20, (height, width)), 0, 255).astype(np.uint8)


@pytest.fixture
def images(tmp_path: Path) -> dict[str, Path]:
    """A 200x150 PNG, a 96x64 RGB JPEG and a text file with an image's name."""
    png = tmp_path / "brain.png"
    Image.fromarray(_gray(200, 150, 1)).save(png)
    jpg = tmp_path / "scan.jpg"
    Image.fromarray(np.stack([_gray(96, 64, s) for s in (2, 3, 4)], axis=2)).save(jpg, quality=90)
    txt = tmp_path / "notes.png"
    txt.write_text("this is not an image\n")
    return {"png": png, "jpg": jpg, "txt": txt}


def _expected_probs(winner: str) -> dict[str, float]:
    z = math.exp(LOGIT) + len(CLASS_NAMES) - 1
    return {n: (math.exp(LOGIT) if n == winner else 1.0) / z for n in CLASS_NAMES}


def _scan_json(capsys, *args: str) -> tuple[int, dict]:
    code = main(["scan", *args, "--format", "json"])
    out = capsys.readouterr().out
    return code, json.loads(out)


def test_json_report_has_known_classes_probabilities_and_boxes(
    capsys, fake_brain_artifacts: Path, images: dict[str, Path]
) -> None:
    code, report = _scan_json(
        capsys,
        str(images["png"]),
        str(images["jpg"]),
        str(images["txt"]),
        "--artifacts",
        str(fake_brain_artifacts),
    )
    assert code == 2  # an unreadable file: the audit has a hole (fakes alone would give 0)
    assert report["summary"] == {
        "files": 3,
        "fake": 2,
        "manipulated": 2,
        "uncertain": 0,
        "errors": 1,
    }
    png, jpg, txt = report["results"]

    expected = _expected_probs("brain_fake")
    p_fake = sum(p for n, p in expected.items() if n.endswith("_fake"))
    for row, (w, h, fmt) in ((png, (200, 150, "PNG")), (jpg, (96, 64, "JPEG"))):
        assert row["status"] == "ok" and row["error"] is None
        assert (row["class_name"], row["organ"], row["verdict"]) == ("brain_fake", "brain", "fake")
        # These artifacts have no in-distribution statistics: unknown, never uncertain.
        assert (row["in_distribution"], row["in_distribution_score"]) == (None, None)
        assert row["localizer_verdict"] == "manipulated"
        assert row["fake_probability"] == pytest.approx(p_fake, abs=1e-5)
        assert row["probabilities"] == pytest.approx(expected, abs=1e-5)
        assert (row["width"], row["height"], row["format"]) == (w, h, fmt)
        # Density is sigmoid(6) everywhere: manipulated, one box over the whole ORIGINAL image.
        assert row["manipulated"] is True
        assert row["presence_score"] == pytest.approx(1 / (1 + math.exp(-DENSITY_BIAS)), abs=1e-4)
        assert row["count"] == 1
        (box,) = row["boxes"]
        assert (box["x1"], box["y1"], box["x2"], box["y2"]) == (0, 0, w, h)
        assert (row["model_version"], row["localizer_version"]) == ("test-clf", "test-loc")

    assert txt["status"] == "error" and txt["file"].endswith("notes.png")
    assert "image" in txt["error"].lower()  # the decoder's message, e.g. "not an image ..."
    assert txt["class_name"] is None and txt["manipulated"] is None


def test_table_lists_every_file_and_the_summary(
    capsys, fake_brain_artifacts: Path, images: dict[str, Path]
) -> None:
    code = main(["scan", *map(str, images.values()), "--artifacts", str(fake_brain_artifacts)])
    out = capsys.readouterr().out
    assert code == 2  # notes.png is not an image
    lines = out.splitlines()
    header = ["file", "organ", "verdict", "P(fake)", "in-dist", "manipulated", "boxes"]
    assert lines[0].split() == header
    (png_line,) = [line for line in lines if "brain.png" in line]
    p_fake = sum(p for n, p in _expected_probs("brain_fake").items() if n.endswith("_fake"))
    assert png_line.split()[1:] == ["brain", "FAKE", f"{p_fake:.3f}", "-", "MANIPULATED", "1"]
    assert f"{p_fake:.3f}" == "0.999"
    (txt_line,) = [line for line in lines if "notes.png" in line]
    assert "ERROR" in txt_line
    assert lines[-1] == "3 files, 2 fake, 2 manipulated, 0 uncertain, 1 error"


def test_csv_output_file_parses_back(
    capsys, tmp_path: Path, fake_brain_artifacts: Path, images: dict[str, Path]
) -> None:
    out_file = tmp_path / "report.csv"
    code = main(
        [
            "scan",
            str(images["png"]),
            str(images["txt"]),
            "--artifacts",
            str(fake_brain_artifacts),
            "--format",
            "csv",
            "--output",
            str(out_file),
        ]
    )
    captured = capsys.readouterr()
    assert code == 2 and captured.out == ""  # the report went to the file
    assert captured.err.strip().endswith("2 files, 1 fake, 1 manipulated, 0 uncertain, 1 error")
    reader = csv.DictReader(io.StringIO(out_file.read_text()))
    assert tuple(reader.fieldnames) == CSV_COLUMNS
    png, txt = list(reader)
    assert png["class_name"] == "brain_fake" and png["manipulated"] == "True"
    assert float(png["p_brain_fake"]) == pytest.approx(_expected_probs("brain_fake")["brain_fake"])
    assert json.loads(png["boxes"])[0]["x2"] == 200
    assert txt["status"] == "error" and txt["class_name"] == "" and txt["error"]


def test_fail_on_fake_exit_codes(
    capsys, fake_brain_artifacts: Path, real_chest_artifacts: Path, images: dict[str, Path]
) -> None:
    png = str(images["png"])
    assert main(["scan", png, "--artifacts", str(fake_brain_artifacts), "--fail-on-fake"]) == 1
    assert main(["scan", png, "--artifacts", str(fake_brain_artifacts)]) == 0  # not asked
    assert main(["scan", png, "--artifacts", str(real_chest_artifacts), "--fail-on-fake"]) == 0
    # An unreadable file is an error: exit 2, even beside a fake (errors win over findings).
    args = [str(images["txt"]), "--artifacts", str(real_chest_artifacts), "--fail-on-fake"]
    assert main(["scan", *args]) == 2
    args = [png, str(images["txt"]), "--artifacts", str(fake_brain_artifacts), "--fail-on-fake"]
    assert main(["scan", *args]) == 2
    capsys.readouterr()


def test_localize_auto_only_runs_on_brain_and_always_runs_everywhere(
    capsys, real_chest_artifacts: Path, images: dict[str, Path]
) -> None:
    png, art = str(images["png"]), str(real_chest_artifacts)
    _, auto = _scan_json(capsys, png, "--artifacts", art)
    (row,) = auto["results"]
    assert row["class_name"] == "chest_real" and row["verdict"] == "real"
    assert row["manipulated"] is None and row["count"] is None  # chest: localizer not run

    _, always = _scan_json(capsys, png, "--artifacts", art, "--localize", "always")
    (row,) = always["results"]
    assert row["manipulated"] is False and row["count"] == 0 and row["boxes"] == []
    assert always["summary"] == {
        "files": 1,
        "fake": 0,
        "manipulated": 0,
        "uncertain": 0,
        "errors": 0,
    }
    assert (row["verdict"], row["localizer_verdict"]) == ("real", "untouched")


def test_out_of_distribution_is_uncertain_in_every_format_and_does_not_fail(
    capsys, tmp_path: Path, unlike_artifacts: Path, images: dict[str, Path]
) -> None:
    png, art = str(images["png"]), str(unlike_artifacts)
    code, report = _scan_json(capsys, png, "--artifacts", art, "--fail-on-fake")
    assert code == 0  # uncertain is neither fake nor manipulated
    (row,) = report["results"]
    assert report["summary"] == {
        "files": 1,
        "fake": 0,
        "manipulated": 0,
        "uncertain": 1,
        "errors": 0,
    }
    assert (row["verdict"], row["in_distribution"], row["in_distribution_score"]) == (
        "uncertain",
        False,
        0.0,
    )
    assert row["class_name"] == "brain_fake"  # the paper's fields keep the model's call
    assert row["reason"].startswith("The image is unlike every image the model was trained on")
    assert (row["localizer_verdict"], row["manipulated"], row["count"]) == ("uncertain", True, 0)
    assert row["message"].startswith("Uncertain, no boxes")
    assert main(["scan", png, "--artifacts", art]) == 0
    table = capsys.readouterr().out.splitlines()
    (png_line,) = [line for line in table if "brain.png" in line]
    assert png_line.split()[1:] == ["brain", "uncertain", "0.999", "0.00", "uncertain", "0"]
    assert table[-1] == "1 file, 0 fake, 0 manipulated, 1 uncertain, 0 errors"
    out_file = tmp_path / "r.csv"
    assert main(["scan", png, "--artifacts", art, "--format", "csv", "-o", str(out_file)]) == 0
    (record,) = csv.DictReader(io.StringIO(out_file.read_text()))
    assert (record["verdict"], record["in_distribution"], record["localizer_verdict"]) == (
        "uncertain",
        "False",
        "uncertain",
    )
    capsys.readouterr()


def test_thr_above_the_density_hides_boxes_but_not_presence(
    capsys, fake_brain_artifacts: Path, images: dict[str, Path]
) -> None:
    _, report = _scan_json(
        capsys, str(images["png"]), "--artifacts", str(fake_brain_artifacts), "--thr", "0.999"
    )
    (row,) = report["results"]
    assert row["manipulated"] is True and row["count"] == 0
    assert "lower thr" in row["message"]


def test_folder_scan_recursive_and_batched(
    capsys, tmp_path: Path, fake_brain_artifacts: Path
) -> None:
    root = tmp_path / "study"
    (root / "series" / "deeper").mkdir(parents=True)
    sizes = {
        root / "a.png": (64, 40),
        root / "series" / "b.png": (50, 70),
        root / "series" / "c.tif": (33, 33),
        root / "series" / "deeper" / "d.png": (80, 60),
        root / "series" / "deeper" / "e.jpeg": (45, 90),
    }
    for i, (path, (w, h)) in enumerate(sizes.items()):
        Image.fromarray(_gray(w, h, i)).save(path)
    Image.fromarray(_gray(20, 20, 9)).save(root / ".hidden.png")
    (root / "README.md").write_text("not scanned: not an image extension\n")

    _, flat = _scan_json(capsys, str(root), "--artifacts", str(fake_brain_artifacts))
    assert [Path(r["file"]).name for r in flat["results"]] == ["a.png"]

    art = str(fake_brain_artifacts)
    _, deep = _scan_json(capsys, str(root), "-r", "--artifacts", art, "--batch-size", "2")
    got = {Path(r["file"]): (r["width"], r["height"]) for r in deep["results"]}
    assert got == sizes  # every file once, in its own row, across batches of 2
    assert deep["summary"] == {
        "files": 5,
        "fake": 5,
        "manipulated": 5,
        "uncertain": 0,
        "errors": 0,
    }


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["scan", "/no/such/file.png"], "no such file"),
        (["scan", "{png}", "--artifacts", "{tmp}/empty"], "artifact"),
        (["scan", "{png}", "--thr", "1.5"], "--thr"),
        (["scan", "{png}", "--device", "abacus"], "--device"),
        (["scan", "{png}", "--format", "xml"], "invalid choice"),
        (["scan", "{tmp}/nested"], "--recursive"),
        (["scan", "{png}", "--resume"], "--resume needs --format jsonl"),
        ([], "usage"),
    ],
)
def test_usage_errors_exit_2_with_a_message(
    capsys, tmp_path: Path, images: dict[str, Path], args: list[str], message: str
) -> None:
    (tmp_path / "nested" / "inner").mkdir(parents=True)
    args = [a.format(png=images["png"], tmp=tmp_path) for a in args]
    with pytest.raises(SystemExit) as exc_info:
        raise SystemExit(main(args))
    assert exc_info.value.code == 2
    assert message in capsys.readouterr().err


def test_missing_localizer_is_fine_with_localize_never(
    capsys, tmp_path: Path, fake_brain_artifacts: Path, images: dict[str, Path]
) -> None:
    only_clf = tmp_path / "only_clf"
    only_clf.mkdir()
    (only_clf / "synthesis8").symlink_to(fake_brain_artifacts / "synthesis8")
    png = str(images["png"])
    assert main(["scan", png, "--artifacts", str(only_clf)]) == 2
    assert "manipulation_density" in capsys.readouterr().err
    code, report = _scan_json(capsys, png, "--artifacts", str(only_clf), "--localize", "never")
    assert code == 0 and report["results"][0]["manipulated"] is None


def test_console_script_help_and_version() -> None:
    script = Path(sys.executable).with_name("medfakedet")
    if not script.exists():
        pytest.skip("the medfakedet console script is not installed in this environment")
    out = subprocess.run([script, "--help"], capture_output=True, text=True, timeout=60)
    assert (
        out.returncode == 0
        and "scan" in out.stdout
        and "not for clinical use" in (out.stdout.lower())
    )
    out = subprocess.run([script, "version"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and out.stdout.startswith("medfakedet 0.")


def test_rows_carry_the_file_and_model_hashes_and_uncertain_can_fail(
    capsys, tmp_path: Path, unlike_artifacts: Path, images: dict[str, Path]
) -> None:
    import hashlib

    png, art = images["png"], str(unlike_artifacts)
    _, report = _scan_json(capsys, str(png), "--artifacts", art)
    (row,) = report["results"]
    assert row["sha256"] == hashlib.sha256(png.read_bytes()).hexdigest()
    for kind, key in (("synthesis8", "model_sha256"), ("manipulation_density", "localizer_sha256")):
        weights = unlike_artifacts / kind / "model.safetensors"
        assert row[key] == hashlib.sha256(weights.read_bytes()).hexdigest()
    assert main(["scan", str(png), "--artifacts", art, "--fail-on-fake"]) == 0
    assert main(["scan", str(png), "--artifacts", art, "--fail-on-uncertain"]) == 1
    capsys.readouterr()


def test_html_report_offline_holds_pictures_and_hashes(
    capsys, tmp_path: Path, fake_brain_artifacts: Path, images: dict[str, Path]
) -> None:
    out = tmp_path / "audit.html"
    args = [str(images["png"]), str(images["jpg"]), "--artifacts", str(fake_brain_artifacts)]
    assert main(["scan", *args, "--format", "html", "-o", str(out)]) == 0
    text = out.read_text()
    assert "http://" not in text and "https://" not in text  # nothing to fetch
    assert text.count("data:image/png;base64,") == 4  # a preview and a heatmap per file
    assert text.count("<rect ") == 2  # the one whole-image box of each file
    assert '<rect x="0" y="0" width="200" height="150"' in text
    assert "density heatmap" in text
    assert hashlib_of(images["png"]) in text
    capsys.readouterr()


def hashlib_of(path: Path) -> str:
    import hashlib

    return hashlib.sha256(path.read_bytes()).hexdigest()
