"""The container's entry command: ``python -m medfakedet.deploy.container torchserve|nginx|all``.

One image, three uses (``config/Dockerfile``; tini is PID 1 and hands SIGTERM to this process):

* ``torchserve``: TorchServe with both models, everything on loopback (inference, management,
  metrics, gRPC), token authorization on. Kubernetes: the main container.
* ``nginx``: nginx from the same template as ``make serve`` (``config/nginx.conf``, rendered by
  :func:`~medfakedet.deploy.render.render_nginx_config`), listening on all interfaces: the only
  door. It checks the client's token (a Kubernetes Secret, or ``MEDFAKEDET_TOKEN``), forwards
  with TorchServe's own key (``key_file.json``, re-read when TorchServe restarts) and serves
  TorchServe's metrics on a port of its own. Kubernetes: the sidecar.
* ``all``: both in one container (``docker run``, KServe).

The TorchServe container's startup/readiness check is :mod:`medfakedet.probe` (no torch import,
for a kubelet exec probe). SIGTERM drains: nginx gets SIGQUIT (it finishes open requests,
takes no new ones), TorchServe SIGTERM (its own clean stop); both are waited for.

Paths and ports default to the image's layout and can be set by environment or flags; the test
(``tests/integration/test_container.py``) runs this command outside Docker with a temp layout.
"""

from __future__ import annotations

import argparse
import os
import re
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import psutil

from medfakedet.deploy.config import DEFAULT_PORTS, MODELS, REPO_ROOT, StackConfig, find_tool
from medfakedet.deploy.render import render_nginx_config, render_template, render_torchserve_config
from medfakedet.deploy.stack import read_keys, torchserve_env

HOME = Path(os.environ.get("MEDFAKEDET_HOME", "/home/model-server"))
#: nginx snippets that only a container includes (``include .../nginx.d/<context>/*.conf``).
SNIPPETS = REPO_ROOT / "config" / "nginx.d"
#: The entry command's roles (config/Dockerfile's CMD is "all"; Kubernetes' pods use the others).
ROLES = ("torchserve", "nginx", "all")
#: What a token may hold: it is written into nginx.conf, so no quotes, spaces or semicolons.
TOKEN_RE = re.compile(r"[A-Za-z0-9._~+/=-]{16,512}")


class ContainerError(RuntimeError):
    """A setting the operator must fix; the message says which and how."""


@dataclass
class Layout:
    """Where things are in the container, and its ports."""

    config: Path
    model_store: Path
    log_dir: Path
    web_root: Path
    token_file: Path
    ports: dict[str, int]

    def stack(self) -> StackConfig:
        return StackConfig(
            log_dir=self.log_dir, model_store=self.model_store, config=self.config,
            ports=self.ports, web_root=self.web_root,
        )  # fmt: skip


def read_token(layout: Layout) -> str:
    """The front door's token: ``MEDFAKEDET_TOKEN``, else the Secret's file."""
    token = os.environ.get("MEDFAKEDET_TOKEN", "").strip()
    if not token and layout.token_file.is_file():
        token = layout.token_file.read_text().strip()
    if not token:
        raise ContainerError(
            f"no token: mount the Secret's key 'token' at {layout.token_file} or set "
            "MEDFAKEDET_TOKEN (e.g. `openssl rand -hex 32`); the container never runs without one"
        )
    if not TOKEN_RE.fullmatch(token):
        raise ContainerError(
            f"the token has {len(token)} characters; it needs 16-512 of A-Z a-z 0-9 . _ ~ + / = -"
        )
    return token


