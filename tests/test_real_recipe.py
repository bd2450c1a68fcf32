"""``make train-real REAL_DIR=...``: the pipeline's real-folder build, per-trainer ``--set``,
the *_real presets, and ``make serve`` choosing the real-scan models when they exist."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

from training.pipeline import main, needs_build, task_overrides, trainer_configs

REPO = Path(__file__).resolve().parents[1]


def test_set_items_reach_both_trainers_or_the_named_one() -> None:
    items = ["epochs=2", "synthesis8.init=scratch", "localizer.crop-size=32"]
    assert task_overrides(items, "synthesis8") == {"epochs": "2", "init": "scratch"}
    assert task_overrides(items, "localizer") == {"epochs": "2", "crop_size": "32"}
    with pytest.raises(ValueError, match="scope 'synth' is none of synthesis8, localizer"):
        task_overrides(["synth.epochs=2"], "synthesis8")


def test_real_presets_resolve_with_overrides() -> None:
    configs = trainer_configs("real", ["epochs=2", "localizer.max_minutes=null"])
    s8, loc = configs["synthesis8"], configs["manipulation_density"]
    assert (s8.epochs, loc.epochs) == (2, 2)
    assert s8.split_mode == "group"  # fakes stay in the split of the real they came from
    assert s8.max_minutes == 10.0 and loc.max_minutes is None
    # Both degrade training images so that re-encoding carries no label.
    assert min(s8.aug_jpeg_p, loc.aug_jpeg_p, s8.aug_resize_p, loc.aug_resize_p) > 0
    assert s8.init == loc.init == "scratch"
    with pytest.raises(ValueError, match="unknown config key"):
        trainer_configs("real", ["localizer.no_such_key=1"])


def write_build(folder: Path, real_dir: str | None, build_json: bool = True) -> None:
    """The folders ``has_data`` looks for, and the builder's ``build.json``."""
    (folder / "medfake").mkdir(parents=True)
    (folder / "medfakeinpaint" / "images").mkdir(parents=True)
    if build_json:
        args = {"real_dir": real_dir, "per_class": 200, "seed": 42}  # as the builder writes it
        (folder / "build.json").write_text(json.dumps({"args": args, "seconds": 1.0}))


def test_data_is_rebuilt_only_for_another_real_folder(tmp_path: Path) -> None:
    real = tmp_path / "scans"
    real.mkdir()
    assert needs_build(tmp_path / "absent", real)
    embedded, from_real = tmp_path / "embedded", tmp_path / "real"
    write_build(embedded, None)
    write_build(from_real, str(real))
    assert not needs_build(embedded, None)
    assert needs_build(embedded, real)
    assert not needs_build(from_real, real)
    assert needs_build(from_real, tmp_path / "other")
    assert needs_build(from_real, None)
    foreign = tmp_path / "paper"  # a dataset the builder did not write (no build.json)
    write_build(foreign, None, build_json=False)
    assert not needs_build(foreign, None)
    with pytest.raises(ValueError, match="not built from"):
        needs_build(foreign, real)


def test_pipeline_cli_refuses_bad_options_before_building(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    for argv, message in (
        (["--real-dir", str(tmp_path / "none")], "is not a folder"),
        (["--real-dir", str(tmp_path), "--set", "epochs=x"], "expects int"),
        (["--config", "real", "--set", "synthesis8.init=imagenet.onnx"], "state-dict file"),
    ):
        with pytest.raises(SystemExit) as exit_:
            main(["--data", str(tmp_path / "data"), *argv])
        assert exit_.value.code == 2
        assert message in capsys.readouterr().err
    assert not (tmp_path / "data").exists()


def serve_artifacts(*args: str, env: dict[str, str] | None = None) -> str:
    """The folder ``make serve`` archives from, as the Makefile resolves it."""
    out = subprocess.run(
        ["make", "-s", "--no-print-directory", "--eval", "pp: ; @echo $(SERVE_ARTIFACTS)", "pp",
         *args],
        cwd=REPO, capture_output=True, text=True, check=True, env=env,
    )  # fmt: skip
    return out.stdout.strip()


@pytest.mark.skipif(shutil.which("make") is None, reason="make is not installed")
def test_serve_prefers_the_real_scan_models_when_both_exist(tmp_path: Path) -> None:
    real = tmp_path / "artifacts-real"
    flag = f"REAL_ARTIFACTS={real}"
    assert serve_artifacts(flag) == "artifacts"  # none yet: the defaults
    (real / "synthesis8").mkdir(parents=True)
    (real / "synthesis8" / "artifact.json").write_text("{}")
    assert serve_artifacts(flag) == "artifacts"  # one model only: the defaults
    (real / "manipulation_density").mkdir()
    (real / "manipulation_density" / "artifact.json").write_text("{}")
    assert serve_artifacts(flag) == str(real)
    assert serve_artifacts(flag, "ARTIFACTS=mine") == "mine"  # an explicit choice wins
