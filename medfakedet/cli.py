"""``medfakedet``: audit image files for synthesis and local manipulation.

    medfakedet scan PATH... [--server URL] [--recursive] [--format table|json|csv]
                            [--output FILE] [--artifacts DIR] [--localize auto|always|never]
                            [--thr T] [--min-area N] [--fail-on-fake]
    medfakedet version

Offline (default) the trained artifacts in ``--artifacts`` are loaded in-process; with
``--server`` every file is POSTed to a running MedFakeDet service. Each file gets one row:
predicted class, P(fake), and (for brain images with ``--localize auto``, or every image with
``always``) whether it looks locally manipulated and how many boxes were found. A file that cannot
be read or decoded is an error row, never a crash.

Exit codes: 0 done; 1 usage or setup error (bad option, missing path, missing artifacts,
unreachable server); 2 with ``--fail-on-fake`` when any file is fake or manipulated.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import sys
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NoReturn

from medfakedet import __version__
from medfakedet.labels import CLASS_NAMES

EXIT_OK, EXIT_USAGE, EXIT_FAKE = 0, 1, 2
#: Extensions picked up inside folders (files named explicitly are always scanned). DICOM files
#: often have no extension at all, so extension-less files are included too.
IMAGE_SUFFIXES = frozenset(
    {".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp", ".dcm", ".dicom", ".ima"}
)
BATCH_SIZE = 16
PROGRESS_MIN_FILES = 8
CSV_COLUMNS = (
    "file",
    "status",
    "error",
    "organ",
    "class_name",
    "verdict",
    "fake_probability",
    "manipulated",
    "presence_score",
    "count",
    "boxes",
    "width",
    "height",
    "format",
    *(f"p_{name}" for name in CLASS_NAMES),
)


class UsageError(Exception):
    """Bad command line or environment: printed as ``medfakedet: error: ...``, exit code 1."""


class _Parser(argparse.ArgumentParser):
    """argparse exits with 2 on bad usage; 2 means "fake found" here, so usage errors exit 1."""

    def error(self, message: str) -> NoReturn:
        self.print_usage(sys.stderr)
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message}\n")


# ------------------------------------------------------------------------------------- results
@dataclass
class ScanRow:
    """The audit of one file; ``synthesis`` / ``localization`` are the services' result dicts."""

    file: str
    error: str | None = None
    synthesis: dict[str, Any] | None = None
    localization: dict[str, Any] | None = None
    image: dict[str, Any] = field(default_factory=dict)  # width, height, format when known

    @property
    def is_fake(self) -> bool:
        return bool(self.synthesis and self.synthesis["is_fake"])

    @property
    def is_manipulated(self) -> bool:
        return bool(self.localization and self.localization["is_manipulated"])

    def to_dict(self) -> dict[str, Any]:
        """A flat JSON-ready record (density PNGs are never included)."""
        s, loc = self.synthesis or {}, self.localization or {}
        return {
            "file": self.file,
            "status": "error" if self.error else "ok",
            "error": self.error,
            "organ": s.get("organ"),
            "class_name": s.get("class_name"),
            "verdict": None if not s else ("fake" if s["is_fake"] else "real"),
            "fake_probability": s.get("fake_probability"),
            "manipulated": loc.get("is_manipulated") if loc else None,
            "presence_score": loc.get("presence_score"),
            "count": loc.get("count"),
            "boxes": loc.get("boxes"),
            "message": loc.get("message"),
            "probabilities": s.get("probabilities"),
            "model_version": s.get("model_version"),
            "localizer_version": loc.get("model_version"),
            "width": self.image.get("width"),
            "height": self.image.get("height"),
            "format": self.image.get("format"),
        }


@dataclass(frozen=True)
class Summary:
    files: int
    fake: int
    manipulated: int
    errors: int

    @classmethod
    def of(cls, rows: Sequence[ScanRow]) -> Summary:
        return cls(
            files=len(rows),
            fake=sum(r.is_fake for r in rows),
            manipulated=sum(r.is_manipulated for r in rows),
            errors=sum(r.error is not None for r in rows),
        )

    def line(self) -> str:
        return (
            f"{self.files} file{'s' if self.files != 1 else ''}, {self.fake} fake, "
            f"{self.manipulated} manipulated, {self.errors} error{'s' if self.errors != 1 else ''}"
        )


# ------------------------------------------------------------------------------------ file list
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


def _wants_localization(localize: str, synthesis: dict[str, Any] | None) -> bool:
    if localize == "always":
        return True
    if localize == "never" or synthesis is None:
        return False
    return synthesis.get("organ") == "brain"  # the localizer was trained on brain MRI only


