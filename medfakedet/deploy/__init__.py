"""Build the TorchServe archives and run TorchServe + nginx as background processes.

``python -m medfakedet.deploy archive|start|stop|status`` (see ``__main__``). Everything a running
stack needs lives under one log folder (``logs/`` for ``make serve``, a temp folder in tests):

* ``logs/``: TorchServe's ``ts_log.log``, ``model_log.log`` (handler output, e.g. the
  ``batch_size=N`` lines), ``access_log.log``, metrics logs, ``nginx_access.log``,
  ``nginx_error.log``, ``torchserve.out``;
* ``logs/run/``: rendered ``config.properties`` and ``nginx.conf``, pid files, TorchServe's temp
  folder, ``key_file.json`` (token auth) and ``stack.json`` (ports, pids, URLs) that ``stop`` and
  ``status`` read.

TorchServe keeps its pid file in ``$TMPDIR`` and its worker sockets (``.ts.sock.9000``) and
unpacked archives in ``java.io.tmpdir`` (``$TEMP``); each stack gets its own folder for both, so a
test stack and ``make serve`` can run side by side.
"""

from __future__ import annotations

import getpass
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import asdict, dataclass, field
from pathlib import Path

from medfakedet.artifacts import TASKS, ArtifactError, read_meta

REPO_ROOT = Path(__file__).resolve().parents[2]
PACKAGE_DIR = Path(__file__).resolve().parents[1]
#: The modules a worker imports; data builders, training and this module stay out of the .mar.
PACKAGED_MODULES = (
    "__init__.py",
    "labels.py",
    "imaging.py",
    "preprocess.py",
    "models.py",
    "artifacts.py",
    "density.py",
    "predictors.py",
    "requests.py",
)
MODELS = TASKS  # TorchServe model name == artifact task
#: TorchServe always opens its gRPC ports too (there is no switch to turn them off): two stacks
#: on one machine need different gRPC ports as well, or the second one exits at start.
DEFAULT_PORTS = {
    "inference": 8080,
    "management": 8081,
    "metrics": 8082,
    "grpc_inference": 7070,
    "grpc_management": 7071,
    "nginx": 8000,
}


class DeployError(RuntimeError):
    """Something the user can fix: a missing tool, artifact or port, a failed start."""


# ------------------------------------------------------------------------------------ archive
def find_artifact(artifacts_dir: str | Path, task: str) -> Path:
    """The artifact folder for ``task``: ``<dir>/<task>/`` or the one sub-folder of that task."""
    root = Path(artifacts_dir)
    direct = root / task
    if (direct / "artifact.json").is_file():
        return direct
    found = []
    for meta_file in sorted(root.glob("**/artifact.json")):
        try:
            if read_meta(meta_file.parent)["task"] == task:
                found.append(meta_file.parent)
        except ArtifactError:
            continue
    if len(found) == 1:
        return found[0]
    if not found:
        raise DeployError(
            f"no {task} artifact under {root}: expected {direct}/artifact.json. "
            "Train one first (make train) or pass --artifacts"
        )
    raise DeployError(
        f"several {task} artifacts under {root}: {', '.join(map(str, found))}; "
        f"put the one to serve in {direct}"
    )


def stage_archive_files(artifact_dir: str | Path, stage_dir: str | Path) -> Path:
    """Copy the weights, artifact.json and the serving modules of ``medfakedet`` into one folder.

    torch-model-archiver copies the folder's contents to the archive root, so the .mar holds
    ``medfakedet/`` next to the handler: the worker imports that copy and needs no installed
    medfakedet.
    """
    stage = Path(stage_dir)
    pkg = stage / "medfakedet"
    pkg.mkdir(parents=True, exist_ok=True)
    for name in PACKAGED_MODULES:
        shutil.copy2(PACKAGE_DIR / name, pkg / name)
    for name in ("model.safetensors", "artifact.json"):
        src = Path(artifact_dir) / name
        if not src.is_file():
            raise DeployError(f"{src} not found: {artifact_dir} is not a complete artifact")
        shutil.copy2(src, stage / name)
    return stage


def _tool(name: str) -> str:
    """A console script of this environment (next to the interpreter), else from PATH."""
    local = Path(sys.executable).parent / name
    if local.is_file():
        return str(local)
    found = shutil.which(name)
    if not found:
        raise DeployError(f"{name} not found: pip install -e '.[serve]'")
    return found


