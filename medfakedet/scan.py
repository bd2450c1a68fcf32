"""What ``medfakedet scan`` does with files: find them, run them through the models in-process
and keep one :class:`ScanRow` per file (:mod:`medfakedet.scan_server` does the same through a
running service).

Results are read through the response models of :mod:`medfakedet.schema`, the same contract the
service declares, whichever way they were produced.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from medfakedet.hashing import file_sha256
from medfakedet.schema import (
    DensityParams,
    DensityResult,
    PredictionError,
    Synthesis8Result,
    read_result,
)

#: Extensions picked up inside folders (files named explicitly are always scanned). DICOM files
#: often have no extension at all, so extension-less files are included too.
IMAGE_SUFFIXES = frozenset(
    {".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp", ".dcm", ".dicom", ".ima"}
)
BATCH_SIZE = 16


class UsageError(Exception):
    """Bad command line or environment: printed as ``medfakedet: error: ...``, exit code 2."""


@dataclass
class ScanRow:
    """The audit of one file: the results of both models, or why there are none."""

    file: str
    error: str | None = None
    synthesis: Synthesis8Result | None = None
    localization: DensityResult | None = None
    image: dict[str, Any] = field(default_factory=dict)  # width, height, format when known
    sha256: str | None = None  # of the file's bytes
    #: base64 PNGs for the HTML report (preview_png, heatmap_png, heatmap: what it shows);
    #: never in the JSON/CSV rows
    visuals: dict[str, str] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """A flat JSON-ready record (density PNGs are never included)."""
        s, loc = self.synthesis, self.localization
        return {
            "file": self.file,
            "status": "error" if self.error else "ok",
            "error": self.error,
            "organ": s.organ if s else None,
            "class_name": s.class_name if s else None,
            "verdict": s.verdict if s else None,
            "in_distribution": s.in_distribution if s else None,
            "in_distribution_score": s.in_distribution_score if s else None,
            "reason": s.reason if s else None,
            "fake_probability": s.fake_probability if s else None,
            "localizer_verdict": loc.verdict if loc else None,
            "localizer_in_distribution_score": loc.in_distribution_score if loc else None,
            "manipulated": loc.is_manipulated if loc else None,
            "presence_score": loc.presence_score if loc else None,
            "count": loc.count if loc else None,
            "boxes": [b.model_dump() for b in loc.boxes] if loc else None,
            "message": loc.message if loc else None,
            "probabilities": s.probabilities.model_dump() if s else None,
            "model_version": s.model_version if s else None,
            "localizer_version": loc.model_version if loc else None,
            "sha256": self.sha256,
            "model_sha256": s.model_sha256 if s else None,
            "localizer_sha256": loc.model_sha256 if loc else None,
            "width": self.image.get("width"),
            "height": self.image.get("height"),
            "format": self.image.get("format"),
        }


def collect_files(paths: Sequence[str | Path], recursive: bool = False) -> list[Path]:
    """Expand ``paths``: files as given, folders by their image files (sorted, no hidden files).

    Raises:
        UsageError: a path does not exist, or a folder is given without ``recursive`` and
            holds nothing but sub-folders.
    """
    files: list[Path] = []
    for raw in paths:
        path = Path(raw)
        if path.is_file():
            files.append(path)
        elif path.is_dir():
            walk = path.rglob("*") if recursive else path.iterdir()
            found = sorted(
                p
                for p in walk
                if p.is_file()
                and not any(part.startswith(".") for part in p.relative_to(path).parts)
                and (p.suffix.lower() in IMAGE_SUFFIXES or p.suffix == "")
            )
            if not found and not recursive and any(p.is_dir() for p in path.iterdir()):
                raise UsageError(f"{path} holds only folders; add --recursive to scan them")
            files.extend(found)
        else:
            raise UsageError(f"{path}: no such file or folder")
    # The same file named twice (a file and its folder) is scanned once.
    seen: set[Path] = set()
    unique = []
    for f in files:
        key = f.resolve()
        if key not in seen:
            seen.add(key)
            unique.append(f)
    return unique


def wants_localization(localize: str, synthesis: Synthesis8Result | None) -> bool:
    """Whether to run the localizer: ``always``, ``never``, or (``auto``) on brain images, the
    only organ it was trained on."""
    if localize == "always":
        return True
    if localize == "never" or synthesis is None:
        return False
    return synthesis.organ == "brain"


def keep_visuals(row: ScanRow, result: dict, heatmap: str) -> dict:
    """Move the pictures of a result (preview, heatmap) into ``row.visuals``; the rest is the
    endpoint's plain result. ``heatmap`` names what its heatmap shows (e.g. "Grad-CAM")."""
    result = dict(result)
    result.pop("explanation", None)
    result.pop("density_png", None)
    if "preview_png" in result:
        row.visuals["preview_png"] = result.pop("preview_png")
    if "heatmap_png" in result:
        row.visuals["heatmap_png"] = result.pop("heatmap_png")
        row.visuals["heatmap"] = heatmap
    return result


