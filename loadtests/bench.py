"""One run, one table: the speed of MedFakeDet on this machine, written to docs/PERFORMANCE.md.

    python -m loadtests.bench                  # ~10 min on 2 cores: the full table
    python -m loadtests.bench --quick          # ~2 min: fewer requests, levels and batch sizes
    python -m loadtests.bench --artifacts artifacts --out docs/PERFORMANCE.md

In one run (issue #12), on one uploaded image (a 224-px brain JPEG from real-dev when the data is
there, else a procedural brain slice):

1. the raw forward of each CPU path (:mod:`medfakedet.fastpath`) per batch size, with its
   agreement with fp32 on the fixed check set;
2. the predictors in process (decode -> preprocess -> forward -> postprocess), on the path that
   the served model chose (read from its metadata);
3. served: through nginx and through TorchServe directly, at each concurrency, with the shipped
   batching (model-config.yaml) and with batching off (batchSize 1), each from its own stack;
4. a peer: one Flask process with the model cached, no batching (``loadtests/peer.py``);

then the issue's target ratios, each marked met or missed. ``--artifacts DIR`` holds
``synthesis8/`` and ``manipulation_density/`` (default: ``artifacts-real/``, else
``artifacts/``); without any, seeded untrained models of the same architectures are used (speed
does not depend on the weights; the agreement figures do).
``--nginx-url``/``--torchserve-url``/``--management-url`` use a running stack instead of starting
one (then there are no batching-off rows).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import psutil
import requests
from PIL import Image
from tqdm import tqdm

from loadtests import SampleImage, sample_images
from loadtests.bench_report import write_report
from loadtests.benchmark import bench_server

REPO = Path(__file__).resolve().parent.parent
REAL_DEV = Path("/work/shared/data/real-dev")
MODELS = ("synthesis8", "manipulation_density")


@dataclass
class Plan:
    """What one run measures."""

    quick: bool
    requests: int
    levels: tuple[int, ...]
    batches: tuple[int, ...]
    seconds: float  # minimum timed seconds per raw-forward cell

    @classmethod
    def make(cls, quick: bool) -> Plan:
        if quick:
            return cls(True, 24, (1, 16), (16,), 0.5)
        return cls(False, 200, (1, 4, 16, 32), (1, 8, 16, 32), 3.0)


def upload_image(size: int = 224) -> SampleImage:
    """The benchmark's one upload: a brain JPEG of real-dev at ``size`` px (else a phantom)."""
    brains = sorted((REAL_DEV / "brain").glob("*.jpg")) if REAL_DEV.is_dir() else []
    if brains:
        image, source = Image.open(brains[0]).convert("L"), f"real-dev/brain/{brains[0].name}"
    else:
        phantom = next(s for s in sample_images(count=8, size=size) if s.organ == "brain")
        image, source = Image.open(io.BytesIO(phantom.data)).convert("L"), "procedural brain"
    buf = io.BytesIO()
    image.resize((size, size), Image.BILINEAR).save(buf, format="JPEG", quality=90)
    return SampleImage(name=f"brain.jpg ({source})", data=buf.getvalue(), organ="brain",
                       kind="jpeg")  # fmt: skip


def untrained_artifacts(root: Path) -> Path:
    """Seeded random-weight artifacts of the served architectures, in ``root``."""
    import torch

    from medfakedet.artifacts import save_artifact
    from medfakedet.models import build_classifier, build_localizer
    from medfakedet.preprocess import CLASSIFIER_PREPROCESS, LOCALIZER_PREPROCESS

    torch.manual_seed(0)
    save_artifact(root / "synthesis8", build_classifier(), task="synthesis8", arch="resnet18",
                  preprocess=CLASSIFIER_PREPROCESS, calibration={"temperature": 1.0},
                  version="0.0.0-bench")  # fmt: skip
    save_artifact(root / "manipulation_density", build_localizer("unet_density"),
                  task="manipulation_density", arch="unet_density",
                  preprocess=LOCALIZER_PREPROCESS,
                  calibration={"presence_threshold": 0.5, "box_threshold": 0.28, "min_area": 20},
                  version="0.0.0-bench")  # fmt: skip
    return root


def trained_artifacts() -> Path | None:
    """The first of artifacts-real/ (``make train-real``) and artifacts/ (``make train``) that
    holds both models."""
    for folder in (REPO / "artifacts-real", REPO / "artifacts"):
        if all((folder / t / "artifact.json").is_file() for t in MODELS):
            return folder
    return None


