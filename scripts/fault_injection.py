"""Fault injection against a running stack: hostile requests, bombs, and a killed worker.

    python scripts/fault_injection.py                      # make serve's default ports
    python scripts/fault_injection.py --hostile 5000 --kill-rounds 3

1. ``--hostile`` generated hostile requests of ~60 kinds (tests/integration/hostile_requests.py)
   from 8 threads, a checked valid request after every 9; prints the statuses per kind, the
   answers that were not a JSON 4xx, the valid requests that failed, and whether any worker
   restarted (management API: worker id, start time, pid before and after).
2. Each bomb alone: status, seconds, the workers' peak RSS growth.
3. ``--kill-rounds`` times: SIGKILL of the synthesis8 worker under 8 clients; seconds until a
   new worker answers, and the statuses the clients saw (every request must get an answer).

Must run on the machine of the stack (it signals the worker). Exit status 1 on any failure.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections import Counter, defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "integration"))
from hostile_requests import (  # noqa: E402
    BOMBS,
    S8,
    RssPeak,
    check_valid,
    hostile_failures,
    hostile_requests,
    kill_worker_under_load,
    run_mixed,
    send,
    upload,
    workers,
)


def hostile_round(args) -> bool:
    before = workers(args.management_url, args.management_key)
    start = time.perf_counter()
    pairs = run_mixed(args.base_url, hostile_requests(args.hostile, seed=args.seed))
    seconds = time.perf_counter() - start
    per_kind: dict[str, Counter] = defaultdict(Counter)
    for probe, answer in pairs:
        per_kind[probe.kind][answer.status] += 1
    print(f"\n{len(pairs)} requests in {seconds:.0f} s; status per kind:")
    for kind, counts in sorted(per_kind.items()):
        print(f"  {kind:40s} {dict(sorted(counts.items()))}")
    bad = hostile_failures(pairs)
    valid_failed = []
    for probe, answer in pairs:
        if probe.kind == "valid":
            try:
                check_valid(probe, answer)
            except (AssertionError, ValueError, KeyError) as e:
                valid_failed.append(f"{answer.status}: {e}")
    restarted = workers(args.management_url, args.management_key) != before
    print(f"hostile not a JSON 4xx: {len(bad)}; valid failed: {len(valid_failed)}; "
          f"worker restarted: {restarted}")  # fmt: skip
    for line in sorted(set(bad))[:20] + valid_failed[:10]:
        print("  ", line)
    return not bad and not valid_failed and not restarted


def bomb_round(args) -> bool:
    pids = [p for ws in workers(args.management_url, args.management_key).values() for *_, p in ws]
    ok = True
    print(f"\n{'bomb':28s} {'bytes':>8s} {'status':>6s} {'seconds':>8s} {'RSS +MiB':>9s}")
    for name, (data, expected) in BOMBS.items():
        with RssPeak(pids) as rss:
            start = time.perf_counter()
            answer = send(args.base_url, upload(name, S8, data))
            seconds = time.perf_counter() - start
        good = seconds < 5 and rss.growth_mib <= 512 and answer.status == expected
        ok &= good
        print(
            f"{name:28s} {len(data):>8d} {answer.status:>6d} {seconds:>8.2f} "
            f"{rss.growth_mib:>9.0f}{'' if good else '  <- FAIL'}"
        )
    return ok


def kill_round(args) -> bool:
    recovered, statuses = kill_worker_under_load(
        args.base_url, args.management_url, args.management_key
    )
    print(f"\nSIGKILL of the synthesis8 worker: recovered in {recovered} s; statuses {statuses}")
    return recovered is not None and recovered < 30 and 0 not in statuses


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--base-url", default="http://127.0.0.1:8000")
    p.add_argument("--management-url", default="http://127.0.0.1:8081")
    p.add_argument("--management-key", default="", help="with token authorization on")
    p.add_argument("--hostile", type=int, default=2000)
    p.add_argument("--seed", type=int, default=11)
    p.add_argument("--kill-rounds", type=int, default=1)
    args = p.parse_args(argv)
    ok = hostile_round(args)
    ok &= bomb_round(args)
    for _ in range(args.kill_rounds):
        ok &= kill_round(args)
    print("\nall held" if ok else "\nFAILURES above")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