class OfflineScanner:
    """Runs the artifacts in-process, ``batch_size`` files per forward pass.

    ``visuals``: also keep a preview and a heatmap per file (the density overlay where the
    localizer ran, else the classifier's Grad-CAM) for the HTML report.
    """

    def __init__(
        self,
        artifacts: Path,
        *,
        localize: str,
        device: str = "auto",
        thr: float | None = None,
        min_area: int | None = None,
        batch_size: int = BATCH_SIZE,
        visuals: bool = False,
    ) -> None:
        # heavy (torch): only offline scans pay for it
        from medfakedet.artifacts import ArtifactError
        from medfakedet.predictors import DensityPredictor, Synthesis8Predictor
        from medfakedet.runtime import select_device

        try:
            device = select_device(device)
        except (ValueError, RuntimeError) as e:
            raise UsageError(f"--device: {e}") from None
        self.batch_size = max(1, batch_size)
        self.localize = localize
        self.visuals = visuals
        try:
            self.classifier = Synthesis8Predictor.from_artifact(artifacts / "synthesis8", device)
            self.localizer = None
            if localize != "never":
                self.localizer = DensityPredictor.from_artifact(
                    artifacts / "manipulation_density", device
                )
        except ArtifactError as e:
            raise UsageError(
                f"{e}\nTrain the models first (make train), point --artifacts at the folder "
                "holding synthesis8/ and manipulation_density/, or scan through --server URL."
            ) from None
        self.params = None
        if self.localizer is not None and (thr is not None or min_area is not None or visuals):
            d = self.localizer.defaults
            try:
                self.params = DensityParams(
                    threshold=d.threshold if thr is None else thr,
                    min_area=d.min_area if min_area is None else min_area,
                    return_density=visuals,
                )
            except ValueError as e:
                raise UsageError(str(e)) from None

    def scan(self, files: Sequence[Path]) -> Iterator[ScanRow]:
        """One row per file, a batch at a time, in the order of ``files``."""
        for start in range(0, len(files), self.batch_size):
            yield from self._scan_batch(files[start : start + self.batch_size])

    def _scan_batch(self, files: Sequence[Path]) -> list[ScanRow]:
        from medfakedet.imaging import ImageDecodeError, load_image_file

        rows = [ScanRow(file=str(f)) for f in files]
        images = {}
        for i, (path, row) in enumerate(zip(files, rows, strict=True)):
            try:
                row.sha256 = file_sha256(path)
                im = load_image_file(path)  # decoded once, used by both models
            except ImageDecodeError as e:
                row.error = str(e)
            except OSError as e:
                row.error = f"cannot read the file: {e.strerror or e}"
            else:
                images[i] = im
                row.image = {"width": im.width, "height": im.height, "format": im.format}

        def run(indices: list[int], predict: Callable[[list], list], endpoint: str, attr: str):
            if not indices:
                return
            for i, result in zip(indices, predict([images[i] for i in indices]), strict=True):
                if isinstance(result, PredictionError):
                    rows[i].error = result.message
                else:
                    heatmap = "density" if attr == "localization" else "Grad-CAM"
                    plain = keep_visuals(rows[i], result, heatmap)
                    setattr(rows[i], attr, read_result(endpoint, plain))

        def classify(items: list) -> list:
            flags = [self.visuals] * len(items)
            return self.classifier.answer(items, flags, flags)

        run(list(images), classify, "synthesis8", "synthesis")
        wanted = [i for i in images if wants_localization(self.localize, rows[i].synthesis)]
        if self.localizer is not None:
            params = None if self.params is None else [self.params] * len(wanted)
            predict = lambda items: self.localizer.predict(items, params)  # noqa: E731
            run(wanted, predict, "manipulation_density", "localization")
        return rows
