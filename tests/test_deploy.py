"""deploy without a server: what goes into an archive, rendered configs, port checks (issue #15)
and that ``stop`` signals only the processes ``start`` started."""

from __future__ import annotations

import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import psutil
import pytest

from medfakedet.deploy import (
    DeployError,
    Stack,
    StackConfig,
    build_archive,
    can_bind,
    check_model_config,
    check_ports_free,
    free_port,
    free_ports,
    is_alive,
    render_nginx_config,
    render_properties,
    render_template,
    render_torchserve_config,
    serving_modules,
    stack_status,
    stage_archive_files,
    stop,
)

REPO = Path(__file__).resolve().parents[1]


# ------------------------------------------------------------------------------- archives
def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text))
    return path


def test_serving_modules_follow_every_kind_of_import(tmp_path):
    pkg = tmp_path / "pkg"
    write(pkg / "__init__.py", "")
    write(pkg / "a.py", "from pkg.b import x\nimport numpy\n")
    write(pkg / "b.py", "from .c import y\nx = 1\ndef late():\n    import pkg.sub.deep\n")
    write(pkg / "c.py", "from pkg import lazy\ny = 2\n")
    write(pkg / "lazy.py", "from . import x\n")  # `from . import name`: pkg.x is not a module
    write(pkg / "sub" / "__init__.py", "")
    write(pkg / "sub" / "deep.py", "from ..c import y\n")
    write(pkg / "unused.py", "import pkg.a\n")
    handler = write(tmp_path / "handler.py", "import logging\nfrom pkg.a import x\n")

    assert serving_modules([handler], pkg) == (
        "__init__.py",
        "a.py",
        "b.py",
        "c.py",
        "lazy.py",
        "sub/__init__.py",
        "sub/deep.py",
    )


def test_archive_holds_what_the_handlers_import_and_nothing_for_building(tmp_path):
    modules = serving_modules()
    assert {"__init__.py", "predictors.py", "requests.py", "imaging.py"} <= set(modules)
    for left_out in ("cli.py", "metrics.py", "deploy/", "data/"):
        assert not any(m.startswith(left_out) for m in modules), (left_out, modules)


@pytest.mark.parametrize(
    ("text", "why"),
    [
        ("batchSize: 8\nmaxBatchDelay: 0\n", "maxBatchDelay must be a whole number of at least 1"),
        ("batchSize: 0\nmaxBatchDelay: 5\n", "batchSize must be a whole number of at least 1"),
        ("batchSize: 8\nmaxBatchDelay: 2.5\n", "maxBatchDelay must be .* got 2.5"),
        ("batchSize: true\n", "batchSize must be .* got True"),
        ("- a list\n", "is not a mapping"),
        ("batchSize: [8\n", "cannot read the model config"),
    ],
)
def test_a_model_config_whose_batching_torchserve_would_misread_is_refused(tmp_path, text, why):
    """maxBatchDelay 0 would make TorchServe wait its default 100 ms, not 0 (measured): the
    archive is refused before torch-model-archiver runs, with the key named."""
    config = write(tmp_path / "model-config.yaml", text)
    with pytest.raises(DeployError, match=why):
        check_model_config(config)
    with pytest.raises(DeployError, match=why):  # before any artifact is read or archived
        build_archive("synthesis8", REPO / "artifacts" / "synthesis8", tmp_path / "out", config)
    assert not (tmp_path / "out").exists()


def test_the_shipped_model_configs_pass_the_check():
    for task in ("synthesis8", "manipulation_density"):
        config = check_model_config(REPO / "config" / task / "model-config.yaml")
        assert config["batchSize"] > 1 and config["maxBatchDelay"] >= 1


def test_staged_archive_imports_every_module_without_the_source_tree(tmp_path):
    """Any serving module missing from the archive would fail this import."""
    artifact = tmp_path / "artifact"
    write(artifact / "artifact.json", "{}")
    write(artifact / "model.safetensors", "")
    stage = stage_archive_files(artifact, tmp_path / "stage")
    staged = sorted(p.relative_to(stage).as_posix() for p in stage.rglob("*.py"))
    assert staged == [f"medfakedet/{m}" for m in serving_modules()]
    names = [m.removesuffix(".py").removesuffix("/__init__").replace("/", ".") for m in staged]
    code = f"""
        import importlib, sys
        sys.meta_path[:] = [f for f in sys.meta_path if "editable" not in repr(f).lower()]
        sys.path.insert(0, {str(stage)!r})
        for name in {names!r} + ["medfakedet.predictors", "medfakedet.requests"]:
            module = importlib.import_module(name)
            assert module.__file__.startswith({str(stage)!r}), module.__file__
        print(len(sys.modules))
        """
    done = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, cwd=tmp_path
    )
    assert done.returncode == 0, done.stderr


# ------------------------------------------------------------------------------- rendering
def test_render_properties_replaces_keys_and_appends_new_ones():
    text = "# a=comment\na=1\nb = 2\n"
    assert render_properties(text, {"b": "3", "c": "4"}) == "# a=comment\na=1\nb=3\nc=4\n"


def test_render_template_refuses_an_unfilled_placeholder():
    assert render_template("listen {{PORT}};", {"PORT": "80"}) == "listen 80;"
    with pytest.raises(DeployError, match=r"unfilled placeholder \{\{ROOT\}\}"):
        render_template("listen {{PORT}}; root {{ROOT}};", {"PORT": "80"})