def build_archive(task: str, artifact_dir: str | Path, out_dir: str | Path) -> Path:
    """Write ``<out_dir>/<task>.mar`` from an artifact; the archive version is the artifact's."""
    if task not in MODELS:
        raise DeployError(f"unknown model {task!r}; expected one of {', '.join(MODELS)}")
    meta = read_meta(artifact_dir)
    if meta["task"] != task:
        raise DeployError(f"{artifact_dir} holds a {meta['task']} artifact, not {task}")
    out = Path(out_dir).resolve()
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=f"mar-{task}-") as tmp:
        stage = stage_archive_files(artifact_dir, tmp)
        cmd = [
            _tool("torch-model-archiver"),
            "--model-name", task,
            "--version", str(meta["version"]),
            "--handler", str(REPO_ROOT / "handlers" / f"{task}_handler.py"),
            "--extra-files", str(stage),
            "--config-file", str(REPO_ROOT / "config" / task / "model-config.yaml"),
            "--export-path", str(out),
            "--force",
        ]  # fmt: skip
        done = subprocess.run(cmd, capture_output=True, text=True)
        if done.returncode != 0:
            raise DeployError(f"torch-model-archiver failed for {task}:\n{done.stderr.strip()}")
    return out / f"{task}.mar"


def archive_all(artifacts_dir: str | Path, out_dir: str | Path) -> list[Path]:
    """Both archives from ``<artifacts_dir>/{synthesis8,manipulation_density}``."""
    return [build_archive(t, find_artifact(artifacts_dir, t), out_dir) for t in MODELS]


# ------------------------------------------------------------------------------- rendering
def read_properties(text: str) -> dict[str, str]:
    """``key=value`` lines of a Java properties file (comments and blanks skipped)."""
    props = {}
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith(("#", "!")) and "=" in line:
            key, value = line.split("=", 1)
            props[key.strip()] = value.strip()
    return props


def render_properties(text: str, overrides: dict[str, str]) -> str:
    """The properties ``text`` with ``overrides`` replacing (or appended after) its keys."""
    lines, seen = [], set()
    for line in text.splitlines():
        key = line.split("=", 1)[0].strip()
        if "=" in line and not line.lstrip().startswith(("#", "!")) and key in overrides:
            lines.append(f"{key}={overrides[key]}")
            seen.add(key)
        else:
            lines.append(line)
    lines += [f"{k}={v}" for k, v in overrides.items() if k not in seen]
    return "\n".join(lines) + "\n"


def render_template(text: str, values: dict[str, str]) -> str:
    """Fill ``{{NAME}}`` placeholders; a placeholder left unfilled is an error."""
    for key, value in values.items():
        text = text.replace("{{" + key + "}}", str(value))
    if "{{" in text:
        start = text.index("{{")
        raise DeployError(f"unfilled placeholder {text[start : text.index('}}', start) + 2]}")
    return text


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ------------------------------------------------------------------------------------- stack
@dataclass
class StackConfig:
    """What to start and where.

    Attributes:
        log_dir: all logs; run files go to ``log_dir/run``.
        model_store: folder with the .mar files.
        config: TorchServe properties template (``config/config.properties``).
        ports: inference, management, metrics and nginx ports (defaults from DEFAULT_PORTS).
        models: model names to load (default: both).
        nginx: also start nginx in front of TorchServe.
        web_root: folder nginx serves at ``/``.
        env: extra environment for TorchServe and its workers.
    """

    log_dir: Path = REPO_ROOT / "logs"
    model_store: Path = REPO_ROOT / "model_store"
    config: Path = REPO_ROOT / "config" / "config.properties"
    ports: dict[str, int] = field(default_factory=lambda: dict(DEFAULT_PORTS))
    models: tuple[str, ...] = MODELS
    nginx: bool = True
    web_root: Path = REPO_ROOT / "web"
    env: dict[str, str] = field(default_factory=dict)

    @property
    def run_dir(self) -> Path:
        return Path(self.log_dir) / "run"


@dataclass
class Stack:
    """A started stack, as saved in ``run/stack.json``."""

    log_dir: str
    ports: dict[str, int]
    models: list[str]
    torchserve_pid: int
    nginx_pid: int | None
    token_auth: bool

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

    def keys(self) -> dict[str, str]:
        """Token-auth keys from key_file.json: ``{"inference", "management", "API"}``."""
        return read_keys(self.run_dir)

    def save(self) -> None:
        (self.run_dir / "stack.json").write_text(json.dumps(asdict(self), indent=2) + "\n")

    @classmethod
    def load(cls, log_dir: str | Path) -> Stack | None:
        path = Path(log_dir) / "run" / "stack.json"
        return cls(**json.loads(path.read_text())) if path.is_file() else None


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


def _alive(pid: int | None) -> bool:
    if not pid:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie child of ours (e.g. in tests) is dead for our purposes.
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(") ", 1)[1][:1] != "Z"
    except OSError:
        return True


def _http(url: str, token: str | None = None, timeout: float = 3.0) -> tuple[int, str]:
    req = urllib.request.Request(url)
    if token:
        req.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, r.read().decode("utf-8", "replace")
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode("utf-8", "replace")
    except (urllib.error.URLError, OSError):
        return 0, ""


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


