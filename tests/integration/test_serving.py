"""The real TorchServe + nginx stack from the archives: endpoints, batching, errors, auth."""

from __future__ import annotations

import base64
import csv
import io
import itertools
import json
import os
import re
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import jsonschema
import numpy as np
import psutil
import pytest
import requests
from dicom_files import dicom_bytes
from PIL import Image
from test_loadtest import make_loadtest
from test_web import browser  # noqa: F401  (the chromium fixture, for the token test)

from medfakedet.artifacts import read_meta
from medfakedet.imaging import encode_png
from medfakedet.labels import CLASS_NAMES, ORGANS
from medfakedet.schema import Synthesis8Result

pytestmark = pytest.mark.integration
REPO = Path(__file__).resolve().parents[2]
OPENAPI = json.loads((REPO / "docs" / "openapi.json").read_text())


def conforms(path: str, r: requests.Response, method: str = "post") -> dict:
    """``r``'s JSON, checked against the OpenAPI document's schema for ``path`` and its status."""
    responses = OPENAPI["paths"][path][method]["responses"]
    declared = responses.get(str(r.status_code), responses.get("default"))
    assert declared is not None, f"{path} answered {r.status_code}, which is not documented"
    schema = declared["content"]["application/json"]["schema"]
    body = r.json()
    jsonschema.Draft202012Validator({**OPENAPI, **schema}).validate(body)
    return body


# ----------------------------------------------------------------------------- test images
def rect_image(size: int = 128, box=(40, 32, 80, 64), bright: float = 0.9) -> np.ndarray:
    """Dark gray image with one bright rectangle (x1, y1, x2, y2): the 'manipulated region'."""
    img = np.full((size, size), 0.1, dtype=np.float32)
    x1, y1, x2, y2 = box
    img[y1:y2, x1:x2] = bright
    return img


def png(pixels: np.ndarray) -> bytes:
    return encode_png(pixels)


def jpeg(pixels: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.rint(pixels * 255).astype(np.uint8)).save(buf, "JPEG", quality=95)
    return buf.getvalue()


def dicom(pixels: np.ndarray) -> bytes:
    return dicom_bytes(pixels, bits=16)


ENCODERS = {"png": png, "jpeg": jpeg, "dicom": dicom}


def box_tuple(b: dict) -> tuple[float, float, float, float]:
    return (b["x1"], b["y1"], b["x2"], b["y2"])


def decode_b64_png(text: str) -> Image.Image:
    im = Image.open(io.BytesIO(base64.b64decode(text)))
    assert im.format == "PNG"
    return im


def check_synthesis8(body: dict) -> None:
    Synthesis8Result.model_validate(body)
    assert list(body["probabilities"]) == list(CLASS_NAMES)
    assert list(body["organ_probabilities"]) == list(ORGANS)
    assert sum(body["probabilities"].values()) == pytest.approx(1.0, abs=1e-4)
    assert body["class_name"] == CLASS_NAMES[body["class_id"]]
    fake = sum(v for k, v in body["probabilities"].items() if k.endswith("_fake"))
    assert body["fake_probability"] == pytest.approx(fake, abs=1e-4)
    assert body["is_fake"] == body["class_name"].endswith("_fake")
    assert body["model_version"] == "0.0.1-test"
    # The stack's synthesis8 has statistics that no image meets: the served abstention.
    assert (body["verdict"], body["in_distribution"], body["in_distribution_score"]) == (
        "uncertain",
        False,
        0.0,
    )
    assert body["reason"].startswith("The image is unlike every image the model was trained on")


def batch_sizes(log: str, model: str) -> list[int]:
    return [int(n) for n in re.findall(rf"{model} batch_size=(\d+)", log)]


