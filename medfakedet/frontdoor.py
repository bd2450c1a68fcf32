"""The container's processes at run time: nginx (the front door) and TorchServe, supervised.

``python -m medfakedet.frontdoor [flags of medfakedet.deploy.container]`` is the nginx sidecar
of a Kubernetes pod. It imports neither torch nor the deploy package (about 20 MiB of Python
instead of 700): nginx.conf is rendered by ``python -m medfakedet.deploy.container render-nginx``
(the same template and code as ``make serve``) in a short-lived process, at start and whenever
TorchServe's key (a restarted TorchServe writes new ones) or the token (a mounted Secret follows
its edits) changes; nginx then reloads (SIGHUP, no dropped connection).

:class:`Supervisor` also runs the ``torchserve`` and ``all`` roles of the entry command. SIGTERM
(tini passes it on) drains: nginx gets SIGQUIT and finishes its open requests, then TorchServe
gets SIGTERM; each has ``grace`` seconds before SIGKILL.
"""

from __future__ import annotations

import argparse
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import psutil

from medfakedet.probe import torchserve_key

HOME = Path(os.environ.get("MEDFAKEDET_HOME", "/home/model-server"))
#: Path options of the entry command: flag, environment variable, default (the image's layout).
PATH_OPTIONS = (
    ("--config", "MEDFAKEDET_CONFIG", HOME / "config" / "config.properties"),
    ("--model-store", "MEDFAKEDET_MODEL_STORE", HOME / "model-store"),
    # run/ inside the log folder is shared by both containers (key_file.json).
    ("--log-dir", "MEDFAKEDET_LOG_DIR", HOME / "logs"),
    ("--web-root", "MEDFAKEDET_WEB_ROOT", Path("/opt/medfakedet/web")),
    ("--token-file", "MEDFAKEDET_TOKEN_FILE", Path("/var/run/secrets/medfakedet/token")),
)
#: What a token may hold: it is written into nginx.conf, so no quotes, spaces or semicolons.
TOKEN_RE = re.compile(r"[A-Za-z0-9._~+/=-]{16,512}")


class TokenError(RuntimeError):
    """No usable token; the message says how to give one."""


def read_token(token_file: Path) -> str:
    """The front door's token: ``MEDFAKEDET_TOKEN``, else the Secret's file."""
    token = os.environ.get("MEDFAKEDET_TOKEN", "").strip()
    if not token and token_file.is_file():
        token = token_file.read_text().strip()
    if not token:
        raise TokenError(
            f"no token: mount the Secret's key 'token' at {token_file} or set MEDFAKEDET_TOKEN "
            "(e.g. `openssl rand -hex 32`); the container never runs without one"
        )
    if not TOKEN_RE.fullmatch(token):
        raise TokenError(
            f"the token has {len(token)} characters; it needs 16-512 of A-Z a-z 0-9 . _ ~ + / = -"
        )
    return token


def path_option(name: str) -> Path:
    """A path option's value from the environment, else the image's default."""
    _, var, default = next(o for o in PATH_OPTIONS if o[0] == f"--{name}")
    return Path(os.environ.get(var, default))