def _tail(path: Path, lines: int = 30) -> str:
    if not path.is_file():
        return f"({path} does not exist)"
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])


def _check_ports_free(ports: dict[str, int]) -> None:
    for name, port in ports.items():
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                raise DeployError(
                    f"port {port} ({name}) is in use: is a stack already running "
                    "(python -m medfakedet.deploy status)? Stop it or choose other ports"
                ) from None


def _render_torchserve_config(cfg: StackConfig) -> tuple[Path, bool]:
    text = Path(cfg.config).read_text()
    store = Path(cfg.model_store).resolve()
    p = cfg.ports
    overrides = {
        "inference_address": f"http://127.0.0.1:{p['inference']}",
        "management_address": f"http://127.0.0.1:{p['management']}",
        "metrics_address": f"http://127.0.0.1:{p['metrics']}",
        "grpc_inference_address": "127.0.0.1",
        "grpc_management_address": "127.0.0.1",
        "grpc_inference_port": str(p["grpc_inference"]),
        "grpc_management_port": str(p["grpc_management"]),
        "model_store": str(store),
        "allowed_urls": f"file://{store}/.*",
        "load_models": ",".join(f"{m}={m}.mar" for m in cfg.models),
    }
    rendered = render_properties(text, overrides)
    token_auth = read_properties(rendered).get("disable_token_authorization", "false") != "true"
    out = cfg.run_dir / "config.properties"
    out.write_text(rendered)
    return out, token_auth