@pytest.mark.parametrize(
    ("config", "token_auth"),
    [("config.properties", False), ("config.production.properties", True)],
)
def test_torchserve_and_nginx_configs_carry_the_stack_ports(tmp_path, config, token_auth):
    ports = free_ports()
    cfg = StackConfig(
        log_dir=tmp_path, model_store=tmp_path / "store", config=REPO / "config" / config,
        ports=ports, models=("synthesis8",),
    )  # fmt: skip
    path, auth = render_torchserve_config(cfg)
    text = path.read_text()
    assert auth is token_auth
    assert f"inference_address=http://127.0.0.1:{ports['inference']}\n" in text
    assert f"grpc_management_port={ports['grpc_management']}\n" in text
    assert "load_models=synthesis8=synthesis8.mar\n" in text
    assert f"model_store={(tmp_path / 'store').resolve()}\n" in text
    nginx = render_nginx_config(cfg).read_text()
    assert f"listen 127.0.0.1:{ports['nginx']};" in nginx
    assert f"server 127.0.0.1:{ports['inference']};" in nginx
    assert "{{" not in nginx and (tmp_path / "run" / "nginx" / "proxy").is_dir()


# ----------------------------------------------------------------------------------- ports
def time_wait_port() -> int:
    """A port whose only socket is a closed server connection in TIME-WAIT: what a curl to a
    stack leaves behind after ``make stop``. The server closes first, so its end lingers."""
    server = socket.socket()
    server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as nginx and TorchServe do
    server.bind(("127.0.0.1", 0))
    server.listen()
    port = server.getsockname()[1]
    client = socket.create_connection(("127.0.0.1", port))
    conn, _ = server.accept()
    conn.close()
    assert client.recv(1) == b""
    client.close()
    server.close()
    return port


def states(port: int) -> set[str]:
    return {c.status for c in psutil.net_connections("tcp") if c.laddr and c.laddr.port == port}


def test_a_port_with_only_time_wait_connections_is_free():
    port = time_wait_port()
    deadline = time.monotonic() + 5
    while states(port) != {psutil.CONN_TIME_WAIT} and time.monotonic() < deadline:
        time.sleep(0.05)
    assert states(port) == {psutil.CONN_TIME_WAIT}
    with socket.socket() as s, pytest.raises(OSError):  # the check of issue #15 failed here
        s.bind(("127.0.0.1", port))
    assert can_bind(port)
    check_ports_free({"nginx": port})


@pytest.fixture
def listener():
    """Another process listening on a port: (its Popen, the port)."""
    code = (
        "import socket, sys, time\n"
        "s = socket.socket(); s.bind(('127.0.0.1', 0)); s.listen()\n"
        "print(s.getsockname()[1], flush=True); time.sleep(120)\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    port = int(proc.stdout.readline())
    yield proc, port
    proc.kill()
    proc.wait()


def test_a_listening_port_is_busy_and_the_message_names_its_process(listener):
    proc, port = listener
    assert not can_bind(port)
    with pytest.raises(DeployError) as err:
        check_ports_free({"inference": free_port(), "nginx": port})
    message = str(err.value)
    assert f"port {port} (nginx) is in use by {psutil.Process(proc.pid).name()} " in message
    assert f"(pid {proc.pid}: {sys.executable} -c " in message
    assert "--nginx-port N" in message


def test_the_message_says_when_the_owner_cannot_be_looked_up(listener, monkeypatch):
    _, port = listener

    def denied(kind: str = "inet"):
        raise psutil.AccessDenied()

    monkeypatch.setattr(psutil, "net_connections", denied)
    with pytest.raises(DeployError, match=f"port {port} .* not permitted to look up"):
        check_ports_free({"nginx": port})


# ------------------------------------------------------------------------------- processes
def spawn(*extra: str) -> subprocess.Popen:
    """A stand-in for TorchServe: a process with one child (its 'worker')."""
    code = "import subprocess, sys, time; subprocess.Popen(['sleep', '120']); time.sleep(120)"
    proc = subprocess.Popen([sys.executable, "-c", code, *extra])
    deadline = time.monotonic() + 10
    while not psutil.Process(proc.pid).children() and time.monotonic() < deadline:
        time.sleep(0.05)
    return proc


def save_stack(log_dir: Path, pid: int, started: float | None) -> None:
    (log_dir / "run").mkdir(parents=True)
    Stack(str(log_dir), free_ports(), ["synthesis8"], pid, None, False, started).save()


@pytest.mark.parametrize(
    ("extra", "started_offset", "ours"),
    [
        ((), 0.0, True),  # the pid and start time stack.json recorded
        ((), -3600.0, False),  # same pid, other start time: the pid was reused
        (("org.pytorch.serve.ModelServer",), None, True),  # a record without start time
        ((), None, False),  # ... whose command line is not TorchServe's
    ],
)
def test_stop_signals_only_the_process_that_start_started(tmp_path, extra, started_offset, ours):
    proc = spawn(*extra)
    worker = psutil.Process(proc.pid).children()[0]
    started = None if started_offset is None else psutil.Process(proc.pid).create_time()
    save_stack(tmp_path, proc.pid, None if started is None else started + started_offset)
    try:
        status = stack_status(tmp_path)  # nothing answers on the management port
        assert (status.running, status.models) == (ours, {"synthesis8": "LOADING"} if ours else {})
        assert stop(tmp_path) is ours
        assert not (tmp_path / "run" / "stack.json").exists()
        assert is_alive(proc.pid) is not ours
        assert is_alive(worker.pid) is not ours  # the worker went with its frontend
    finally:
        proc.kill()
        proc.wait()
        worker.kill()


def test_an_exited_but_unreaped_child_is_not_alive():
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    deadline = time.monotonic() + 10
    while psutil.Process(proc.pid).status() != psutil.STATUS_ZOMBIE:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    assert not is_alive(proc.pid)
    proc.wait()
    assert not is_alive(proc.pid)
