"""``medfakedet``: audit image files for synthesis and local manipulation.

    medfakedet scan PATH... [--server URL [--token T] [--concurrency N] [--retries N]]
                            [--recursive] [--format table|json|csv|jsonl|html] [--output FILE]
                            [--resume] [--artifacts DIR] [--localize auto|always|never]
                            [--thr T] [--min-area N] [--fail-on-fake] [--fail-on-uncertain]
    medfakedet version

Offline (default) the trained artifacts in ``--artifacts`` are loaded in-process; with
``--server`` the files are POSTed to a running MedFakeDet service, ``--concurrency`` at a time (so
the server can batch them), with retries and backoff on transient errors. Each file gets one row:
its sha256, predicted class, the verdict (real / fake / uncertain), P(fake), the in-distribution
score, each model's version and weights sha256, and (for brain images with ``--localize auto``,
or every image with ``always``) the localizer's verdict (manipulated / untouched / uncertain) and
its boxes. A file that cannot be read or decoded is an error row, never a crash.
``--format jsonl`` writes each row as its file finishes; ``--resume`` continues such a run from
its file. ``--format html`` writes a self-contained audit report with thumbnails, heatmaps and
boxes.

Exit codes: 0 every file was scanned (and, with ``--fail-on-fake``, none is fake or
manipulated); 1 with ``--fail-on-fake`` when a verdict is fake or manipulated (or, with
``--fail-on-uncertain``, uncertain); 2 errors: a file could not be read, decoded or scanned, a bad
option, missing artifacts, an unreachable server. Errors win over findings: an audit with holes
exits 2. ``uncertain`` does not fail a run by default: it says the model cannot tell, not that
the image is fake (the phantom-trained defaults answer it on most real scans).
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Iterable
from contextlib import ExitStack
from pathlib import Path

from medfakedet import __version__
from medfakedet.argv import parse_args
from medfakedet.scan import (
    BATCH_SIZE,
    IMAGE_SUFFIXES,
    OfflineScanner,
    UsageError,
    collect_files,
)
from medfakedet.scan_html import format_html
from medfakedet.scan_output import Summary, format_report
from medfakedet.scan_server import DEFAULT_CONCURRENCY, DEFAULT_RETRIES, ServerScanner
from medfakedet.scan_stream import JsonlWriter, finished_rows, read_jsonl, rewrite_without_errors

EXIT_OK, EXIT_FAKE, EXIT_ERROR = 0, 1, 2
PROGRESS_MIN_FILES = 8
FORMATS = ("table", "json", "csv", "jsonl", "html")
EXIT_CODES_HELP = """exit codes:
  0  every file was scanned (with --fail-on-fake: and none is fake or manipulated)
  1  --fail-on-fake: a verdict is fake or manipulated (--fail-on-uncertain: or uncertain)
  2  errors: a file could not be read, decoded or scanned; a bad option; missing
     artifacts; an unreachable server (errors win over findings)
