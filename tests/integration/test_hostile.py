"""Issue #11 against the running stack (TorchServe + nginx from the archives): hostile requests,
bombs, a killed worker under load and a short soak. Every request gets an answer; every hostile
one a 4xx with a JSON message; no valid one fails; no worker restarts except the one we kill.

Longer runs against any stack: ``scripts/fault_injection.py`` and ``scripts/soak.py``.
"""

from __future__ import annotations

import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor

import hostile_inputs as h
import numpy as np
import psutil
import pytest
from hostile_requests import (
    BOMBS,
    S8,
    Answer,
    Probe,
    RssPeak,
    check_valid,
    hostile_failures,
    hostile_requests,
    kill_worker_under_load,
    multipart,
    rect_image,
    run_mixed,
    send,
    upload,
    valid_request,
    workers,
)

from medfakedet.deploy import StackConfig, free_ports, stop
from medfakedet.deploy.archive import build_archive
from medfakedet.serving import HANG_ENV, HANG_MARKER

pytestmark = pytest.mark.integration
N_HOSTILE = 1000


def test_1000_hostile_requests_get_json_4xx_and_valid_ones_still_answer(stack):
    before = workers(stack.management_url)
    pairs = run_mixed(stack.base_url, hostile_requests(N_HOSTILE))
    hostile = [(p, a) for p, a in pairs if p.kind != "valid"]
    valid = [(p, a) for p, a in pairs if p.kind == "valid"]
    assert len(hostile) == N_HOSTILE and len(valid) == N_HOSTILE // 9
    assert len({p.kind for p, _ in hostile}) >= 50
    failures = hostile_failures(pairs)
    assert not failures, f"{len(failures)} hostile answers not a JSON 4xx:\n" + "\n".join(
        sorted(set(failures))[:30]
    )
    for probe, answer in valid:
        check_valid(probe, answer)
    assert workers(stack.management_url) == before  # no worker restarted
    statuses = Counter(a.status for _, a in hostile)
    print(f"hostile: {len(hostile)} requests, statuses {dict(sorted(statuses.items()))}")


@pytest.mark.parametrize("name", list(BOMBS))
def test_each_bomb_is_answered_within_5_s_and_512_mib(stack, name):
    data, status = BOMBS[name]
    pids = [pid for model in workers(stack.management_url).values() for _, _, pid in model]
    probe = upload(name, S8, data)
    with RssPeak(pids) as rss:
        start = time.perf_counter()
        answer = send(stack.base_url, probe)
        seconds = time.perf_counter() - start
    print(f"{name}: {answer.status} in {seconds:.2f} s, worker RSS +{rss.growth_mib:.0f} MiB")
    assert answer.status == status, answer.body[:300]
    assert answer.content_type.startswith("application/json")
    assert seconds < 5.0
    assert rss.growth_mib <= 512


def test_sigkill_of_a_worker_under_load_recovers_and_every_request_is_answered(stack):
    recovered, statuses = kill_worker_under_load(stack.base_url, stack.management_url)
    print(f"SIGKILL recovery {recovered} s; statuses {statuses}")
    assert recovered is not None and recovered < 30
    # every request got an answer: 200, or for the batch in flight TorchServe's 507 or, for
    # its 500 "Worker died.", nginx's JSON 503
    assert set(statuses) <= {200, 502, 503, 507}, statuses
    assert sum(n for code, n in statuses.items() if code != 200) <= 16  # a batch or two


def soak(stack, seconds: float, threads: int = 4) -> tuple[list[Answer], float]:
    """Valid requests from ``threads`` clients for ``seconds``; the workers' RSS growth (%)."""
    pids = [pid for model in workers(stack.management_url).values() for _, _, pid in model]
    procs = [psutil.Process(p) for p in pids]
    rss0 = sum(p.memory_info().rss for p in procs)
    answers: list[Answer] = []
    deadline = time.monotonic() + seconds

    def client(seed: int) -> None:
        i = seed
        while time.monotonic() < deadline:
            probe = valid_request(i)
            start = time.perf_counter()
            answer = send(stack.base_url, probe)
            answer.seconds = time.perf_counter() - start
            check_valid(probe, answer)
            answers.append(answer)
            i += threads

    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(client, range(threads)))
    growth = 100 * (sum(p.memory_info().rss for p in procs) - rss0) / rss0
    return answers, growth


