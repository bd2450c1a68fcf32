"""External checks: run a trained artifact, as served, over a folder of image files laid out by
organ (``brain/ chest/ kidney/ lung/``, PNG or JPEG), and count its answers per organ.

``python -m training.external --artifact artifacts-real/synthesis8 --folder
../shared/data/real-val --truth real [--out report.json]``

Measurement only: these folders (real scans from other sources, outputs of published
generators) are never trained or calibrated on. Each file goes through the served path
(:mod:`medfakedet.predictors`: decoding, preprocessing, in-distribution check, verdict), so the
shares are what a user of ``/predictions`` would have been answered. Read the share of fakes
called fake next to the share of real scans called fake: a model that calls everything fake
catches every fake.

synthesis8: per organ, the shares answered ``fake`` / ``real`` / ``uncertain``, the raw call
(the paper's ``is_fake``) and the organ accuracy. The localizer: its ``brain/`` images only,
shares answered ``manipulated`` / ``untouched`` / ``uncertain`` (on untouched real scans,
``manipulated`` is the false-alarm rate).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from medfakedet.artifacts import ArtifactError, load_artifact
from medfakedet.labels import ORGANS
from medfakedet.predictors import DensityPredictor, Synthesis8Predictor
from medfakedet.runtime import select_device, setup_threads
from medfakedet.schema import PredictionError
from medfakedet.verdict import DENSITY_VERDICTS, SYNTHESIS8_VERDICTS
from training.common import progress, write_json
from training.report import format_value

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp", ".dcm")
TRUTHS = ("real", "fake")
_CHUNK = 16


def organ_files(folder: Path) -> dict[str, list[Path]]:
    """The image files of each organ sub-folder that exists (sorted; others are skipped)."""
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder} is not a folder (expected {'/ '.join(ORGANS)}/)")
    found = {}
    for organ in ORGANS:
        files = sorted(
            p for p in (folder / organ).glob("*") if p.suffix.lower() in IMAGE_SUFFIXES
        ) if (folder / organ).is_dir() else []  # fmt: skip
        if files:
            found[organ] = files
    if not found:
        raise FileNotFoundError(
            f"no images in {folder}: expected sub-folders {', '.join(ORGANS)} holding "
            f"{', '.join(IMAGE_SUFFIXES)} files"
        )
    return found


def _counts(results: list[dict | PredictionError], organ: str, verdicts: Sequence[str]) -> dict:
    ok = [r for r in results if not isinstance(r, PredictionError)]
    n = max(len(ok), 1)
    row: dict[str, Any] = {"images": len(results), "unreadable": len(results) - len(ok)}
    for v in verdicts:
        row[f"answered {v}"] = sum(r["verdict"] == v for r in ok) / n
    if ok and "organ" in ok[0]:
        row["called fake (raw)"] = sum(bool(r["is_fake"]) for r in ok) / n
        row["organ accuracy"] = sum(r["organ"] == organ for r in ok) / n
    elif ok:
        row["flagged (raw)"] = sum(bool(r["is_manipulated"]) for r in ok) / n
    return row


def external_check(
    artifact_dir: str | Path,
    folder: str | Path,
    truth: str,
    device: str = "auto",
    show_progress: bool = False,
    every: int = 1,
) -> dict[str, Any]:
    """Answers of the artifact on every image of ``folder`` (``truth``: what they all are, real
    or fake), per organ and over all: ``{"by_organ": {organ: row}, "all": row, ...}``;
    ``every``: only every n-th file of each organ (sorted by name), to save time."""
    if truth not in TRUTHS:
        raise ValueError(f"truth must be one of {TRUTHS}, got {truth!r}")
    files = organ_files(Path(folder))
    dev = select_device(device)
    artifact = load_artifact(artifact_dir, dev)
    if artifact.task == "synthesis8":
        predictor, verdicts = Synthesis8Predictor(artifact, dev), SYNTHESIS8_VERDICTS
        organs: Sequence[str] = ORGANS
    else:
        predictor, verdicts = DensityPredictor(artifact, dev), DENSITY_VERDICTS
        organs = ("brain",)
    files = {o: files[o][::every] for o in organs if o in files}
    if not files:
        raise FileNotFoundError(f"no {' or '.join(organs)} images in {folder}")
    by_organ, answered = {}, []
    for organ, paths in files.items():
        results: list[dict | PredictionError] = []
        chunks = range(0, len(paths), _CHUNK)
        for start in progress(chunks, show_progress, desc=f"{truth} {organ}", leave=False):
            results += predictor.predict([p.read_bytes() for p in paths[start : start + _CHUNK]])
        by_organ[organ] = _counts(results, organ, verdicts)
        answered += [(r, organ) for r in results]
    overall = _counts([r for r, _ in answered], "", verdicts)
    if artifact.task == "synthesis8":  # the organ accuracy over all organs
        ok = [(r, o) for r, o in answered if not isinstance(r, PredictionError)]
        overall["organ accuracy"] = sum(r["organ"] == o for r, o in ok) / max(len(ok), 1)
    return {
        "task": artifact.task,
        "artifact": str(artifact_dir),
        "folder": str(folder),
        "truth": truth,
        "every": every,
        "by_organ": by_organ,
        "all": overall,
    }


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--artifact", required=True, help="artifact folder (artifact.json + weights)")
    p.add_argument("--folder", required=True, type=Path, help="folder with organ sub-folders")
    p.add_argument("--truth", required=True, choices=TRUTHS, help="what every image there is")
    p.add_argument("--out", type=Path, help="also write the result as JSON here")
    p.add_argument("--device", default="auto")
    p.add_argument("--quiet", action="store_true")
    args = p.parse_args(argv)
    setup_threads()
    try:
        result = external_check(args.artifact, args.folder, args.truth, args.device, not args.quiet)
    except (FileNotFoundError, ValueError, ArtifactError) as e:
        p.error(str(e))
    if args.out:
        write_json(args.out, result)
    for organ, row in [*result["by_organ"].items(), ("all", result["all"])]:
        cells = ", ".join(f"{k} {format_value(v)}" for k, v in row.items())
        print(f"{organ:>7}: {cells}", file=sys.stdout)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
