"""Issue #15: ``make stop`` then ``make serve`` at once, on the same ports, as a new user does it.

The first stack answers a few requests on the paper endpoints through nginx over keep-alive
connections; stopping nginx closes them from the server side, so they linger in TIME-WAIT on the
nginx port. The second start on the same ports must not mind them, and answers exactly as the
first one did: exactly where both starts chose the same CPU path, and within bf16's rounding where
the timed ``auto`` choice (medfakedet.fastpath) differs between the two starts on a loaded
machine with native bf16.
"""

from __future__ import annotations

import numpy as np
import psutil
import pytest
import requests

from medfakedet.deploy import StackConfig, free_ports, stop
from medfakedet.imaging import encode_png

pytestmark = pytest.mark.integration
BOX = (40, 32, 88, 80)  # x1, y1, x2, y2 of the bright "manipulated" region


def scan(seed: int) -> bytes:
    """A noisy dark 128x128 image with one bright rectangle at BOX."""
    img = np.random.default_rng(seed).uniform(0.05, 0.15, (128, 128)).astype(np.float32)
    x1, y1, x2, y2 = BOX
    img[y1:y2, x1:x2] = 0.9
    return encode_png(img)


def ask_both(http, base_url: str, seed: int) -> tuple[dict, dict]:
    """Both paper endpoints through nginx; each must answer 200."""
    files = {"image": ("scan.png", scan(seed))}
    s8 = http.post(f"{base_url}/detect/synthesis8", files=files, timeout=60)
    assert s8.status_code == 200, s8.text
    md = http.post(f"{base_url}/detect/manipulation_density", files=files, timeout=60)
    assert md.status_code == 200, md.text
    box = md.json()["boxes"][0]
    assert (box["x1"], box["y1"], box["x2"], box["y2"]) == pytest.approx(BOX, abs=2)
    return s8.json(), md.json()


def nginx_port_states(port: int) -> set[str]:
    conns = psutil.net_connections("tcp")
    return {c.status for c in conns if c.laddr and c.laddr.port == port}


def test_stop_then_start_again_at_once_on_the_same_ports(start_stack, model_store, serving_root):
    log_dir = serving_root / "restart-logs"
    cfg = StackConfig(log_dir=log_dir, model_store=model_store, ports=free_ports())
    try:
        first = start_stack(cfg)
        paths_a = {m: first.served_cpu_path(m) for m in ("synthesis8", "manipulation_density")}
        with requests.Session() as keep_alive:
            before = [ask_both(keep_alive, first.base_url, seed) for seed in range(3)]
            assert stop(log_dir)  # nginx closes the idle keep-alive connections itself
        states = nginx_port_states(cfg.ports["nginx"])
        assert psutil.CONN_TIME_WAIT in states and psutil.CONN_LISTEN not in states, states

        second = start_stack(cfg)  # the same ports, at once
        assert second.base_url == first.base_url
        after = [ask_both(requests, second.base_url, seed) for seed in range(3)]
        paths_b = {m: second.served_cpu_path(m) for m in paths_a}
        same_s8 = paths_a["synthesis8"] == paths_b["synthesis8"]
        same_md = paths_a["manipulation_density"] == paths_b["manipulation_density"]
        for (s8_a, md_a), (s8_b, md_b) in zip(before, after, strict=True):
            tolerance = 1e-5 if same_s8 else 2e-3  # bf16 vs fp32 moves them by ~5e-4
            assert s8_b["probabilities"] == pytest.approx(s8_a["probabilities"], abs=tolerance)
            if same_s8:
                assert s8_b["verdict"] == s8_a["verdict"]
            if same_md:
                assert md_b == md_a, (paths_a, paths_b)
            else:  # ask_both has checked each start's box against BOX
                assert len(md_b["boxes"]) == len(md_a["boxes"]), (paths_a, paths_b)
    finally:
        stop(log_dir)
