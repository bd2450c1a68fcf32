"""What ``medfakedet scan`` does with files: find them, run them through the models (in-process
or through a running service) and keep one :class:`ScanRow` per file.

Results are read through the response models of :mod:`medfakedet.schema`, the same contract the
service declares, whichever way they were produced.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from medfakedet.schema import (
    DensityParams,
    DensityResult,
    PredictionError,
    ResultError,
    Synthesis8Result,
    error_message,
    read_result,
)

#: Extensions picked up inside folders (files named explicitly are always scanned). DICOM files
#: often have no extension at all, so extension-less files are included too.
IMAGE_SUFFIXES = frozenset(
    {".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp", ".dcm", ".dicom", ".ima"}
)
BATCH_SIZE = 16


class UsageError(Exception):
    """Bad command line or environment: printed as ``medfakedet: error: ...``, exit code 1."""


@dataclass
class ScanRow:
    """The audit of one file: the results of both models, or why there are none."""

    file: str
    error: str | None = None
    synthesis: Synthesis8Result | None = None
    localization: DensityResult | None = None
    image: dict[str, Any] = field(default_factory=dict)  # width, height, format when known

    @property
    def is_fake(self) -> bool:
        """The verdict is ``fake`` (an ``uncertain`` answer is not)."""
        return bool(self.synthesis and self.synthesis.verdict == "fake")

    @property
    def is_manipulated(self) -> bool:
        """The localizer's verdict is ``manipulated``."""
        return bool(self.localization and self.localization.verdict == "manipulated")

    @property
    def is_uncertain(self) -> bool:
        """Either model answered ``uncertain``."""
        answers = (self.synthesis, self.localization)
        return any(a is not None and a.verdict == "uncertain" for a in answers)

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


class OfflineScanner:
    """Runs the artifacts in-process, ``batch_size`` files per forward pass."""

    def __init__(
        self,
        artifacts: Path,
        *,
        localize: str,
        device: str = "auto",
        thr: float | None = None,
        min_area: int | None = None,
        batch_size: int = BATCH_SIZE,
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
        if self.localizer is not None and (thr is not None or min_area is not None):
            d = self.localizer.defaults
            try:
                self.params = DensityParams(
                    threshold=d.threshold if thr is None else thr,
                    min_area=d.min_area if min_area is None else min_area,
                )
            except ValueError as e:
                raise UsageError(str(e)) from None

    def scan(self, files: Sequence[Path], progress: Callable[[int], None]) -> list[ScanRow]:
        rows: list[ScanRow] = []
        for start in range(0, len(files), self.batch_size):
            chunk = files[start : start + self.batch_size]
            rows.extend(self._scan_batch(chunk))
            progress(len(chunk))
        return rows

    def _scan_batch(self, files: Sequence[Path]) -> list[ScanRow]:
        from medfakedet.imaging import ImageDecodeError, load_image_file

        rows = [ScanRow(file=str(f)) for f in files]
        images = {}
        for i, (path, row) in enumerate(zip(files, rows, strict=True)):
            try:
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
                    setattr(rows[i], attr, read_result(endpoint, result))

        run(list(images), self.classifier.predict, "synthesis8", "synthesis")
        wanted = [i for i in images if wants_localization(self.localize, rows[i].synthesis)]
        if self.localizer is not None:
            params = None if self.params is None else [self.params] * len(wanted)
            predict = lambda items: self.localizer.predict(items, params)  # noqa: E731
            run(wanted, predict, "manipulation_density", "localization")
        return rows


class ServerScanner:
    """POSTs each file to a running service (nginx or TorchServe with nginx's paths)."""

    def __init__(
        self,
        url: str,
        *,
        localize: str,
        thr: float | None = None,
        min_area: int | None = None,
        timeout: float = 60.0,
    ) -> None:
        import requests

        self.requests = requests
        self.session = requests.Session()
        self.url = url.rstrip("/")
        if not self.url.startswith(("http://", "https://")):
            raise UsageError(f"--server must be an http(s) URL, got {url!r}")
        self.localize = localize
        self.timeout = timeout
        self.form: dict[str, str] = {}
        if thr is not None:
            self.form["thr"] = repr(float(thr))
        if min_area is not None:
            self.form["min_area"] = str(int(min_area))

    def _post(self, endpoint: str, name: str, data: bytes, form: dict[str, str]):
        """One request: the endpoint's result model, or an error message (str)."""
        try:
            r = self.session.post(
                f"{self.url}/detect/{endpoint}",
                files={"image": (name, data, "application/octet-stream")},
                data=form,
                timeout=self.timeout,
            )
        except self.requests.ConnectionError as e:
            raise UsageError(f"cannot reach the server at {self.url}: {e}") from None
        except self.requests.Timeout:
            return f"{endpoint}: no answer within {self.timeout:g} s"
        try:
            body = r.json()
        except ValueError:
            body = None
        if r.status_code != 200:
            message = error_message(body) or r.text.strip()[:200] or r.reason
            return f"{endpoint}: HTTP {r.status_code}: {message}"
        try:
            return read_result(endpoint, body)
        except ResultError as e:
            return f"unexpected answer from {self.url}: {e}"

    def scan(self, files: Sequence[Path], progress: Callable[[int], None]) -> list[ScanRow]:
        rows = []
        for path in files:
            rows.append(self._scan_one(path))
            progress(1)
        return rows

    def _scan_one(self, path: Path) -> ScanRow:
        row = ScanRow(file=str(path))
        try:
            data = path.read_bytes()
        except OSError as e:
            row.error = f"cannot read the file: {e.strerror or e}"
            return row
        result = self._post("synthesis8", path.name, data, {})
        if isinstance(result, str):
            row.error = result
            return row
        row.synthesis = result
        if wants_localization(self.localize, result):
            loc = self._post("manipulation_density", path.name, data, self.form)
            if isinstance(loc, str):
                row.error = loc
            else:
                row.localization = loc
                row.image = {"width": loc.image_size.width, "height": loc.image_size.height}
        return row