# --------------------------------------------------------------------------------- the scanners
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
        import torch  # heavy: only offline scans pay for it

        from medfakedet.artifacts import ArtifactError
        from medfakedet.predictors import DensityPredictor, Synthesis8Predictor
        from medfakedet.schema import DensityParams

        if device == "auto":
            device = "cuda:0" if torch.cuda.is_available() else "cpu"
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
        from medfakedet.schema import PredictionError

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

        def run(indices: list[int], predict: Callable[[list], list], attr: str) -> None:
            if not indices:
                return
            for i, result in zip(indices, predict([images[i] for i in indices]), strict=True):
                if isinstance(result, PredictionError):
                    rows[i].error = result.message
                else:
                    setattr(rows[i], attr, result)

        run(list(images), self.classifier.predict, "synthesis")
        wanted = [i for i in images if _wants_localization(self.localize, rows[i].synthesis)]
        if self.localizer is not None:
            params = None if self.params is None else [self.params] * len(wanted)
            run(wanted, lambda items: self.localizer.predict(items, params), "localization")
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

    def _post(self, endpoint: str, name: str, data: bytes, form: dict[str, str]) -> dict:
        """One request; an error response comes back as ``{"error": message}``."""
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
            return {"error": f"{endpoint}: no answer within {self.timeout:g} s"}
        try:
            body = r.json()
        except ValueError:
            body = None
        if r.status_code != 200 or not isinstance(body, dict):
            # Handlers answer {"error", "status"}; TorchServe itself {"code", "type", "message"}.
            message = (body.get("error") or body.get("message")) if isinstance(body, dict) else None
            message = message or (r.text.strip()[:200] or r.reason)
            return {"error": f"{endpoint}: HTTP {r.status_code}: {message}"}
        return body

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
        if "error" in result:
            row.error = result["error"]
            return row
        row.synthesis = result
        if _wants_localization(self.localize, result):
            loc = self._post("manipulation_density", path.name, data, self.form)
            if "error" in loc:
                row.error = loc["error"]
            else:
                row.localization = loc
                size = loc.get("image_size")
                if isinstance(size, dict):
                    row.image = {"width": size.get("width"), "height": size.get("height")}
        return row


# -------------------------------------------------------------------------------------- output
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


def format_table(rows: Sequence[ScanRow], summary: Summary) -> str:
    """A fixed-width table: file, organ, verdict, P(fake), manipulated, boxes; then the summary."""
    header = ("file", "organ", "verdict", "P(fake)", "manipulated", "boxes")
    body = []
    for row in rows:
        d = row.to_dict()
        if row.error:
            body.append((_shorten(row.file, 60), "-", "ERROR", "-", "-", "-", row.error))
            continue
        body.append(
            (
                _shorten(row.file, 60),
                _fmt(d["organ"]),
                _fmt(d["verdict"]).upper() if d["verdict"] == "fake" else _fmt(d["verdict"]),
                _fmt(d["fake_probability"]),
                _fmt(d["manipulated"]),
                _fmt(d["count"]),
                "",
            )
        )
    widths = [max([len(h)] + [len(b[i]) for b in body]) for i, h in enumerate(header)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(header, widths, strict=True)).rstrip()]
    lines.append("  ".join("-" * w for w in widths))
    for b in body:
        cells = "  ".join(c.ljust(w) for c, w in zip(b[:6], widths, strict=True))
        lines.append((cells + ("  " + b[6] if b[6] else "")).rstrip())
    lines.append("")
    lines.append(summary.line())
    return "\n".join(lines) + "\n"


def format_json(rows: Sequence[ScanRow], summary: Summary) -> str:
    doc = {
        "summary": {
            "files": summary.files,
            "fake": summary.fake,
            "manipulated": summary.manipulated,
            "errors": summary.errors,
        },
        "results": [r.to_dict() for r in rows],
    }
    return json.dumps(doc, indent=2) + "\n"


def format_csv(rows: Sequence[ScanRow]) -> str:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=CSV_COLUMNS, lineterminator="\n")
    writer.writeheader()
    for row in rows:
        d = row.to_dict()
        probs = d.pop("probabilities") or {}
        record = {k: d.get(k) for k in CSV_COLUMNS}
        record["boxes"] = json.dumps(d["boxes"]) if d["boxes"] is not None else None
        for name in CLASS_NAMES:
            record[f"p_{name}"] = probs.get(name)
        writer.writerow({k: "" if v is None else v for k, v in record.items()})
    return buf.getvalue()


