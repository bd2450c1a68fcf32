"""Soak a running stack at about 80% of its measured capacity; report p99 over time and worker RSS.

    python scripts/soak.py --base-url http://127.0.0.1:8000 --management-url http://127.0.0.1:8081
    python scripts/soak.py --seconds 60 --out logs/soak-short     # a short run

First measures capacity (answers/s with 8 closed-loop clients for ``--probe-seconds``), then
sends valid requests (both endpoints, answers checked) open-loop at ``--load`` x capacity for
``--seconds`` (default 600). Every ``--window`` seconds it prints requests, errors, p50/p99 and
the workers' RSS; at the end a table, ``soak.json`` and ``soak.png`` (p99 and RSS over time)
in ``--out``. Exit status 1 when a request failed or RSS grew by 5% or more.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import psutil
import requests
from tqdm import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "integration"))
from hostile_requests import check_valid, send, valid_request  # noqa: E402


def worker_pids(management_url: str, headers: dict) -> list[int]:
    pids = []
    for model in ("synthesis8", "manipulation_density"):
        desc = requests.get(f"{management_url}/models/{model}", headers=headers, timeout=10)
        pids += [int(w["pid"]) for w in desc.json()[0]["workers"]]
    return pids


def rss_mib(pids: list[int]) -> float:
    total = 0
    for pid in pids:
        with contextlib.suppress(psutil.NoSuchProcess):
            total += psutil.Process(pid).memory_info().rss
    return total / 2**20


def one(base_url: str, i: int) -> tuple[float, float, bool]:
    """(start time, latency s, ok) of one valid request."""
    probe = valid_request(i)
    start = time.time()
    t0 = time.perf_counter()
    try:
        answer = send(base_url, probe)
        check_valid(probe, answer)
        ok = True
    except (AssertionError, OSError, ValueError, KeyError):
        ok = False
    return start, time.perf_counter() - t0, ok


def capacity(base_url: str, seconds: float, clients: int = 8) -> float:
    """Answers per second with ``clients`` closed-loop clients."""
    deadline = time.monotonic() + seconds
    done = []

    def loop(seed: int) -> None:
        i = seed
        while time.monotonic() < deadline:
            done.append(one(base_url, i))
            i += clients

    with ThreadPoolExecutor(clients) as pool:
        list(pool.map(loop, range(clients)))
    return len(done) / seconds


def run(args: argparse.Namespace) -> int:
    headers = {"Authorization": f"Bearer {args.management_key}"} if args.management_key else {}
    pids = worker_pids(args.management_url, headers)
    cap = args.capacity or capacity(args.base_url, args.probe_seconds)
    rate = args.load * cap
    print(f"capacity {cap:.1f} answers/s; soaking at {rate:.1f}/s for {args.seconds:.0f} s")
    rss0 = rss_mib(pids)
    results: list[tuple[float, float, bool]] = []
    rss: list[tuple[float, float]] = [(0.0, rss0)]
    t_start = time.time()
    stop = threading.Event()

    def sample_rss() -> None:
        while not stop.wait(5.0):
            rss.append((time.time() - t_start, rss_mib(pids)))

    sampler = threading.Thread(target=sample_rss, daemon=True)
    sampler.start()
    bar = tqdm(total=int(args.seconds), unit="s", mininterval=1.0)
    with ThreadPoolExecutor(32) as pool, bar:
        futures, i = [], 0
        while (elapsed := time.time() - t_start) < args.seconds:
            due = t_start + i / rate  # open loop: requests leave on schedule
            if due > time.time():
                time.sleep(min(due - time.time(), 0.05))
                continue
            futures.append(pool.submit(one, args.base_url, i))
            i += 1
            bar.update(int(elapsed) - bar.n)
        results = [f.result() for f in futures]
    stop.set()
    sampler.join()
    rss.append((time.time() - t_start, rss_mib(pids)))
    return report(args, cap, rate, t_start, results, rss)


def report(args, cap, rate, t_start, results, rss) -> int:
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    starts = np.array([r[0] - t_start for r in results])
    lat = np.array([r[1] for r in results]) * 1000
    ok = np.array([r[2] for r in results])
    windows = []
    print(
        f"{'window':>10} {'requests':>9} {'errors':>7} {'p50 ms':>8} {'p99 ms':>8} {'RSS MiB':>8}"
    )
    for w0 in np.arange(0, args.seconds, args.window):
        sel = (starts >= w0) & (starts < w0 + args.window)
        if not sel.any():
            continue
        rss_w = [m for t, m in rss if t <= w0 + args.window][-1]
        row = {
            "start_s": float(w0),
            "requests": int(sel.sum()),
            "errors": int((~ok[sel]).sum()),
            "p50_ms": float(np.percentile(lat[sel], 50)),
            "p99_ms": float(np.percentile(lat[sel], 99)),
            "rss_mib": rss_w,
        }
        windows.append(row)
        print(
            f"{w0:>8.0f} s {row['requests']:>9} {row['errors']:>7} {row['p50_ms']:>8.0f} "
            f"{row['p99_ms']:>8.0f} {rss_w:>8.0f}"
        )
    growth = 100 * (rss[-1][1] - rss[0][1]) / rss[0][1]
    summary = {
        "capacity_per_s": cap,
        "rate_per_s": rate,
        "seconds": args.seconds,
        "requests": len(results),
        "errors": int((~ok).sum()),
        "p99_ms": float(np.percentile(lat, 99)),
        "rss_start_mib": rss[0][1],
        "rss_end_mib": rss[-1][1],
        "rss_growth_pct": growth,
        "windows": windows,
    }
    (out / "soak.json").write_text(json.dumps(summary, indent=2) + "\n")
    plot(out / "soak.png", windows, rss)
    print(
        f"{len(results)} requests, {summary['errors']} errors, p99 {summary['p99_ms']:.0f} ms, "
        f"worker RSS {rss[0][1]:.0f} -> {rss[-1][1]:.0f} MiB ({growth:+.1f}%); {out}/soak.png"
    )
    return 0 if summary["errors"] == 0 and growth < 5.0 else 1


def plot(path: Path, windows: list[dict], rss: list[tuple[float, float]]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a, b) = plt.subplots(2, 1, figsize=(8, 6), sharex=True)
    t = [w["start_s"] for w in windows]
    a.plot(t, [w["p99_ms"] for w in windows], marker="o", label="p99")
    a.plot(t, [w["p50_ms"] for w in windows], marker=".", label="p50")
    a.set_ylabel("latency (ms)")
    a.legend()
    b.plot([x for x, _ in rss], [m for _, m in rss], marker=".")
    b.set_ylabel("worker RSS (MiB)")
    b.set_xlabel("time (s)")
    fig.suptitle("soak: latency per window and the workers' memory")
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--base-url", default="http://127.0.0.1:8000")
    p.add_argument("--management-url", default="http://127.0.0.1:8081")
    p.add_argument("--management-key", default="", help="with token authorization on")
    p.add_argument("--seconds", type=float, default=600.0)
    p.add_argument("--load", type=float, default=0.8, help="fraction of measured capacity")
    p.add_argument("--capacity", type=float, default=0.0, help="skip measuring (answers/s)")
    p.add_argument("--probe-seconds", type=float, default=20.0)
    p.add_argument("--window", type=float, default=30.0)
    p.add_argument("--out", default="logs/soak")
    return run(p.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