# --------------------------------------------------------------------------- raw and in process
def _rate(fn, n_images: int, seconds: float) -> float:
    """Images per second of ``fn()`` (which handles ``n_images``), after one warm-up call."""
    fn()
    calls, start = 0, time.perf_counter()
    while calls < 2 or time.perf_counter() - start < seconds:
        fn()
        calls += 1
    return calls * n_images / (time.perf_counter() - start)


def raw_rows(artifacts: Path, plan: Plan) -> list[dict]:
    """img/s of the bare model per CPU path and batch size, and each path's agreement."""
    import torch

    from medfakedet import checkset, fastpath
    from medfakedet.artifacts import load_artifact
    from medfakedet.predictors import DensityPredictor, Synthesis8Predictor

    rows = []
    for task, cls in zip(MODELS, (Synthesis8Predictor, DensityPredictor), strict=True):
        predictor = cls.from_artifact(artifacts / task, "cpu", cpu_path="fp32")
        model, cfg = load_artifact(artifacts / task).model.eval(), predictor.cfg
        agree, minimum, images = predictor.agreement_check()
        # The set the served check uses: the artifact's stored images, else seeded fields.
        check, described = fastpath.agreement_inputs(
            cfg, checkset.load(artifacts / task, cfg), images
        )
        if plan.quick:
            check = check[:32]
            described = f"{len(check)} of {described}"
        reference = fastpath.outputs(model, fastpath.PATHS["fp32"], check)
        batches = plan.batches if task == "synthesis8" else (8,) if plan.quick else (1, 8)
        for path in tqdm(fastpath.runnable(model), desc=f"raw {task}", leave=False):
            run, module = fastpath.runner(model, path, check[: fastpath.INT8_CALIBRATION_IMAGES])
            score = agree(reference, run(check))  # and the model is now in the path's format
            for b in batches:
                x = path.inputs(fastpath.check_inputs(cfg, b, seed=1))

                def forward(x=x, path=path, module=module):
                    with torch.inference_mode(), path.context():
                        module(x)

                rows.append({"model": task, "path": path.name, "batch": b,
                             "img_s": round(_rate(forward, b, plan.seconds), 1),
                             "agreement": round(score, 4), "minimum": minimum,
                             "check_set": described})  # fmt: skip
        fastpath.PATHS["fp32"].prepare(model)
    return rows


#: Idle time before each call of the paced single-image p50: about one served c=1 request's
#: round trip. Back-to-back calls keep the cores, caches and OpenMP threads hot; a served c=1
#: stream leaves them idle between forwards (session 23 on the AMD EPYC: 17-22 ms back-to-back,
#: 21-26 ms with 20-50 ms between calls, the same predictor in the same process).
PACE_S = 0.03


def _single_image_seconds(predictor, image: SampleImage, calls: int, pause_s: float) -> list:
    """Seconds of each of ``calls`` one-image predictions, ``pause_s`` of idle before each."""
    seconds = []
    for _ in range(calls):
        if pause_s:
            time.sleep(pause_s)
        start = time.perf_counter()
        predictor.predict([image.data])
        seconds.append(time.perf_counter() - start)
    return seconds


def in_process_rows(artifacts: Path, image: SampleImage, paths: dict, plan: Plan) -> list[dict]:
    """The predictors on the served path: p50 of one image per call, img/s of a batch."""
    from medfakedet.predictors import DensityPredictor, Synthesis8Predictor

    rows = []
    for task, cls in zip(MODELS, (Synthesis8Predictor, DensityPredictor), strict=True):
        predictor = cls.from_artifact(artifacts / task, "cpu", cpu_path=paths.get(task, "auto"))
        calls = 10 if plan.quick else 50
        one = _single_image_seconds(predictor, image, calls, pause_s=0.0)
        # idle cores before each call, as between served c=1 requests
        paced = _single_image_seconds(predictor, image, calls, pause_s=PACE_S)
        batch = 16 if task == "synthesis8" else 8
        rate = _rate(lambda p=predictor, b=batch: p.predict([image.data] * b), batch, plan.seconds)
        rows.append({"model": task, "path": predictor.cpu_path.name,
                     "p50_ms_b1": round(1000 * float(np.median(one)), 1),
                     "p50_ms_b1_paced": round(1000 * float(np.median(paced)), 1),
                     "pace_ms": round(1000 * PACE_S),
                     "img_s_b1": round(len(one) / sum(one), 1), "batch": batch,
                     "img_s_batch": round(rate, 1)})  # fmt: skip
    return rows