# ------------------------------------------------------------------------------- endpoints
@pytest.mark.parametrize("fmt", ["png", "jpeg", "dicom"])
def test_paper_endpoints_through_nginx_with_multipart_form(stack, fmt):
    data = ENCODERS[fmt](rect_image(256, box=(80, 64, 160, 128)))
    r = requests.post(
        f"{stack.base_url}/detect/synthesis8",
        files={"image": (f"scan.{fmt}", data)},
        timeout=60,
    )
    assert r.status_code == 200, r.text
    check_synthesis8(conforms("/detect/synthesis8", r))

    r = requests.post(
        f"{stack.base_url}/detect/manipulation_density",
        files={"image": (f"scan.{fmt}", data)},
        data={"thr": "0.3", "min_area": "20", "return_density": "true"},
        timeout=60,
    )
    assert r.status_code == 200, r.text
    body = conforms("/detect/manipulation_density", r)
    assert body["is_manipulated"] is True and body["count"] == 1
    # The stack's localizer has no statistics: the check is unknown and never abstains.
    assert (body["verdict"], body["in_distribution"], body["in_distribution_score"]) == (
        "manipulated",
        None,
        None,
    )
    assert body["threshold"] == 0.3 and body["min_area"] == 20
    assert body["image_size"] == {"width": 256, "height": 256}
    assert body["model_version"] == "0.0.2-test"
    assert "Manipulation likely" in body["message"]
    assert box_tuple(body["boxes"][0]) == pytest.approx((80, 64, 160, 128), abs=2)
    assert decode_b64_png(body["density_png"]).size == (128, 128)
    assert decode_b64_png(body["heatmap_png"]).size == (256, 256)


def test_untouched_image_has_no_boxes(stack):
    r = requests.post(
        f"{stack.base_url}/detect/manipulation_density",
        files={"image": ("plain.png", png(np.full((96, 96), 0.2, np.float32)))},
        timeout=60,
    )
    assert r.status_code == 200
    body = conforms("/detect/manipulation_density", r)
    assert (body["is_manipulated"], body["count"], body["boxes"]) == (False, 0, [])
    assert body["verdict"] == "untouched"
    assert body["presence_score"] < 0.01
    assert "No manipulation detected" in body["message"]
    assert "density_png" not in body


@pytest.mark.parametrize("fmt", ["png", "jpeg", "dicom"])
def test_torchserve_predictions_with_raw_bytes(stack, fmt):
    data = ENCODERS[fmt](rect_image(200, box=(20, 40, 100, 120)))
    r = requests.post(f"{stack.inference_url}/predictions/synthesis8", data=data, timeout=60)
    assert r.status_code == 200, r.text
    check_synthesis8(r.json())
    r = requests.post(
        f"{stack.inference_url}/predictions/manipulation_density", data=data, timeout=60
    )
    assert r.status_code == 200, r.text
    assert box_tuple(r.json()["boxes"][0]) == pytest.approx((20, 40, 100, 120), abs=2)


def test_curl_data_binary_content_type_works_through_nginx(stack):
    """curl --data-binary labels bytes as a url-encoded form; nginx passes them on as bytes."""
    r = requests.post(
        f"{stack.base_url}/detect/synthesis8",
        data=png(rect_image()),
        headers={"Content-Type": "application/x-www-form-urlencoded"},
        timeout=60,
    )
    assert r.status_code == 200, r.text
    check_synthesis8(r.json())


def test_json_base64_body(stack):
    b64 = base64.b64encode(png(rect_image())).decode()
    r = requests.post(
        f"{stack.base_url}/detect/manipulation_density",
        json={"image": f"data:image/png;base64,{b64}", "thr": 0.5, "min_area": 0},
        timeout=60,
    )
    assert r.status_code == 200, r.text
    body = r.json()
    assert (body["threshold"], body["min_area"]) == (0.5, 0)
    assert box_tuple(body["boxes"][0]) == (40, 32, 80, 64)


def test_explanations_return_gradcam_for_the_predicted_class(stack):
    data = png(rect_image(160))
    plain = requests.post(f"{stack.base_url}/detect/synthesis8", files={"image": data}, timeout=60)
    r = requests.post(
        f"{stack.base_url}/explanations/synthesis8", files={"image": data}, timeout=60
    )
    assert r.status_code == 200, r.text
    body = conforms("/explanations/synthesis8", r)
    assert body["class_name"] == plain.json()["class_name"]
    assert body["explanation"]["target_class"] == body["class_name"]
    assert decode_b64_png(body["heatmap_png"]).size == (160, 160)
    assert "heatmap_png" not in plain.json()