def test_short_soak_has_no_errors_and_flat_memory(stack):
    soak(stack, 3)  # warm the allocator before measuring
    answers, growth = soak(stack, 20)
    latencies = sorted(a.seconds for a in answers)
    p99 = latencies[int(0.99 * (len(latencies) - 1))]
    print(f"soak: {len(answers)} requests in 20 s, p99 {p99 * 1000:.0f} ms, RSS {growth:+.1f}%")
    assert answers  # each one checked by soak(): 200 and the right answer
    assert growth < 5.0


@pytest.fixture(scope="module")
def hanging_stack(start_stack, serving_artifacts, serving_root):
    """synthesis8 (responseTimeout 5 s) + nginx, whose worker sleeps on a marked request."""
    root = serving_root / "hang"
    config = root / "model-config.yaml"
    root.mkdir(parents=True, exist_ok=True)
    config.write_text(
        "minWorkers: 1\nmaxWorkers: 1\nbatchSize: 8\nmaxBatchDelay: 20\n"
        "responseTimeout: 5\nstartupTimeout: 300\n"
    )
    store = root / "store"
    build_archive("synthesis8", serving_artifacts["synthesis8"], store, model_config=config)
    cfg = StackConfig(
        log_dir=root / "logs",
        model_store=store,
        ports=free_ports(),
        models=("synthesis8",),
        env={HANG_ENV: "600"},
    )
    yield start_stack(cfg)
    stop(cfg.log_dir)


def test_hung_inference_past_response_timeout_is_answered_and_the_worker_recovers(
    hanging_stack,
):
    base, models = hanging_stack.base_url, ("synthesis8",)
    (old,) = workers(hanging_stack.management_url, models=models)["synthesis8"]
    with ThreadPoolExecutor(4) as pool:
        start = time.perf_counter()
        hung = pool.submit(send, base, upload("hang", S8, HANG_MARKER + b"x"))
        time.sleep(0.5)
        others = [pool.submit(send, base, valid_request(2 * i)) for i in range(3)]
        answer = hung.result()
        seconds = time.perf_counter() - start
        late = [f.result() for f in others]
    print(f"hung request: {answer.status} after {seconds:.1f} s; others {[a.status for a in late]}")
    assert answer.status == 503 and "responseTimeout" in answer.json()["message"]
    assert 4.5 < seconds < 60
    # queued behind it or batched with it: a 200 once the worker is back, or the same 503
    for probe_answer in late:
        assert probe_answer.status in (200, 503), probe_answer.body[:200]
    deadline = time.monotonic() + 60
    while send(base, valid_request(0)).status != 200:
        assert time.monotonic() < deadline, "the worker did not come back within 60 s"
        time.sleep(0.5)
    (new,) = workers(hanging_stack.management_url, models=models)["synthesis8"]
    assert new[2] != old[2]  # TorchServe replaced the hung worker process


def test_20000_parts_get_a_short_json_400_not_a_dropped_connection(stack):
    """Issue #11: "a request with very many parts lost its connection mid-response" (the 400
    named every unknown field; TorchServe reset the connection while sending it)."""
    fields = [("image", "a.png", rect_image(1))] + [(f"f{i}", None, b"1") for i in range(20000)]
    probe = multipart(fields)
    probe.path = S8
    start = time.perf_counter()
    answer = send(stack.base_url, probe)
    print(f"20000 parts: {answer.status} in {time.perf_counter() - start:.1f} s")
    assert answer.status == 400 and len(answer.body) < 2000
    assert "unknown field(s) 'f0', 'f1', 'f10'" in answer.json()["error"]
    assert "and 19990 more" in answer.json()["error"]