def render_front_door(layout: Layout, token: str, torchserve_key: str) -> Path:
    """nginx.conf from the template, plus the container's snippets (token map, key, metrics)."""
    cfg = layout.stack()
    conf = render_nginx_config(cfg, host="0.0.0.0")
    values = {
        "TOKEN": token,
        "TORCHSERVE_KEY": torchserve_key,
        "NGINX_HOST": "0.0.0.0",
        "METRICS_PORT": str(layout.ports["nginx_metrics"]),
        "TORCHSERVE_METRICS_PORT": str(layout.ports["metrics"]),
    }
    for snippet in sorted(SNIPPETS.glob("*/*.conf")):
        out = cfg.run_dir / "nginx.d" / snippet.parent.name / snippet.name
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(render_template(snippet.read_text(), values))
        out.chmod(0o600)  # it holds both tokens
    return conf


def start_torchserve(layout: Layout) -> subprocess.Popen:
    """TorchServe in the foreground (its launcher waits on java), on loopback, token on."""
    missing = [m for m in MODELS if not (layout.model_store / f"{m}.mar").is_file()]
    if missing:
        raise ContainerError(
            f"no {', '.join(f'{m}.mar' for m in missing)} in {layout.model_store}: mount the model "
            "volume there (Kubernetes: the medfakedet-models PVC; docker run: -v "
            "$PWD/model_store:/home/model-server/model-store:ro after `make archive`)"
        )
    cfg = layout.stack()
    cfg.run_dir.mkdir(parents=True, exist_ok=True)
    (cfg.run_dir / "key_file.json").unlink(missing_ok=True)  # nginx waits for the new keys
    ts_config, token_auth = render_torchserve_config(cfg)
    if not token_auth:
        raise ContainerError(
            f"{layout.config} turns token authorization off; a container keeps it on (remove "
            "disable_token_authorization)"
        )
    env = torchserve_env(cfg)
    cmd = [
        find_tool("torchserve"), "--start", "--foreground", "--ncs",
        "--ts-config", str(ts_config), "--model-store", str(layout.model_store),
    ]  # fmt: skip
    # key_file.json goes to the working directory: the run folder, shared with the nginx sidecar.
    return subprocess.Popen(cmd, cwd=cfg.run_dir, env=env)


def start_nginx(layout: Layout, token: str, key: str) -> subprocess.Popen:
    conf = render_front_door(layout, token, key)
    nginx = os.environ.get("MEDFAKEDET_NGINX", "/usr/sbin/nginx")
    prefix = (layout.log_dir / "run" / "nginx").resolve()
    return subprocess.Popen(
        [nginx, "-g", "daemon off;", "-e", "stderr", "-c", str(conf), "-p", str(prefix)]
    )


class Supervisor:
    """Runs the roles' processes; SIGTERM/SIGINT stop them gracefully, in order (nginx first)."""

    def __init__(self, layout: Layout, grace: float) -> None:
        self.layout, self.grace = layout, grace
        self.stopping = False
        self.torchserve: subprocess.Popen | None = None
        self.nginx: subprocess.Popen | None = None
        self.key = self.token = ""
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, self._on_signal)

    def _on_signal(self, signum, frame) -> None:
        print(f"medfakedet container: {signal.Signals(signum).name}, draining", flush=True)
        self.stopping = True

    def wait_for_key(self) -> str:
        """TorchServe's inference key, once it wrote key_file.json ('' when stopping first)."""
        run_dir = self.layout.log_dir / "run"
        while not self.stopping:
            key = read_keys(run_dir).get("inference", "")
            if key:
                return key
            if self.torchserve is not None and self.torchserve.poll() is not None:
                return ""
            time.sleep(0.5)
        return ""

    def run(self, role: str) -> int:
        self.token = read_token(self.layout) if role in ("nginx", "all") else ""
        if role in ("torchserve", "all"):
            self.torchserve = start_torchserve(self.layout)
        if role in ("nginx", "all"):
            self.key = self.wait_for_key()
            if self.key:
                self.nginx = start_nginx(self.layout, self.token, self.key)
        while not self.stopping and not any(p.poll() is not None for p in self._procs()):
            if self.nginx is not None:
                self._follow_keys()
            time.sleep(0.5)
        return self.stop()

    def _procs(self) -> list[subprocess.Popen]:
        return [p for p in (self.nginx, self.torchserve) if p is not None]

    def _follow_keys(self) -> None:
        """TorchServe restarted (new keys) or the Secret changed (a mounted Secret's file follows
        it): re-render and reload nginx (SIGHUP: no downtime)."""
        key = read_keys(self.layout.log_dir / "run").get("inference", "")
        try:
            token = read_token(self.layout)
        except ContainerError as e:  # keep serving with the last good token
            token = self.token
            print(f"medfakedet container: {e}; the previous token stays", file=sys.stderr)
        if key and (key, token) != (self.key, self.token):
            self.key, self.token = key, token
            render_front_door(self.layout, token, key)
            self.nginx.send_signal(signal.SIGHUP)

    def stop(self) -> int:
        """Stop nginx (SIGQUIT: finish open requests), then TorchServe; the first exit code that
        is not 0 wins (0 when everything stopped because we asked)."""
        codes = [p.poll() for p in self._procs()]
        if self.nginx is not None and self.nginx.poll() is None:
            self.nginx.send_signal(signal.SIGQUIT)
            _wait(self.nginx, self.grace)
        if self.torchserve is not None and self.torchserve.poll() is None:
            # The launcher does not pass signals on: stop its java child, and the launcher ends.
            for child in psutil.Process(self.torchserve.pid).children():
                child.send_signal(signal.SIGTERM)
            _wait(self.torchserve, self.grace)
        failed = [c for c in codes if c not in (None, 0)]
        return failed[0] if failed else (0 if self.stopping else 1)