# ------------------------------------------------------------------------------------ served
def warm_up(urls: dict[str, str], image: SampleImage, requests_per_model: int = 192) -> None:
    """Requests at c=1, 8 and 16 to each model of each target before anything is timed: a
    served model is warm in use, and a fresh stack is not (the JVM compiles its hot paths during
    the first few hundred requests, oneDNN its kernels per new batch size), which fell on
    whichever cell came first. With 64 requests at c=1 and 8 (session 21), the first nginx c=1
    cell still cost the frontend 8-10 CPU ms a request against 3-4 in the cells after it, and
    the first c=16 cell of a stack gave 60-79 req/s against 76-88 for the next (session 22)."""
    levels = (1, 8, 16)
    n = requests_per_model // len(levels)
    for target, url in urls.items():
        route = "predictions" if target == "torchserve" else "detect"
        for endpoint in ("synthesis8",) if target == "peer" else MODELS:
            for level in levels:
                bench_server(url, endpoint, [image], n, level, route=route)


#: Who spends the CPU of a served request: the load generator (this process), nginx, the
#: TorchServe frontend (Java) and the model workers (Python). On a 2-core machine they share the
#: cores, so the served ceiling is cores / (their CPU seconds per request).
ROLES = ("client", "nginx", "frontend", "workers")


def stack_processes(stack: Any) -> dict[str, list[psutil.Process]]:
    """The processes of a started stack by role (:data:`ROLES`), for CPU accounting."""
    torchserve = psutil.Process(stack.torchserve_pid)
    below = torchserve.children(recursive=True)
    workers = [p for p in below if "model_service_worker" in " ".join(p.cmdline())]
    nginx = psutil.Process(stack.nginx_pid) if stack.nginx_pid else None
    return {
        "client": [psutil.Process()],
        "nginx": [nginx, *nginx.children(recursive=True)] if nginx else [],
        "frontend": [torchserve, *(p for p in below if p not in workers)],
        "workers": workers,
    }


def cpu_seconds(groups: dict[str, list[psutil.Process]]) -> dict[str, float]:
    """User + system CPU seconds so far of each role's processes (all their threads)."""
    out = {}
    for role, procs in groups.items():
        out[role] = 0.0
        for p in procs:
            with contextlib.suppress(psutil.Error):
                t = p.cpu_times()
                out[role] += t.user + t.system
    return out


def served_rows(
    label: str,
    urls: dict[str, str],
    image: SampleImage,
    plan: Plan,
    processes: dict[str, list[psutil.Process]] | None = None,
) -> list[dict]:
    """Load at each concurrency through each of ``urls`` ({target: base URL}); density at c=8.
    With ``processes`` (:func:`stack_processes`), each row adds the CPU milliseconds a request
    cost each role (``cpu_ms_<role>``)."""
    processes = processes or {}
    warm_up(urls, image, 24 if plan.quick else 192)
    rows = []
    cells = [(t, "synthesis8", c) for t in urls for c in plan.levels]
    cells += [(t, "manipulation_density", 8) for t in urls if t != "peer"]
    for target, endpoint, level in tqdm(cells, desc=f"served ({label})", leave=False):
        route = "predictions" if target == "torchserve" else "detect"
        before = cpu_seconds(processes)
        row = bench_server(urls[target], endpoint, [image], plan.requests, level, route=route)
        spent = {k: v - before[k] for k, v in cpu_seconds(processes).items()}
        rows.append({"target": target, "batching": label, "model": endpoint,
                     "concurrency": level, "requests": row.requests, "errors": row.errors,
                     "p50_ms": row.p50_ms, "p99_ms": row.p99_ms, "rps": row.throughput_rps,
                     "first_error": row.first_error,
                     **{f"cpu_ms_{k}": round(1000 * v / max(row.requests, 1), 2)
                        for k, v in spent.items()}})  # fmt: skip
    return rows


def served_paths(management_url: str) -> dict[str, dict]:
    """The runtime block (device, CPU path, timings) of each served model's metadata."""
    out = {}
    for task in MODELS:
        r = requests.get(f"{management_url}/models/{task}?customized=true", timeout=60)
        meta = r.json()[0].get("customizedMetadata") if r.ok else None
        out[task] = (json.loads(meta) if isinstance(meta, str) else meta or {}).get("runtime", {})
    return out


