"""Latency and throughput of the served endpoints per concurrency, beside an in-process baseline.

    python -m loadtests.benchmark --url http://127.0.0.1:8000 --requests 200 --concurrency 1,8,32
    python -m loadtests.benchmark ... --json docs/reports/bench.json --plot docs/reports/bench.png

For each endpoint and concurrency level, ``--requests`` uploads (the same PNGs every run) are
sent from that many threads; every answer is checked (status 200 + schema). The baseline rows
time the same images through the offline predictors of ``--artifacts`` in this process, one
image per call (what a single request costs without HTTP, queueing and batching); they are
skipped with a note when the artifacts are missing. ``--url`` is any http(s) base URL: the local
nginx, or a cluster's ingress (then the machine facts in the table are the client's, and the
in-process rows are this machine's). ``--token`` (or ``MEDFAKEDET_TOKEN``) is sent as
``Authorization: Bearer``; ``--images-dir DIR`` posts the scans of a folder instead of the PNGs.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from urllib.parse import urlparse

import numpy as np

from loadtests import ENDPOINTS, SampleImage, folder_images, sample_images
from medfakedet.argv import parse_args
from medfakedet.schema import error_message, result_problem

MAX_REQUESTS = 10_000
MAX_CONCURRENCY = 256
WARMUP_REQUESTS = 4
BASELINE_MAX_CALLS = 50


@dataclass
class Row:
    """One line of the table."""

    target: str  # "server" or "in-process"
    endpoint: str
    concurrency: int
    requests: int
    errors: int
    p50_ms: float
    p95_ms: float
    p99_ms: float
    throughput_rps: float
    first_error: str | None = None


def machine_info() -> dict:
    """The runtime's machine facts (CPU, cores, torch, GPU) and the host name."""
    from medfakedet.runtime import machine_info as runtime_machine_info
    from medfakedet.runtime import select_device

    return {"host": platform.node(), **runtime_machine_info(select_device("auto"))}


def summarize(
    target: str,
    endpoint: str,
    concurrency: int,
    latencies_s: Sequence[float],
    wall_s: float,
    errors: Sequence[str],
) -> Row:
    """Percentiles over successful requests; throughput = successes / wall time."""
    ok = np.asarray(latencies_s, dtype=float) * 1000.0
    p50, p95, p99 = (float(np.percentile(ok, q)) if ok.size else float("nan") for q in (50, 95, 99))
    return Row(
        target=target,
        endpoint=endpoint,
        concurrency=concurrency,
        requests=len(latencies_s) + len(errors),
        errors=len(errors),
        p50_ms=round(p50, 2),
        p95_ms=round(p95, 2),
        p99_ms=round(p99, 2),
        throughput_rps=round(len(latencies_s) / wall_s, 2) if wall_s > 0 else float("nan"),
        first_error=errors[0] if errors else None,
    )


# ------------------------------------------------------------------------------------- server
def bench_server(
    url: str,
    endpoint: str,
    images: Sequence[SampleImage],
    n_requests: int,
    concurrency: int,
    timeout: float = 120.0,
    token: str | None = None,
    route: str = "detect",
) -> Row:
    """``n_requests`` uploads from ``concurrency`` threads, each with its own HTTP session; the
    localizer runs with its calibrated parameters (no form fields). ``route``: ``detect`` (nginx)
    or ``predictions`` (TorchServe's own inference API)."""
    import requests

    headers = {"Authorization": f"Bearer {token}"} if token else {}

    local = threading.local()

    def one(i: int) -> tuple[float | None, str | None]:
        session = getattr(local, "session", None)
        if session is None:
            session = local.session = requests.Session()
        image = images[i % len(images)]
        start = time.perf_counter()
        try:
            r = session.post(
                f"{url}/{route}/{endpoint}",
                files={"image": (image.name, image.data, image.content_type)},
                headers=headers,
                timeout=timeout,
            )
        except requests.RequestException as e:
            return None, f"{type(e).__name__}: {e}"
        elapsed = time.perf_counter() - start
        try:
            body = r.json()
        except ValueError:
            body = None
        if r.status_code != 200:
            return None, f"HTTP {r.status_code}: {error_message(body) or r.text[:200]}"
        problem = "answer is not JSON" if body is None else result_problem(endpoint, body)
        return (None, problem) if problem else (elapsed, None)

    with ThreadPoolExecutor(max_workers=concurrency) as pool:
        list(pool.map(one, range(min(WARMUP_REQUESTS, n_requests))))  # connections, caches
        start = time.perf_counter()
        results = list(pool.map(one, range(n_requests)))
        wall = time.perf_counter() - start
    latencies = [t for t, err in results if t is not None]
    errors = [err for t, err in results if err is not None]
    return summarize("server", endpoint, concurrency, latencies, wall, errors)