An uncertain verdict fails nothing by default: the model cannot tell."""


# ------------------------------------------------------------------------------------- commands
def _progress_bar(total: int):
    from tqdm import tqdm

    # Only worth drawing for many files; tqdm writes to stderr, so stdout stays parseable.
    return tqdm(
        total=total, unit="file", desc="scan", file=sys.stderr, disable=total < PROGRESS_MIN_FILES
    )


def _check_options(args: argparse.Namespace) -> None:
    if args.thr is not None and not 0.0 <= args.thr <= 1.0:
        raise UsageError(f"--thr must be between 0 and 1, got {args.thr}")
    if args.min_area is not None and args.min_area < 0:
        raise UsageError(f"--min-area must be >= 0, got {args.min_area}")
    if args.resume and not (args.format == "jsonl" and args.output):
        raise UsageError("--resume needs --format jsonl and --output FILE (the run to resume)")


def _scanner(args: argparse.Namespace) -> OfflineScanner | ServerScanner:
    visuals = args.format == "html"
    if args.server:
        return ServerScanner(
            args.server,
            localize=args.localize,
            thr=args.thr,
            min_area=args.min_area,
            timeout=args.timeout,
            concurrency=args.concurrency,
            retries=args.retries,
            token=args.token,
            visuals=visuals,
        )
    return OfflineScanner(
        Path(args.artifacts),
        localize=args.localize,
        device=args.device,
        thr=args.thr,
        min_area=args.min_area,
        batch_size=args.batch_size,
        visuals=visuals,
    )


def exit_code(summary: Summary, fail_on_fake: bool, fail_on_uncertain: bool = False) -> int:
    """2 when any file has an error, else 1 when a finding asked for fails the run, else 0."""
    if summary.errors:
        return EXIT_ERROR
    if fail_on_fake and (summary.fake or summary.manipulated):
        return EXIT_FAKE
    if fail_on_uncertain and summary.uncertain:
        return EXIT_FAKE
    return EXIT_OK


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
    _check_options(args)
    scanner = _scanner(args)
    records: dict[str, dict] = {}
    out = Path(args.output) if args.output else None
    if args.resume and out.exists():
        records = finished_rows(read_jsonl(out), files)
        rewrite_without_errors(out, list(records.values()))  # failed rows are tried again
        print(f"resuming {out}: {len(records)} of {len(files)} files done", file=sys.stderr)
    todo = [f for f in files if str(f) not in records]
    visuals: dict[str, dict[str, str]] = {}
    with ExitStack() as stack:
        writer = None
        if args.format == "jsonl":
            mode = "a" if args.resume else "w"
            writer = JsonlWriter(stack.enter_context(out.open(mode)) if out else sys.stdout)
        bar = stack.enter_context(_progress_bar(len(todo)))
        for row in scanner.scan(todo):
            record = row.to_dict()
            records[record["file"]] = record
            if row.visuals:
                visuals[record["file"]] = row.visuals
            if writer:
                writer.write(record)
            bar.update(1)
    rows = [records[str(f)] for f in files]
    summary = Summary.of(rows)
    if args.format != "jsonl":
        if args.format == "html":
            text = format_html(rows, summary, visuals, args.server or f"{args.artifacts}/")
        else:
            text = format_report(args.format, rows, summary)
        if out:
            out.write_text(text)
        else:
            sys.stdout.write(text)
    if out or args.format != "table":
        print(summary.line(), file=sys.stderr)  # the table carries its own summary
    if isinstance(scanner, ServerScanner):
        print(
            f"server: up to {scanner.peak_in_flight} requests in flight, {scanner.retried} retried",
            file=sys.stderr,
        )
    return exit_code(summary, args.fail_on_fake, args.fail_on_uncertain)


def run_version(_args: argparse.Namespace) -> int:
    print(f"medfakedet {__version__} (python {sys.version.split()[0]})")
    return EXIT_OK


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(  # exits 2 on bad usage, which is EXIT_ERROR
        prog="medfakedet",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Detect synthetic and locally manipulated medical images (MedFakeDet). "
        "Models trained on synthetic data are NOT for clinical use.",
    )
    parser.add_argument("--version", action="version", version=f"medfakedet {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    scan = sub.add_parser(
        "scan",
        help="audit image files and folders",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Classify every file (organ, real/fake/uncertain, P(fake)) and localize "
        "manipulation in brain images.",
        epilog=EXIT_CODES_HELP,
    )
    scan.add_argument("paths", nargs="+", metavar="PATH", help="image files or folders")
    scan.add_argument("--server", metavar="URL", help="scan through a running service instead")
    scan.add_argument("-r", "--recursive", action="store_true", help="descend into sub-folders")
    scan.add_argument(
        "--format",
        choices=FORMATS,
        default="table",
        help="jsonl: one line per file as it finishes; html: a self-contained audit report "
        "with thumbnails, heatmaps and boxes (default: %(default)s)",
    )
    scan.add_argument("-o", "--output", metavar="FILE", help="write the report here")
    scan.add_argument(
        "--resume",
        action="store_true",
        help="with --format jsonl -o FILE: keep the files FILE already holds (same sha256, no "
        "error) and scan only the others, appending to FILE",
    )
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
        help="exit 1 if any verdict is fake or manipulated (not uncertain)",
    )
    scan.add_argument(
        "--fail-on-uncertain", action="store_true", help="exit 1 if any verdict is uncertain"
    )
    scan.add_argument("--device", default="auto", help="offline: cpu, cuda:0, ... (default auto)")
    scan.add_argument("--batch-size", type=int, default=BATCH_SIZE, help=argparse.SUPPRESS)
    scan.add_argument("--timeout", type=float, default=60.0, help="server mode: seconds/request")
    scan.add_argument(
        "--concurrency",
        type=int,
        default=DEFAULT_CONCURRENCY,
        help="server mode: requests in flight, so the server batches them (default %(default)s)",
    )
    scan.add_argument(
        "--retries",
        type=int,
        default=DEFAULT_RETRIES,
        help="server mode: tries again after a connection error, a timeout or HTTP 429/502/503/"
        "504, waiting 0.5, 1, 2, ... s (default %(default)s)",
    )
    scan.add_argument(
        "--token",
        default=os.environ.get("MEDFAKEDET_TOKEN"),
        help="server mode: the inference token of a server with token authorization, sent as "
        "Authorization: Bearer (default: $MEDFAKEDET_TOKEN)",
    )
    scan.set_defaults(func=run_scan)

    version = sub.add_parser("version", help="print the version")
    version.set_defaults(func=run_version)
    return parser


def main(argv: Iterable[str] | None = None) -> int:
    """Console entry point (``medfakedet``); returns the exit code."""
    parser = build_parser()
    args = parse_args(parser, argv)
    if args.command is None:
        parser.print_help(sys.stderr)
        return EXIT_ERROR
    try:
        return args.func(args)
    except UsageError as e:
        print(f"medfakedet: error: {e}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        print("medfakedet: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
