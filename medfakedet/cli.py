"""``medfakedet``: audit image files for synthesis and local manipulation.

    medfakedet scan PATH... [--server URL] [--recursive] [--format table|json|csv]
                            [--output FILE] [--artifacts DIR] [--localize auto|always|never]
                            [--thr T] [--min-area N] [--fail-on-fake]
    medfakedet version

Offline (default) the trained artifacts in ``--artifacts`` are loaded in-process; with
``--server`` every file is POSTed to a running MedFakeDet service. Each file gets one row:
predicted class, the verdict (real / fake / uncertain), P(fake), the in-distribution score, and
(for brain images with ``--localize auto``, or every image with ``always``) the localizer's
verdict (manipulated / untouched / uncertain) and how many boxes were found. A file that cannot
be read or decoded is an error row, never a crash.

Exit codes: 0 done; 1 usage or setup error (bad option, missing path, missing artifacts,
unreachable server); 2 with ``--fail-on-fake`` when any verdict is fake or manipulated
(``uncertain`` answers do not count: they are listed in the summary).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import NoReturn

from medfakedet import __version__
from medfakedet.scan import (
    BATCH_SIZE,
    IMAGE_SUFFIXES,
    OfflineScanner,
    ServerScanner,
    UsageError,
    collect_files,
)
from medfakedet.scan_output import Summary, format_report

EXIT_OK, EXIT_USAGE, EXIT_FAKE = 0, 1, 2
PROGRESS_MIN_FILES = 8


class _Parser(argparse.ArgumentParser):
    """argparse exits with 2 on bad usage; 2 means "fake found" here, so usage errors exit 1."""

    def error(self, message: str) -> NoReturn:
        self.print_usage(sys.stderr)
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message}\n")


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
    text = format_report(args.format, rows, summary)
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
        description="Classify every file (organ, real/fake/uncertain, P(fake)) and localize "
        "manipulation in brain images. Exit 0 when done, 1 on usage errors, 2 with --fail-on-fake "
        "when any verdict is fake or manipulated (uncertain answers do not count).",
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
        "--fail-on-fake",
        action="store_true",
        help="exit 2 if any verdict is fake or manipulated (not uncertain)",
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