# ----------------------------------------------------------------------------------- baseline
def bench_in_process(
    artifacts: Path, endpoint: str, images: Sequence[SampleImage], n_calls: int
) -> Row | str:
    """Time ``predict([one image])`` of the offline predictor; a note string if unavailable."""
    try:
        from medfakedet.artifacts import ArtifactError
        from medfakedet.predictors import DensityPredictor, Synthesis8Predictor
        from medfakedet.schema import PredictionError
    except ImportError as e:
        return f"in-process baseline skipped: {e}"
    cls = Synthesis8Predictor if endpoint == "synthesis8" else DensityPredictor
    try:
        predictor = cls.from_artifact(artifacts / endpoint, "cpu")
    except ArtifactError as e:
        return f"in-process baseline for {endpoint} skipped: {e}"
    call: Callable[[bytes], object] = lambda data: predictor.predict([data])[0]  # noqa: E731
    for i in range(min(WARMUP_REQUESTS, n_calls)):
        call(images[i % len(images)].data)
    latencies, errors = [], []
    start = time.perf_counter()
    for i in range(n_calls):
        t0 = time.perf_counter()
        result = call(images[i % len(images)].data)
        if isinstance(result, PredictionError):
            errors.append(result.message)
        else:
            latencies.append(time.perf_counter() - t0)
    wall = time.perf_counter() - start
    return summarize("in-process", endpoint, 1, latencies, wall, errors)


# ------------------------------------------------------------------------------------- output
COLUMNS = (
    ("target", "{}"),
    ("endpoint", "{}"),
    ("concurrency", "{}"),
    ("requests", "{}"),
    ("errors", "{}"),
    ("p50_ms", "{:.1f}"),
    ("p95_ms", "{:.1f}"),
    ("p99_ms", "{:.1f}"),
    ("throughput_rps", "{:.1f}"),
)


def _line(cells: Sequence[str], widths: Sequence[int]) -> str:
    # Text columns (target, endpoint) left-aligned, numbers right-aligned.
    return "  ".join(
        c.ljust(w) if i < 2 else c.rjust(w)
        for i, (c, w) in enumerate(zip(cells, widths, strict=True))
    )


def format_table(rows: Sequence[Row], machine: dict) -> str:
    head = [name for name, _ in COLUMNS]
    body = [[fmt.format(getattr(r, name)) for name, fmt in COLUMNS] for r in rows]
    widths = [max([len(h)] + [len(b[i]) for b in body]) for i, h in enumerate(head)]
    lines = [
        f"machine: {machine['cpu']} ({machine['cpu_cores']} cores), "
        f"GPU: {machine.get('gpu', 'none')}, "
        f"host {machine['host']}",
        _line(head, widths),
        "  ".join("-" * w for w in widths),
    ]
    lines += [_line(b, widths) for b in body]
    for r in rows:
        if r.first_error:
            lines.append(f"note: {r.target} {r.endpoint} c={r.concurrency}: {r.first_error}")
    return "\n".join(lines)