class Supervisor:
    """nginx and/or TorchServe as children; stops them in order on SIGTERM/SIGINT.

    Args:
        log_dir: the shared log folder; ``run/`` holds key_file.json, nginx.conf, pid files.
        token_file: the Secret's file (``MEDFAKEDET_TOKEN`` wins).
        render: writes ``run/nginx.conf`` for the current key and token (raises on failure).
        grace: seconds each process gets to stop.
        start_torchserve: starts TorchServe (roles ``torchserve`` and ``all``), or None.
    """

    def __init__(
        self,
        log_dir: Path,
        token_file: Path,
        render: Callable[[], object] | None,
        grace: float,
        start_torchserve: Callable[[], subprocess.Popen] | None = None,
    ) -> None:
        self.run_dir, self.token_file, self.render = Path(log_dir) / "run", token_file, render
        self.grace, self.start_torchserve = grace, start_torchserve
        self.stopping = False
        self.torchserve: subprocess.Popen | None = None
        self.nginx: subprocess.Popen | None = None
        self.served: tuple[str, str] = ("", "")  # (key, token) nginx.conf holds
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, self._on_signal)

    def _on_signal(self, signum, frame) -> None:
        print(f"medfakedet container: {signal.Signals(signum).name}, draining", flush=True)
        self.stopping = True

    def current(self) -> tuple[str, str]:
        """TorchServe's inference key ('' before it wrote one) and the token; a token that
        became unusable keeps the last good one."""
        key = torchserve_key(self.run_dir, "inference")
        try:
            return key, read_token(self.token_file)
        except TokenError as e:
            if not self.served[1]:
                raise
            print(f"medfakedet container: {e}; the previous token stays", file=sys.stderr)
            return key, self.served[1]

    def start_nginx(self) -> None:
        self.render()
        nginx = os.environ.get("MEDFAKEDET_NGINX", "/usr/sbin/nginx")
        conf, prefix = self.run_dir / "nginx.conf", self.run_dir / "nginx"
        cmd = [nginx, "-g", "daemon off;", "-e", "stderr", "-c", str(conf), "-p", str(prefix)]
        self.nginx = subprocess.Popen(cmd)

    def run(self, nginx: bool) -> int:
        if nginx:
            read_token(self.token_file)  # refuse to start without one
        if self.start_torchserve is not None:
            self.torchserve = self.start_torchserve()
        while not self.stopping and not any(p.poll() is not None for p in self._procs()):
            if nginx:
                self._keep_nginx_current()
            time.sleep(0.5)
        return self.stop()

    def _keep_nginx_current(self) -> None:
        """Start nginx once TorchServe's key exists; re-render and reload when it or the token
        changed."""
        now = self.current()
        if not now[0] or now == self.served:
            return
        if self.nginx is None:
            self.served = now
            self.start_nginx()
        else:
            self.served = now
            self.render()
            self.nginx.send_signal(signal.SIGHUP)

    def _procs(self) -> list[subprocess.Popen]:
        return [p for p in (self.nginx, self.torchserve) if p is not None]

    def stop(self) -> int:
        """Stop nginx (SIGQUIT: finish open requests), then TorchServe; the first exit code that
        is not 0 wins (0 when everything stopped because we asked)."""
        codes = [p.poll() for p in self._procs()]
        if self.nginx is not None and self.nginx.poll() is None:
            self.nginx.send_signal(signal.SIGQUIT)
            wait_or_kill(self.nginx, self.grace)
        if self.torchserve is not None and self.torchserve.poll() is None:
            # TorchServe's launcher does not pass signals on: stop its java child; it then ends.
            for child in psutil.Process(self.torchserve.pid).children():
                child.send_signal(signal.SIGTERM)
            wait_or_kill(self.torchserve, self.grace)
        failed = [c for c in codes if c not in (None, 0)]
        return failed[0] if failed else (0 if self.stopping else 1)


def wait_or_kill(proc: subprocess.Popen, timeout: float) -> None:
    """Wait for ``proc``; SIGKILL it and its children after ``timeout`` s."""
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        for child in psutil.Process(proc.pid).children(recursive=True):
            child.kill()
        proc.kill()
        proc.wait()


def main(argv: list[str] | None = None) -> int:
    """The nginx sidecar: every flag is passed to ``container render-nginx`` as well."""
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(prog="python -m medfakedet.frontdoor", description=__doc__)
    parser.add_argument("--log-dir", type=Path, default=path_option("log-dir"))
    parser.add_argument("--token-file", type=Path, default=path_option("token-file"))
    parser.add_argument(
        "--grace", type=float, default=float(os.environ.get("MEDFAKEDET_GRACE_S", 25))
    )
    args, _ = parser.parse_known_args(argv)
    render = [sys.executable, "-m", "medfakedet.deploy.container", "render-nginx", *argv]
    supervisor = Supervisor(
        args.log_dir, args.token_file, lambda: subprocess.run(render, check=True), args.grace
    )
    try:
        return supervisor.run(nginx=True)
    except (TokenError, subprocess.CalledProcessError) as e:
        print(f"medfakedet container: {e}", file=sys.stderr)
        supervisor.stop()
        return 2


if __name__ == "__main__":
    sys.exit(main())