def batch_off_config(task: str, folder: Path) -> Path:
    """The shipped model-config.yaml of ``task`` with ``batchSize: 1``."""
    text = (REPO / "config" / task / "model-config.yaml").read_text()
    lines = ["batchSize: 1" if ln.startswith("batchSize:") else ln for ln in text.splitlines()]
    path = folder / f"{task}-nobatch.yaml"
    path.write_text("\n".join(lines) + "\n")
    return path


def with_stack(label: str, artifacts: Path, work: Path, batching: bool, image, plan) -> tuple:
    """Start a stack (archives with the shipped or batch-1 config), measure it, stop it."""
    from medfakedet.deploy import StackConfig, build_archive, free_ports, start, stop

    store = work / f"store-{label}"
    for task in MODELS:
        config = None if batching else batch_off_config(task, work)
        build_archive(task, artifacts / task, store, model_config=config)
    log_dir = work / f"stack-{label}"
    stack = start(StackConfig(log_dir=log_dir, model_store=store, ports=free_ports()), timeout=400)
    try:
        urls = {"nginx": stack.base_url, "torchserve": stack.inference_url}
        runtime = served_paths(stack.management_url)
        return served_rows(label, urls, image, plan, stack_processes(stack)), runtime
    finally:
        stop(log_dir)


def with_peer(artifacts: Path, image: SampleImage, plan: Plan) -> list[dict]:
    """Start ``loadtests.peer`` on a free port, measure it at each concurrency, stop it."""
    from medfakedet.deploy import free_ports

    port = free_ports()["nginx"]
    cmd = [sys.executable, "-m", "loadtests.peer", "--artifact", str(artifacts / "synthesis8"),
           "--port", str(port)]  # fmt: skip
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(240):
            try:
                if requests.get(f"{url}/ping", timeout=2).ok:
                    break
            except requests.RequestException:
                time.sleep(0.5)
        processes = {"client": [psutil.Process()], "workers": [psutil.Process(proc.pid)]}
        return served_rows("none", {"peer": url}, image, plan, processes)
    finally:
        proc.terminate()
        proc.wait(timeout=30)


# -------------------------------------------------------------------------------------- main
def run(args: argparse.Namespace) -> dict:
    from medfakedet.runtime import machine_info

    plan = Plan.make(args.quick)
    image = upload_image()
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="medfakedet-bench-") as tmp:
        work = Path(tmp)
        found = args.artifacts or trained_artifacts()
        artifacts = found or untrained_artifacts(work / "artifacts")
        served, runtime = [], {}
        if args.nginx_url or args.torchserve_url:
            urls = {k: u for k, u in (("nginx", args.nginx_url),
                                      ("torchserve", args.torchserve_url)) if u}  # fmt: skip
            served = served_rows("shipped", urls, image, plan)
            if args.management_url:
                runtime = served_paths(args.management_url)
        else:
            rows, runtime = with_stack("shipped", artifacts, work, True, image, plan)
            served += rows
            served += with_stack("off", artifacts, work, False, image, plan)[0]
        served += with_peer(artifacts, image, plan)
        paths = {t: r["cpu_path"] for t, r in runtime.items() if r.get("cpu_path")}
        doc = {
            "machine": machine_info(),
            "quick": plan.quick,
            "image": {"name": image.name, "bytes": len(image.data)},
            "artifacts": str(found) if found else "untrained (seeded)",
            "served_runtime": runtime,
            "raw": raw_rows(artifacts, plan),
            "in_process": in_process_rows(artifacts, image, paths, plan),
            "served": served,
        }
    doc["wall_s"] = round(time.perf_counter() - started, 1)
    doc["note"] = args.note
    return doc


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m loadtests.bench", description=__doc__.split("\n")[0]
    )
    p.add_argument("--quick", action="store_true", help="~2 min: fewer requests and levels")
    p.add_argument("--artifacts", type=Path, help="folder with synthesis8/, manipulation_density/")
    p.add_argument("--out", type=Path, default=REPO / "docs" / "PERFORMANCE.md")
    p.add_argument("--json", type=Path, help="also write every measured row here")
    p.add_argument("--note", default="", help="a caveat printed under the title")
    p.add_argument("--nginx-url", help="measure this running nginx instead of starting stacks")
    p.add_argument("--torchserve-url", help="... and this running TorchServe inference API")
    p.add_argument("--management-url", help="... whose management API tells the CPU paths")
    args = p.parse_args(argv)
    doc = run(args)
    write_report(doc, args.out)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(doc, indent=2) + "\n")
    print(f"wrote {args.out} ({doc['wall_s']} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