def test_boxes_are_in_uploaded_coordinates(stack):
    small = rect_image(128, box=(40, 32, 80, 64))
    large = np.kron(small, np.ones((4, 4), np.float32))  # the same image at 512 px
    got = []
    for pixels in (small, large):
        r = requests.post(
            f"{stack.base_url}/detect/manipulation_density",
            files={"image": ("m.png", png(pixels))},
            timeout=60,
        )
        assert r.status_code == 200, r.text
        assert r.json()["count"] == 1
        got.append(np.array(box_tuple(r.json()["boxes"][0])))
    assert got[0] == pytest.approx([40, 32, 80, 64], abs=0.5)
    assert got[1] == pytest.approx(got[0] * 4, abs=2)


# ---------------------------------------------------------------------- batching and errors
def test_32_concurrent_callers_are_batched_and_get_their_own_answers(stack):
    before = len(stack.model_log())
    boxes = [(3 * i, 8 + 2 * i, 3 * i + 24, 8 + 2 * i + 20) for i in range(32)]

    def localize(box):
        r = requests.post(
            f"{stack.base_url}/detect/manipulation_density",
            files={"image": ("m.png", png(rect_image(128, box=box)))},
            data={"min_area": "1"},
            timeout=120,
        )
        return r.status_code, r.json()

    rng = np.random.default_rng(7)
    images = [png(rng.random((64, 64), dtype=np.float32)) for _ in range(32)]

    def classify(data):
        r = requests.post(f"{stack.base_url}/detect/synthesis8", files={"image": data}, timeout=120)
        return r.status_code, r.json()

    with ThreadPoolExecutor(max_workers=32) as pool:
        located = list(pool.map(localize, boxes))
        classified = list(pool.map(classify, images))

    for (code, body), box in zip(located, boxes, strict=True):
        assert code == 200, body
        assert [box_tuple(b) for b in body["boxes"]] == [box]
    local = stack.served_predictor("synthesis8").predict(images)
    for (code, body), expected in zip(classified, local, strict=True):
        assert code == 200, body
        assert body["class_id"] == expected["class_id"]
        for name, p in expected["probabilities"].items():
            assert body["probabilities"][name] == pytest.approx(p, abs=1e-3)

    log = stack.model_log()[before:]
    for model in ("manipulation_density", "synthesis8"):
        sizes = batch_sizes(log, model)
        assert sum(sizes) == 32, sizes
        assert max(sizes) > 1, f"{model} never batched: {sizes}"


def _worker_pid(stack, model: str) -> int:
    info = requests.get(f"{stack.management_url}/models/{model}", timeout=10).json()
    (worker,) = info[0]["workers"]
    assert worker["status"] == "READY"
    return worker["pid"]


