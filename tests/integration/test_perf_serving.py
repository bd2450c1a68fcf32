"""Issue #12 on a real TorchServe: the batch-size histogram and the per-stage timings on the
metrics port, and the CPU path chosen at load in the model's metadata."""

from __future__ import annotations

import json
import re
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import requests

from medfakedet.imaging import encode_png
from medfakedet.serving_metrics import BATCH_SIZE, STAGE_SECONDS, STAGES

pytestmark = pytest.mark.integration

REQUESTS = 12


def _series(text: str, name: str, model: str, suffix: str) -> dict[str, float]:
    """``{labels: value}`` of the ``name{suffix}`` lines of ``model`` in a Prometheus page."""
    pattern = re.compile(rf"^{name}_{suffix}\{{(.*)\}} ([0-9.eE+-]+)$", re.M)
    return {m[1]: float(m[2]) for m in pattern.finditer(text) if f'ModelName="{model}"' in m[1]}


def test_batch_size_histogram_and_stage_timings_on_the_metrics_port(stack):
    before = requests.get(f"{stack.metrics_url}/metrics", timeout=10).text
    counted = sum(_series(before, BATCH_SIZE, "synthesis8", "count").values())
    image = encode_png(np.linspace(0, 1, 64 * 64, dtype=np.float32).reshape(64, 64))

    def post(_i: int) -> int:
        url = f"{stack.base_url}/detect/synthesis8"
        return requests.post(url, files={"image": ("a.png", image)}, timeout=120).status_code

    with ThreadPoolExecutor(4) as pool:
        assert set(pool.map(post, range(REQUESTS))) == {200}
    text = requests.get(f"{stack.metrics_url}/metrics", timeout=10).text
    assert f"# TYPE {BATCH_SIZE} histogram" in text, text[-2000:]
    batches = sum(_series(text, BATCH_SIZE, "synthesis8", "count").values()) - counted
    images = sum(_series(text, BATCH_SIZE, "synthesis8", "sum").values())
    assert 1 <= batches <= REQUESTS  # 4 concurrent clients: some batches may hold several
    assert images >= REQUESTS
    seconds = _series(text, STAGE_SECONDS, "synthesis8", "sum")
    by_stage = {s: sum(v for k, v in seconds.items() if f'Stage="{s}"' in k) for s in STAGES}
    assert all(v > 0 for v in by_stage.values()), by_stage
    assert by_stage["forward"] > by_stage["decode"]  # a 64-px PNG decodes faster than resnet18


def test_the_chosen_cpu_path_is_in_the_model_metadata(stack):
    for model in ("synthesis8", "manipulation_density"):
        r = requests.get(f"{stack.management_url}/models/{model}?customized=true", timeout=60)
        assert r.status_code == 200, r.text
        meta = r.json()[0]["customizedMetadata"]  # the handler's describe(), as JSON
        print(model, json.dumps(meta))
        runtime = meta["runtime"]
        assert meta["task"] == model and runtime["device"] == "cpu"
        assert runtime["cpu_path"] in ("fp32", "fp32_cl", "bf16_cl")
        assert runtime["reason"].startswith("measured"), runtime  # model-config.yaml: auto
        assert "fp32" in runtime["timings_ms"]
