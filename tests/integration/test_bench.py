"""``python -m loadtests.bench --quick`` end to end against the session's stack (issue #12):
every section of docs/PERFORMANCE.md is filled and every served request was answered."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from loadtests.bench import main

pytestmark = pytest.mark.integration


def test_quick_bench_writes_every_table_and_the_targets(stack, tmp_path):
    out, raw = tmp_path / "PERFORMANCE.md", tmp_path / "bench.json"
    artifacts = Path(stack.artifacts["synthesis8"]).parent
    argv = ["--quick", "--artifacts", str(artifacts), "--out", str(out), "--json", str(raw),
            "--nginx-url", stack.base_url, "--torchserve-url", stack.inference_url,
            "--management-url", stack.management_url]  # fmt: skip
    assert main(argv) == 0
    doc = json.loads(raw.read_text())
    served = {(r["target"], r["model"], r["concurrency"]) for r in doc["served"]}
    assert {("nginx", "synthesis8", 1), ("torchserve", "synthesis8", 16)} <= served
    assert {("peer", "synthesis8", 1), ("nginx", "manipulation_density", 8)} <= served
    assert all(r["errors"] == 0 and r["rps"] > 0 for r in doc["served"]), doc["served"]
    assert {r["path"] for r in doc["raw"]} >= {"fp32", "fp32_cl"}
    # the in-process predictors run on the path the served models chose at load
    chosen = {m: r["cpu_path"] for m, r in doc["served_runtime"].items()}
    assert {r["model"]: r["path"] for r in doc["in_process"]} == chosen
    # single images back to back and with idle cores before each call (the c=1 stream's gaps)
    assert all(r["p50_ms_b1"] > 0 and r["p50_ms_b1_paced"] > 0 for r in doc["in_process"])
    assert "| p50_ms_b1 | p50_ms_b1_paced |" in out.read_text()
    # CPU accounting where the benchmark started the server (the peer here; its own stacks in a
    # full run): each request cost the client and the server some CPU, the server more.
    peer = [r for r in doc["served"] if r["target"] == "peer"]
    assert all(0 < r["cpu_ms_client"] < r["cpu_ms_workers"] for r in peer), peer
    text = out.read_text()
    for heading in ("## Machine", "## Raw forward", "## Served", "## CPU time per served request",
                    "## Targets of issue #12"):  # fmt: skip
        assert heading in text
    cpu = text.split("## CPU time per served request")[1].split("## Targets")[0]
    assert cpu.count("| peer | none | synthesis8 |") == len(peer)
    targets = text.split("## Targets of issue #12")[1].split("## GPU")[0]
    assert targets.count("| met |") + targets.count("| MISSED |") == 8, targets