def test_eight_jpeg_bombs_in_one_batch_stay_within_the_memory_budget(stack):
    """Issue #11: eight 333-byte JPEGs declaring 8000x8000 in one batch needed about 8 GiB."""
    bomb = h.jpeg_declaring(8000, 8000)
    pids = [pid for model in workers(stack.management_url).values() for _, _, pid in model]
    with RssPeak(pids) as rss, ThreadPoolExecutor(8) as pool:
        start = time.perf_counter()
        probe = upload("bomb", "/detect/manipulation_density", bomb)  # it answers image_size
        answers = list(pool.map(lambda _: send(stack.base_url, probe), range(8)))
        seconds = time.perf_counter() - start
    print(f"8 JPEG bombs at once: {seconds:.2f} s, worker RSS +{rss.growth_mib:.0f} MiB")
    assert [a.status for a in answers] == [200] * 8
    assert all(a.json()["image_size"] == {"width": 8000, "height": 8000} for a in answers)
    assert rss.growth_mib <= 512
    assert seconds < 30  # generous: the bound of issue #11 is per bomb (the test above)


def test_dicom_with_nan_window_center_answers_strict_json(stack):
    """Issue #11: a DICOM whose WindowCenter is "NaN" got a 200 with a literal NaN in it."""
    pixels = (np.arange(128 * 128).reshape(128, 128) % 251).astype(np.uint8)
    data = h.dicom_plain(pixels, WindowCenter="NaN", WindowWidth="NaN", RescaleSlope="NaN")
    for path in (S8, "/detect/manipulation_density"):
        answer = send(stack.base_url, upload("nan window", path, data))
        assert answer.status == 200, answer.body[:300]
        assert answer.content_type == "application/json"
        answer.json()  # raises on NaN / Infinity


def test_a_flood_from_one_address_gets_json_429s_and_nothing_else_breaks(stack):
    """nginx's limits per address (64 connections; 100 requests/s, bursts of 200 queued): 600
    requests from 250 connections at once, on a static path so that TorchServe is not
    involved; the excess gets a JSON 429."""
    probe = Probe("flood", "/openapi.json", method="GET")
    with ThreadPoolExecutor(250) as pool:
        answers = list(pool.map(lambda _: send(stack.base_url, probe), range(600)))
    statuses = Counter(a.status for a in answers)
    print(f"flood of 600 from 250 connections: {dict(statuses)}")
    assert set(statuses) == {200, 429} and statuses[429] >= 100, statuses
    limited = next(a for a in answers if a.status == 429)
    assert limited.content_type == "application/json" and "retry" in limited.json()["message"]
    time.sleep(3)  # the bucket drains at 100/s: later tests are not limited
    check_valid(valid_request(1), send(stack.base_url, valid_request(1)))


def test_an_image_that_decodes_too_slowly_is_cut_at_the_time_limit(stack):
    """A 500 KB PNG whose 512 MB of rows take more than the 3 s per-image limit to inflate
    here: the worker stops decoding it (SIGALRM between zlib chunks) and answers 413."""
    data = h.png_slow_bomb()
    pids = [pid for model in workers(stack.management_url).values() for _, _, pid in model]
    with RssPeak(pids) as rss:
        start = time.perf_counter()
        answer = send(stack.base_url, upload("slow PNG", S8, data))
        seconds = time.perf_counter() - start
    print(f"slow PNG: {answer.status} in {seconds:.2f} s, worker RSS +{rss.growth_mib:.0f} MiB")
    if answer.status != 200:  # a fast machine decodes it within the limit: then it is legal
        assert answer.status == 413 and "3 s limit" in answer.json()["error"]
    assert seconds < 5.0
    assert rss.growth_mib <= 512