def _wait(proc: subprocess.Popen, timeout: float) -> None:
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        for child in psutil.Process(proc.pid).children(recursive=True):
            child.kill()
        proc.kill()
        proc.wait()


#: Path options: flag, environment variable, default (the image's layout).
PATH_OPTIONS = (
    ("--config", "MEDFAKEDET_CONFIG", HOME / "config" / "config.properties"),
    ("--model-store", "MEDFAKEDET_MODEL_STORE", HOME / "model-store"),
    # run/ inside the log folder is shared by both containers (key_file.json).
    ("--log-dir", "MEDFAKEDET_LOG_DIR", HOME / "logs"),
    ("--web-root", "MEDFAKEDET_WEB_ROOT", Path("/opt/medfakedet/web")),
    ("--token-file", "MEDFAKEDET_TOKEN_FILE", Path("/var/run/secrets/medfakedet/token")),
)


def _parser() -> argparse.ArgumentParser:
    env = os.environ.get
    parser = argparse.ArgumentParser(
        prog="python -m medfakedet.deploy.container",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("role", choices=ROLES)
    for flag, var, default in PATH_OPTIONS:
        parser.add_argument(flag, type=Path, default=Path(env(var, default)), help=f"${var}")
    public = [("--port", "MEDFAKEDET_PORT", 8000)]
    public.append(("--metrics-port", "MEDFAKEDET_METRICS_PORT", 9082))
    for flag, var, default in public:
        parser.add_argument(flag, type=int, default=int(env(var, default)), help=f"nginx; ${var}")
    for name in ("inference", "management", "metrics", "grpc_inference", "grpc_management"):
        flag = f"--ts-{name.replace('_', '-')}-port"
        parser.add_argument(flag, type=int, default=DEFAULT_PORTS[name], help="TorchServe")
    parser.add_argument(
        "--grace",
        type=float,
        default=float(env("MEDFAKEDET_GRACE_S", "25")),
        help="seconds each process gets to stop before SIGKILL",
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    ports = {n: getattr(args, f"ts_{n}_port") for n in DEFAULT_PORTS if n != "nginx"}
    ports |= {"nginx": args.port, "nginx_metrics": args.metrics_port}
    layout = Layout(
        args.config, args.model_store, args.log_dir, args.web_root,
        args.token_file, ports,
    )  # fmt: skip
    try:
        return Supervisor(layout, args.grace).run(args.role)
    except ContainerError as e:
        print(f"medfakedet container: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