def write_plot(rows: Sequence[Row], path: Path) -> None:
    """p50/p95 latency and throughput against concurrency, one line per endpoint."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_lat, ax_tp) = plt.subplots(1, 2, figsize=(10, 4))
    for endpoint in ENDPOINTS:
        server = [r for r in rows if r.target == "server" and r.endpoint == endpoint]
        if not server:
            continue
        c = [r.concurrency for r in server]
        (line,) = ax_lat.plot(c, [r.p50_ms for r in server], marker="o", label=f"{endpoint} p50")
        ax_lat.plot(
            c, [r.p95_ms for r in server], ls="--", color=line.get_color(), label=f"{endpoint} p95"
        )
        ax_tp.plot(c, [r.throughput_rps for r in server], marker="o", label=endpoint)
        for r in rows:
            if r.target == "in-process" and r.endpoint == endpoint:
                ax_lat.axhline(
                    r.p50_ms,
                    color=line.get_color(),
                    ls=":",
                    lw=1,
                    label=f"{endpoint} in-process p50",
                )
    for ax, ylabel in ((ax_lat, "latency (ms)"), (ax_tp, "throughput (requests/s)")):
        ax.set_xscale("log", base=2)
        ax.set_xlabel("concurrency")
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


# ---------------------------------------------------------------------------------------- cli
def _concurrency_list(text: str) -> list[int]:
    try:
        levels = sorted({int(x) for x in text.split(",") if x.strip()})
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected numbers like 1,8,32, got {text!r}") from None
    if not levels or levels[0] < 1 or levels[-1] > MAX_CONCURRENCY:
        raise argparse.ArgumentTypeError(f"concurrency levels must be in 1..{MAX_CONCURRENCY}")
    return levels


def _base_url(text: str) -> str:
    parsed = urlparse(text)
    if parsed.scheme not in ("http", "https") or not parsed.hostname:
        raise argparse.ArgumentTypeError(
            f"--url must be an http(s) base URL like http://127.0.0.1:8000, got {text!r}"
        )
    return text.rstrip("/")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m loadtests.benchmark", description=__doc__.split("\n")[0]
    )
    p.add_argument(
        "--url",
        type=_base_url,
        default="http://127.0.0.1:8000",
        help="the service: local nginx or a cluster's URL; default %(default)s",
    )
    p.add_argument(
        "--token",
        default=os.environ.get("MEDFAKEDET_TOKEN"),
        help="inference token, sent as Authorization: Bearer (default: $MEDFAKEDET_TOKEN)",
    )
    p.add_argument("--images-dir", type=Path, help="post the scans of this folder instead")
    p.add_argument("--requests", type=int, default=200, help="requests per level (default 200)")
    p.add_argument(
        "--concurrency",
        type=_concurrency_list,
        default=[1, 8, 32],
        help="comma-separated levels (default 1,8,32)",
    )
    p.add_argument("--endpoint", choices=(*ENDPOINTS, "both"), default="both")
    p.add_argument(
        "--artifacts",
        type=Path,
        default=Path("artifacts"),
        help="offline artifacts for the in-process baseline (default artifacts/)",
    )
    p.add_argument("--images", type=int, default=8, help="distinct images cycled (default 8)")
    p.add_argument("--size", type=int, default=256, help="image side in pixels (default 256)")
    p.add_argument("--no-baseline", action="store_true", help="skip the in-process rows")
    p.add_argument("--json", type=Path, help="also write the rows and machine info here")
    p.add_argument("--plot", type=Path, help="also write a PNG plot here")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parse_args(parser, argv)
    if not 1 <= args.requests <= MAX_REQUESTS:
        print(f"--requests must be in 1..{MAX_REQUESTS}", file=sys.stderr)
        return 1
    try:
        import requests

        headers = {"Authorization": f"Bearer {args.token}"} if args.token else {}
        requests.get(f"{args.url}/ping", headers=headers, timeout=10)
    except requests.RequestException as e:
        print(
            f"cannot reach {args.url}: {e}\nstart the service first (make serve)", file=sys.stderr
        )
        return 1
    endpoints = ENDPOINTS if args.endpoint == "both" else (args.endpoint,)
    if args.images_dir:
        images = folder_images(args.images_dir, limit=max(1, args.images))
    else:
        images = sample_images(count=max(1, args.images), size=args.size)
    brain = [im for im in images if im.organ == "brain"] or images
    machine = machine_info()
    rows: list[Row] = []
    notes: list[str] = []
    for endpoint in endpoints:
        used = brain if endpoint == "manipulation_density" else images
        if not args.no_baseline:
            n = min(args.requests, BASELINE_MAX_CALLS)
            baseline = bench_in_process(args.artifacts, endpoint, used, n)
            if isinstance(baseline, str):
                notes.append(baseline)
            else:
                rows.append(baseline)
        for level in args.concurrency:
            print(
                f"{endpoint}: {args.requests} requests at concurrency {level}...", file=sys.stderr
            )
            rows.append(
                bench_server(args.url, endpoint, used, args.requests, level, token=args.token)
            )
    print(format_table(rows, machine))
    for note in notes:
        print(f"note: {note}")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        doc = {"machine": machine, "url": args.url, "rows": [asdict(r) for r in rows]}
        args.json.write_text(json.dumps(doc, indent=2) + "\n")
    if args.plot:
        write_plot(rows, args.plot)
    failed = sum(r.errors for r in rows if r.target == "server")
    return 1 if failed == sum(r.requests for r in rows if r.target == "server") else 0


if __name__ == "__main__":
    sys.exit(main())