# ------------------------------------------------------------------------------------- commands
def _progress_bar(total: int):
    from tqdm import tqdm

    # Only worth drawing for many files; tqdm writes to stderr, so stdout stays parseable.
    return tqdm(
        total=total, unit="file", desc="scan", file=sys.stderr, disable=total < PROGRESS_MIN_FILES
    )


def run_scan(args: argparse.Namespace) -> int:
    """The ``scan`` command; returns the exit code."""
    files = collect_files(args.paths, recursive=args.recursive)
    if not files:
        raise UsageError(
            "no image files found in "
            + ", ".join(map(str, args.paths))
            + " (looked for "
            + ", ".join(sorted(IMAGE_SUFFIXES))
            + " and files without an extension)"
        )
    if args.thr is not None and not 0.0 <= args.thr <= 1.0:
        raise UsageError(f"--thr must be between 0 and 1, got {args.thr}")
    if args.min_area is not None and args.min_area < 0:
        raise UsageError(f"--min-area must be >= 0, got {args.min_area}")
    if args.server:
        scanner: OfflineScanner | ServerScanner = ServerScanner(
            args.server,
            localize=args.localize,
            thr=args.thr,
            min_area=args.min_area,
            timeout=args.timeout,
        )
    else:
        scanner = OfflineScanner(
            Path(args.artifacts),
            localize=args.localize,
            device=args.device,
            thr=args.thr,
            min_area=args.min_area,
            batch_size=args.batch_size,
        )
    with _progress_bar(len(files)) as bar:
        rows = scanner.scan(files, bar.update)
    summary = Summary.of(rows)
    if args.format == "table":
        text = format_table(rows, summary)
    elif args.format == "json":
        text = format_json(rows, summary)
    else:
        text = format_csv(rows)
    if args.output:
        Path(args.output).write_text(text)
    else:
        sys.stdout.write(text)
    if args.output or args.format != "table":
        print(summary.line(), file=sys.stderr)  # the table carries its own summary
    if args.fail_on_fake and (summary.fake or summary.manipulated):
        return EXIT_FAKE
    return EXIT_OK


def run_version(_args: argparse.Namespace) -> int:
    print(f"medfakedet {__version__} (python {sys.version.split()[0]})")
    return EXIT_OK


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="medfakedet",
        description="Detect synthetic and locally manipulated medical images (MedFakeDet). "
        "Models trained on synthetic data are NOT for clinical use.",
    )
    parser.add_argument("--version", action="version", version=f"medfakedet {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)

    scan = sub.add_parser(
        "scan",
        help="audit image files and folders",
        description="Classify every file (organ, real/fake, P(fake)) and localize manipulation "
        "in brain images. Exit 0 when done, 1 on usage errors, 2 with --fail-on-fake when "
        "anything is fake or manipulated.",
    )
    scan.add_argument("paths", nargs="+", metavar="PATH", help="image files or folders")
    scan.add_argument("--server", metavar="URL", help="scan through a running service instead")
    scan.add_argument("-r", "--recursive", action="store_true", help="descend into sub-folders")
    scan.add_argument("--format", choices=("table", "json", "csv"), default="table")
    scan.add_argument("-o", "--output", metavar="FILE", help="write the report here")
    scan.add_argument(
        "--artifacts",
        default="artifacts",
        metavar="DIR",
        help="offline: folder with synthesis8/ and manipulation_density/ (default: %(default)s)",
    )
    scan.add_argument(
        "--localize",
        choices=("auto", "always", "never"),
        default="auto",
        help="run the manipulation localizer: on brain images (auto), on every image, or never",
    )
    scan.add_argument("--thr", type=float, help="box threshold on the density map (0..1)")
    scan.add_argument("--min-area", type=int, help="smallest box, in 128x128 model pixels")
    scan.add_argument(
        "--fail-on-fake", action="store_true", help="exit 2 if any file is fake or manipulated"
    )
    scan.add_argument("--device", default="auto", help="offline: cpu, cuda:0, ... (default auto)")
    scan.add_argument("--batch-size", type=int, default=BATCH_SIZE, help=argparse.SUPPRESS)
    scan.add_argument("--timeout", type=float, default=60.0, help="server mode: seconds/request")
    scan.set_defaults(func=run_scan)

    version = sub.add_parser("version", help="print the version")
    version.set_defaults(func=run_version)
    return parser


def main(argv: Iterable[str] | None = None) -> int:
    """Console entry point (``medfakedet``); returns the exit code."""
    parser = build_parser()
    args = parser.parse_args(None if argv is None else list(argv))
    if args.command is None:
        parser.print_help(sys.stderr)
        return EXIT_USAGE
    try:
        return args.func(args)
    except UsageError as e:
        print(f"medfakedet: error: {e}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("medfakedet: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