def test_bad_items_get_their_own_4xx_and_the_batch_survives(stack):
    pid = _worker_pid(stack, "manipulation_density")
    good = png(rect_image())
    truncated = good[: len(good) // 2]
    cases = [
        ("good", {"files": {"image": good}}, 200, None),
        ("empty", {"data": b""}, 400, "empty"),
        ("text", {"files": {"image": ("notes.txt", b"hello, not an image", "text/plain")}}, 400,
         "not a recognised image"),
        ("truncated", {"files": {"image": ("t.png", truncated)}}, 400, "truncated"),
        ("nan thr", {"files": {"image": good}, "data": {"thr": "nan"}}, 400, "thr must be"),
        ("negative thr", {"files": {"image": good}, "data": {"thr": "-0.1"}}, 400, "thr must be"),
        ("thr above 1", {"files": {"image": good}, "data": {"thr": "1.5"}}, 400, "thr must be"),
        ("text thr", {"files": {"image": good}, "data": {"thr": "high"}}, 400, "thr must be"),
        ("fraction area", {"files": {"image": good}, "data": {"min_area": "2.5"}}, 400,
         "min_area must be"),
        ("negative area", {"files": {"image": good}, "data": {"min_area": "-3"}}, 400,
         "min_area must be"),
        ("unknown field", {"files": {"image": good}, "data": {"treshold": "0.3"}}, 400,
         "unknown field"),
    ] + [(f"good {i}", {"files": {"image": good}}, 200, None) for i in range(5)]  # fmt: skip

    def send(case):
        _, kwargs, _, _ = case
        return requests.post(f"{stack.base_url}/detect/manipulation_density", timeout=60, **kwargs)

    before = len(stack.model_log())
    with ThreadPoolExecutor(max_workers=len(cases)) as pool:
        responses = list(pool.map(send, cases))
    for (name, _, status, text), r in zip(cases, responses, strict=True):
        assert r.status_code == status, (name, r.text)
        body = conforms("/detect/manipulation_density", r)
        if text:
            assert text in body["error"] and body["status"] == status, (name, r.text)
        else:
            assert r.json()["count"] == 1
    assert max(batch_sizes(stack.model_log()[before:], "manipulation_density")) > 1
    assert _worker_pid(stack, "manipulation_density") == pid  # the same worker, still READY


def test_nginx_limits_body_size(stack):
    r = requests.post(f"{stack.base_url}/detect/synthesis8", data=b"\0" * (51 * 2**20), timeout=60)
    assert r.status_code == 413


def test_ping_metrics_web_root_and_the_openapi_document(stack):
    ping = requests.get(f"{stack.base_url}/ping", timeout=10)
    assert conforms("/ping", ping, "get")["status"] == "Healthy"
    doc = requests.get(f"{stack.base_url}/openapi.json", timeout=10)
    assert doc.status_code == 200 and doc.headers["Content-Type"] == "application/json"
    assert doc.json() == OPENAPI  # the page's neighbour is the committed, current document
    metrics = requests.get(f"{stack.metrics_url}/metrics", timeout=10)
    assert metrics.status_code == 200 and "ts_inference_requests_total" in metrics.text
    assert requests.get(f"{stack.base_url}/", timeout=10).status_code in (200, 403, 404)


def _describe(stack, model: str) -> dict:
    """The handler's describe metadata, from the (non-public) management API."""
    r = requests.get(f"{stack.management_url}/models/{model}?customized=true", timeout=60)
    return r.json()[0]["customizedMetadata"]


def test_model_cards_through_nginx_and_straight_on_torchserve(stack):
    """GET /detect/<model> answers the public card: the describe metadata's version and hash,
    the artifacts' calibrated values; on TorchServe, a GET with nginx's header is the same; card
    GETs mixed with uploads each get their own answer; a POST without image is still a 400."""
    calibration = read_meta(stack.artifacts["manipulation_density"])["calibration"]
    for model in ("synthesis8", "manipulation_density"):
        r = requests.get(f"{stack.base_url}/detect/{model}", timeout=60)
        assert r.status_code == 200 and r.headers["Content-Type"] == "application/json", r.text
        card = conforms(f"/detect/{model}", r, "get")
        meta = _describe(stack, model)
        assert (card["task"], card["version"]) == (model, meta["version"])
        assert card["model_sha256"] == meta["model_sha256"]
        assert len(card["model_sha256"]) == 64
        assert card["runtime"] == {k: meta["runtime"][k] for k in ("device", "cpu_path")}
        assert requests.get(f"{stack.base_url}/predictions/{model}", timeout=60).json() == card
        direct = f"{stack.inference_url}/predictions/{model}"  # nginx's header, sent by hand
        ask = {"X-MedFakeDet-Card": "1"}
        assert requests.get(direct, headers=ask, timeout=60).json() == card
        assert requests.get(direct, timeout=60).status_code == 400  # no header: an empty body
        assert str(stack.artifacts[model]) not in r.text and "/" not in r.text  # no paths
    density = requests.get(f"{stack.base_url}/detect/manipulation_density", timeout=60).json()
    assert density["threshold"]["default"] == calibration["box_threshold"]
    assert density["min_area"]["default"] == calibration["min_area"]
    assert density["presence_threshold"] == calibration["presence_threshold"]
    assert density["min_area"]["max"] == 128 * 128
    s8 = requests.get(f"{stack.base_url}/detect/synthesis8", timeout=60).json()
    assert s8["labels"] == list(CLASS_NAMES) and s8["temperature"] == 1.5
    assert s8["in_distribution_check"] is True and s8["input"]["max_bytes"] == 50 * 2**20

    def call(i: int) -> requests.Response:
        url = f"{stack.base_url}/detect/manipulation_density"
        if i % 2:
            return requests.get(url, timeout=60)
        return requests.post(url, files={"image": png(rect_image())}, timeout=60)

    with ThreadPoolExecutor(max_workers=8) as pool:
        answers = list(pool.map(call, range(8)))
    assert [r.status_code for r in answers] == [200] * 8
    assert [r.json() == density for r in answers] == [False, True] * 4
    assert all(r.json()["count"] == 1 for r in answers[::2])
    url = f"{stack.base_url}/detect/manipulation_density"
    empty = requests.post(url, data=b"", timeout=60)
    assert empty.status_code == 400 and "empty" in empty.json()["error"]
    # nginx drops a client's own card header on a POST: the upload is answered
    spoof = requests.post(url, data=png(rect_image()), headers=ask, timeout=60)
    assert spoof.status_code == 200 and spoof.json()["count"] == 1


def test_workers_import_the_archived_package(stack):
    lines = re.findall(r"(\w+) ready: .*medfakedet_dirs=(\[.*\])", stack.model_log())
    assert {m for m, _ in lines} == {"synthesis8", "manipulation_density"}
    for _, dirs in lines:
        for d in json.loads(dirs.replace("'", '"')):
            assert not Path(d).is_relative_to(REPO), f"worker imported the source tree: {d}"


def test_workers_run_numpy_s_blas_on_one_thread(stack):
    """numpy's OpenBLAS threads beside torch's oversubscribe the cores (issue #12): every model
    worker starts with OPENBLAS_NUM_THREADS=1 unless the caller's environment says otherwise."""
    workers = [
        p
        for p in psutil.Process(stack.stack.torchserve_pid).children(recursive=True)
        if "model_service_worker" in " ".join(p.cmdline())
    ]
    assert len(workers) >= 2  # one per model at least
    expected = os.environ.get("OPENBLAS_NUM_THREADS", "1")
    assert {w.environ().get("OPENBLAS_NUM_THREADS") for w in workers} == {expected}


def test_torchserve_logs_each_line_once_and_no_per_request_chatter(stack):
    """config/log4j2.xml (issue #12): TorchServe's built-in logging wrote every frontend line
    three times and ~10 DEBUG/INFO lines per request; ours keeps the start-up and lifecycle
    lines once each, the access log's line per request, and the handler's batch lines."""
    access = stack.log_dir / "access_log.log"
    before = len(access.read_text().splitlines())
    for seed in range(6):
        data = png(np.random.default_rng(seed).random((64, 64), dtype=np.float32))
        r = requests.post(f"{stack.base_url}/detect/synthesis8", files={"image": data}, timeout=60)
        assert r.status_code == 200, r.text
    assert len(access.read_text().splitlines()) - before == 6
    ts_log = (stack.log_dir / "ts_log.log").read_text(errors="replace").splitlines()
    assert any("Connecting to" in line for line in ts_log)  # worker start-up is still there
    for chatter in ("Flushing req.cmd", "Backend response time", "Sending response for jobId"):
        assert not any(chatter in line for line in ts_log), chatter
    assert all(a != b for a, b in itertools.pairwise(ts_log)), "a line written twice"
    assert re.search(r"synthesis8 batch_size=\d", stack.model_log())


def _refused(r: requests.Response) -> bool:
    """TorchServe 0.12 refuses a missing or wrong token with 400 (not 401) and this message."""
    return r.status_code in (400, 401) and "Token Authorization failed" in r.text


def test_token_authorization_in_production_config(token_stack):
    url = f"{token_stack.inference_url}/predictions/synthesis8"
    keys = token_stack.stack.keys()
    assert {"inference", "management"} <= set(keys)
    data = png(rect_image())
    assert _refused(requests.post(url, data=data, timeout=60))
    wrong = {"Authorization": "Bearer not-the-key"}
    assert _refused(requests.post(url, data=data, headers=wrong, timeout=60))
    mkey = {"Authorization": f"Bearer {keys['management']}"}
    assert _refused(requests.post(url, data=data, headers=mkey, timeout=60))
    ok = {"Authorization": f"Bearer {keys['inference']}"}
    r = requests.post(url, data=data, headers=ok, timeout=60)
    assert r.status_code == 200, r.text
    check_synthesis8(r.json())
    mgmt = f"{token_stack.management_url}/models/synthesis8"
    assert _refused(requests.get(mgmt, timeout=10))
    assert requests.get(mgmt, headers=mkey, timeout=10).status_code == 200


@pytest.mark.browser
def test_the_page_and_the_cli_send_the_token_through_nginx(token_stack, browser, tmp_path, capsys):  # noqa: F811
    """The production setting end to end for the clients: the page's Token field and
    ``medfakedet scan --token`` reach synthesis8 through nginx; without the token both say
    what is wrong."""
    from medfakedet.cli import main

    key = token_stack.stack.keys()["inference"]
    scan = tmp_path / "scan.png"
    scan.write_bytes(png(rect_image()))
    args = ["scan", str(scan), "--server", token_stack.base_url, "--localize", "never"]
    assert main([*args, "--format", "json", "--token", key]) == 0
    (row,) = json.loads(capsys.readouterr().out)["results"]
    assert row["status"] == "ok" and row["model_version"] == "0.0.1-test"
    assert main([*args, "--format", "json"]) == 2  # no token: an error row, exit 2
    (row,) = json.loads(capsys.readouterr().out)["results"]
    assert row["status"] == "error" and "token" in row["error"].lower()

    page = browser.new_page()
    page.goto(token_stack.base_url + "/")
    page.set_input_files("#file-input", str(scan))
    page.get_by_role("alert").wait_for(state="visible")
    assert "token" in page.locator("#error-message").inner_text().lower()
    page.fill("#token", key)
    again = tmp_path / "scan_again.png"
    again.write_bytes(scan.read_bytes())
    with page.expect_response(lambda r: r.url.endswith("/detect/synthesis8")) as resp:
        page.set_input_files("#file-input", str(again))
    assert resp.value.status == 200, resp.value.text()
    assert resp.value.request.headers["authorization"] == f"Bearer {key}"
    page.locator("#synthesis").wait_for(state="visible")  # (this stack has no localizer)
    assert page.locator("#verdict-badge").text_content() == "Uncertain"
    page.close()


def test_production_start_waits_with_the_token_and_nginx_passes_it(token_stack):
    """Issue #11: ``deploy start`` with config.production.properties returned, so /ping through
    nginx answered 200 with the inference key (TorchServe refuses /ping without it too)."""
    base, key = token_stack.base_url, token_stack.stack.keys()["inference"]
    auth = {"Authorization": f"Bearer {key}"}
    assert requests.get(f"{base}/ping", headers=auth, timeout=10).status_code == 200
    assert _refused(requests.get(f"{base}/ping", timeout=10))
    files = {"image": ("scan.png", png(rect_image()))}
    refused = requests.post(f"{base}/detect/synthesis8", files=files, timeout=60)
    assert _refused(refused) and refused.headers["Content-Type"] == "application/json"
    r = requests.post(f"{base}/detect/synthesis8", files=files, headers=auth, timeout=60)
    assert r.status_code == 200 and r.headers["Content-Type"] == "application/json"
    check_synthesis8(r.json())
    # The model card is an API call like the others: the token is needed for it too.
    assert _refused(requests.get(f"{base}/detect/synthesis8", timeout=60))
    card = requests.get(f"{base}/detect/synthesis8", headers=auth, timeout=60)
    assert card.status_code == 200 and card.json()["version"] == "0.0.1-test"
    assert card.json()["model_sha256"] == r.json()["model_sha256"]


def test_locust_sends_the_token(token_stack, tmp_path):
    """``make loadtest`` against the production config (synthesis8 only, hence the tag): with
    MEDFAKEDET_TOKEN every request is answered, without it every request is refused."""
    key = token_stack.stack.keys()["inference"]
    shape, tags = (4, 2, 6), "--tags synthesis8"  # 4 users, ramp 2 s, hold 6 s
    runs = {}
    for name, token in (("with", key), ("without", None)):
        done, rows = make_loadtest(token_stack.base_url, tmp_path / name, shape, token, tags)
        total = next(r for r in rows if r["Name"] == "Aggregated")
        names = {r["Name"] for r in rows} - {"Aggregated"}
        runs[name] = (done, int(total["Request Count"]), int(total["Failure Count"]), names)
        failures = list(csv.DictReader((tmp_path / name / "loadtest_failures.csv").open()))
        print(name, runs[name][1:], [(f["Error"], f["Occurrences"]) for f in failures])
        assert names and all(n.startswith("/detect/synthesis8") for n in names), names
    done, requests_with, failed_with, _ = runs["with"]
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert requests_with >= 4 and failed_with == 0
    done, requests_without, failed_without, _ = runs["without"]
    assert done.returncode != 0  # locust's exit code on failures
    assert requests_without >= 4 and failed_without == requests_without
    assert all("Token Authorization failed" in f["Error"] for f in failures), failures
