"""The GPU half of issue #12: raw and served synthesis8 img/s and p99 on a lent CUDA machine.

Run through ``loadtests/gpu_bench.sh`` (which checks Python, CUDA and Java first):

    python -m loadtests.gpu_bench --out docs/reports/gpu_bench.json
    python -m loadtests.gpu_bench --dry-run     # on the CPU, tiny: checks the script itself

1. raw: resnet18 at the served size (128 px) in fp16 channels_last at large batches, eager and
   (``--compile``) torch.compile, img/s;
2. served: TorchServe alone (the device machine has no nginx), archives built with a GPU
   model-config (several workers, large batches, short delay), loaded by several client
   processes; req/s and p50 / p99 per concurrency.

Prints one JSON document (and writes it with ``--out``): the card, the settings and the rows.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from loadtests.bench import MODELS, untrained_artifacts, upload_image
from loadtests.benchmark import bench_server

GPU_CONFIG = """\
# GPU run of loadtests/gpu_bench.py: several workers share the card (the frontend feeds each its
# own batches), large batches fill it, a short delay keeps a lone request quick.
minWorkers: {workers}
maxWorkers: {workers}
batchSize: {batch}
maxBatchDelay: 5
responseTimeout: 120
startupTimeout: 600
handler:
  cpu_path: fp32
"""


def raw_rows(batches: Sequence[int], device: str, seconds: float, compile_: bool) -> list[dict]:
    """img/s of the bare classifier: fp16 channels_last on CUDA (fp32 on the CPU dry run)."""
    import torch

    from medfakedet.models import build_classifier

    model = build_classifier().to(device).eval().to(memory_format=torch.channels_last)
    variants = [("eager", model)]
    if compile_:
        variants.append(("compile", torch.compile(model, mode="max-autotune")))
    cuda = device.startswith("cuda")
    dtype = torch.float16 if cuda else torch.float32
    rows = []
    for name, m in variants:
        for b in batches:
            x = torch.randn(b, 3, 128, 128, device=device, dtype=dtype)
            x = x.contiguous(memory_format=torch.channels_last)
            with torch.inference_mode(), torch.autocast(device.split(":")[0], dtype, cuda):
                for _ in range(3):
                    m(x)
                torch.cuda.synchronize() if cuda else None
                calls, start = 0, time.perf_counter()
                while calls < 3 or time.perf_counter() - start < seconds:
                    m(x)
                    calls += 1
                torch.cuda.synchronize() if cuda else None
                wall = time.perf_counter() - start
            rows.append({"variant": name, "batch": b, "img_s": round(calls * b / wall, 1)})
            print(json.dumps(rows[-1]), file=sys.stderr)
    return rows


def _client(args: tuple) -> tuple[list[float], float, int]:
    url, image, requests_, threads = args
    row = bench_server(url, "synthesis8", [image], requests_, threads, route="predictions")
    return [row.p50_ms, row.p99_ms], row.throughput_rps, row.errors


def served_rows(url: str, levels: Sequence[int], requests_: int, procs: int) -> list[dict]:
    """req/s and p50 / p99 at each concurrency, spread over ``procs`` client processes (one
    Python process cannot post thousands of requests a second)."""
    image = upload_image(128)
    rows = []
    with multiprocessing.get_context("spawn").Pool(procs) as pool:
        for level in levels:
            n = min(procs, level)
            parts = pool.map(_client, [(url, image, requests_ // n, level // n)] * n)
            p50 = float(np.median([p[0][0] for p in parts]))
            p99 = float(max(p[0][1] for p in parts))
            rows.append({"concurrency": level, "rps": round(sum(p[1] for p in parts), 1),
                         "p50_ms": round(p50, 1), "p99_ms_max_of_clients": round(p99, 1),
                         "errors": sum(p[2] for p in parts)})  # fmt: skip
            print(json.dumps(rows[-1]), file=sys.stderr)
    return rows


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m loadtests.gpu_bench", description=__doc__)
    p.add_argument("--dry-run", action="store_true", help="CPU, tiny sizes: test the script")
    p.add_argument("--compile", action="store_true", help="also time torch.compile")
    p.add_argument("--workers", type=int, default=4)
    p.add_argument("--batch", type=int, default=64, help="TorchServe batchSize")
    p.add_argument("--clients", type=int, default=12, help="client processes")
    p.add_argument("--requests", type=int, default=20000, help="requests per level")
    p.add_argument("--out", type=Path)
    args = p.parse_args(argv)
    import torch

    from medfakedet.deploy import StackConfig, build_archive, free_ports, start, stop
    from medfakedet.runtime import machine_info, select_device

    dry = args.dry_run
    if not dry and not torch.cuda.is_available():
        print("no CUDA device: run with --dry-run to test the script on the CPU", file=sys.stderr)
        return 2
    device = "cpu" if dry else "cuda:0"
    batches = (8,) if dry else (256, 1024, 4096)
    doc = {"machine": machine_info(select_device(device)), "dry_run": dry}
    doc["raw"] = raw_rows(batches, device, 0.5 if dry else 5.0, args.compile and not dry)
    workers, batch = (1, 4) if dry else (args.workers, args.batch)
    levels, n = ((1, 4), 16) if dry else ((64, 256, 512), args.requests)
    with tempfile.TemporaryDirectory(prefix="gpu-bench-") as tmp:
        work = Path(tmp)
        artifacts, store = untrained_artifacts(work / "artifacts"), work / "store"
        config = work / "gpu-model-config.yaml"
        config.write_text(GPU_CONFIG.format(workers=workers, batch=batch))
        for task in MODELS:
            build_archive(task, artifacts / task, store, model_config=config)
        cfg = StackConfig(log_dir=work / "logs", model_store=store, ports=free_ports(),
                          nginx=False)  # fmt: skip
        stack = start(cfg, timeout=600)
        try:
            doc["served"] = served_rows(stack.inference_url, levels, n, 2 if dry else args.clients)
        finally:
            stop(cfg.log_dir)
    precision = "fp32" if dry else "fp16 channels_last"
    doc["settings"] = {"workers": workers, "batchSize": batch, "maxBatchDelay_ms": 5,
                       "precision": precision, "size_px": 128}  # fmt: skip
    text = json.dumps(doc, indent=2)
    print(text)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