def _start_torchserve(cfg: StackConfig, ts_config: Path) -> int:
    run = cfg.run_dir
    tmp = run / "tmp"
    tmp.mkdir(parents=True, exist_ok=True)
    env = {
        **os.environ,
        # TorchServe's pid file ($TMPDIR), worker sockets and unpacked archives (TEMP ->
        # java.io.tmpdir) default to /tmp, where two stacks would collide: one folder per stack.
        "TMPDIR": str(tmp),
        "TEMP": str(tmp),
        "LOG_LOCATION": str(cfg.log_dir),
        "METRICS_LOCATION": str(cfg.log_dir),
        **cfg.env,
    }
    cmd = [
        _tool("torchserve"),
        "--start",
        "--ncs",
        "--ts-config", str(ts_config),
        "--model-store", str(Path(cfg.model_store).resolve()),
    ]  # fmt: skip
    with open(Path(cfg.log_dir) / "torchserve.out", "ab") as out:
        # New session: Ctrl-C in the terminal that ran `make serve` does not reach the server.
        subprocess.run(
            cmd, cwd=run, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
    pid_file = tmp / ".model_server.pid"
    for _ in range(50):
        if pid_file.is_file() and pid_file.read_text().strip():
            return int(pid_file.read_text().strip())
        time.sleep(0.1)
    raise DeployError(f"TorchServe did not start:\n{_tail(Path(cfg.log_dir) / 'torchserve.out')}")


def _start_nginx(cfg: StackConfig) -> int:
    run = cfg.run_dir
    for sub in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"):
        (run / "nginx" / sub).mkdir(parents=True, exist_ok=True)
    user = getpass.getuser()
    values = {
        # As root, nginx would drop its workers to "nobody", who cannot read a private tmp dir.
        "USER_DIRECTIVE": f"user {user};" if os.geteuid() == 0 else "",
        "RUN_DIR": str(run.resolve()),
        "LOG_DIR": str(Path(cfg.log_dir).resolve()),
        "WEB_ROOT": str(Path(cfg.web_root).resolve()),
        "INFERENCE_PORT": str(cfg.ports["inference"]),
        "NGINX_PORT": str(cfg.ports["nginx"]),
    }
    conf = run / "nginx.conf"
    conf.write_text(render_template((REPO_ROOT / "config" / "nginx.conf").read_text(), values))
    cmd = [
        _nginx_binary(),
        "-e", str(Path(cfg.log_dir).resolve() / "nginx_error.log"),
        "-c", str(conf.resolve()),
        "-p", str((run / "nginx").resolve()),
    ]  # fmt: skip
    done = subprocess.run(cmd, capture_output=True, text=True, start_new_session=True)
    if done.returncode != 0:
        raise DeployError(f"nginx failed to start: {done.stderr.strip()}")
    pid_file = run / "nginx.pid"
    for _ in range(50):
        if pid_file.is_file() and pid_file.read_text().strip():
            return int(pid_file.read_text().strip())
        time.sleep(0.1)
    raise DeployError(f"nginx wrote no pid file:\n{_tail(Path(cfg.log_dir) / 'nginx_error.log')}")


def models_ready(stack: Stack) -> dict[str, str]:
    """Worker status per model from the management API ("READY", "UNLOADED", ...)."""
    token = stack.keys().get("management") if stack.token_auth else None
    states = {}
    for model in stack.models:
        code, body = _http(f"{stack.management_url}/models/{model}", token)
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
        if not _alive(stack.torchserve_pid):
            raise DeployError(
                f"TorchServe (pid {stack.torchserve_pid}) exited during start. "
                "Last lines of ts_log.log:\n" + _tail(Path(stack.log_dir) / "ts_log.log")
            )
        states = models_ready(stack)
        nginx_ok = not stack.nginx_pid or _http(f"{stack.base_url}/ping")[0] == 200
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
        DeployError: a stack is already running in this log folder, a port is taken, an
            archive is missing, or a model did not become ready (the stack is stopped then).
    """
    log_dir = Path(cfg.log_dir).resolve()
    cfg.log_dir = log_dir
    old = Stack.load(log_dir)
    if old and (_alive(old.torchserve_pid) or _alive(old.nginx_pid)):
        raise DeployError(
            f"a stack is already running from {log_dir} (TorchServe pid {old.torchserve_pid}); "
            "stop it first: python -m medfakedet.deploy stop"
        )
    for model in cfg.models:
        if not (Path(cfg.model_store) / f"{model}.mar").is_file():
            raise DeployError(
                f"{Path(cfg.model_store) / f'{model}.mar'} not found: run make archive first"
            )
    ports = {k: v for k, v in cfg.ports.items() if cfg.nginx or k != "nginx"}
    _check_ports_free(ports)
    cfg.run_dir.mkdir(parents=True, exist_ok=True)
    ts_config, token_auth = _render_torchserve_config(cfg)
    stack = Stack(str(log_dir), dict(cfg.ports), list(cfg.models), 0, None, token_auth)
    try:
        stack.torchserve_pid = _start_torchserve(cfg, ts_config)
        stack.save()
        if cfg.nginx:
            stack.nginx_pid = _start_nginx(cfg)
            stack.save()
        wait_ready(stack, timeout)
    except BaseException:
        stop(log_dir)
        raise
    return stack


def _terminate(pid: int | None, sig: int = signal.SIGTERM, timeout: float = 60.0) -> None:
    if not _alive(pid):
        return
    os.kill(pid, sig)
    deadline = time.monotonic() + timeout
    while _alive(pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    if _alive(pid):
        os.kill(pid, signal.SIGKILL)


def _children(pid: int) -> list[int]:
    """Descendants of ``pid`` (TorchServe's Python workers), from /proc."""
    kids: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(") ", 1)[1].split()
        except OSError:
            continue
        kids.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    out, todo = [], [pid]
    while todo:
        for child in kids.get(todo.pop(), []):
            out.append(child)
            todo.append(child)
    return out


def stop(log_dir: str | Path) -> bool:
    """Stop the stack started from ``log_dir``; True when something was running."""
    stack = Stack.load(Path(log_dir).resolve())
    if stack is None:
        return False
    was_running = _alive(stack.torchserve_pid) or _alive(stack.nginx_pid)
    _terminate(stack.nginx_pid, signal.SIGQUIT, timeout=10)  # graceful: finish open requests
    workers = _children(stack.torchserve_pid) if _alive(stack.torchserve_pid) else []
    _terminate(stack.torchserve_pid)
    for pid in workers:  # normally gone with the frontend; never leave one behind
        _terminate(pid, timeout=5)
    (stack.run_dir / "tmp" / ".model_server.pid").unlink(missing_ok=True)
    (stack.run_dir / "key_file.json").unlink(missing_ok=True)
    (stack.run_dir / "stack.json").unlink(missing_ok=True)
    return was_running


def describe(stack: Stack) -> str:
    """URLs and a curl example, for people."""
    base = stack.base_url or stack.inference_url
    detect = "/detect" if stack.base_url else "/predictions"
    auth = ' -H "Authorization: Bearer $KEY"' if stack.token_auth else ""
    lines = [
        f"web page + paper endpoints (nginx): {stack.base_url or '(nginx not started)'}",
        f"TorchServe inference:  {stack.inference_url}/predictions/<model>",
        f"TorchServe management: {stack.management_url}/models",
        f"Prometheus metrics:    {stack.metrics_url}/metrics",
        f"logs:                  {stack.log_dir}",
        "",
        "try:",
        f"  curl{auth} -F image=@scan.png {base}{detect}/synthesis8",
        f"  curl{auth} -F image=@scan.png -F thr=0.28 -F min_area=20 "
        f"{base}{detect}/manipulation_density",
    ]
    if stack.token_auth:
        lines.insert(
            6,
            f'token auth is ON: KEY=$(python -c "import json;print(json.load(open('
            f"'{stack.run_dir}/key_file.json'))['inference']['key'])\")",
        )
    return "\n".join(lines)
