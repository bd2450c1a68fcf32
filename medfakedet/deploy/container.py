"""The container's entry command: ``python -m medfakedet.deploy.container ROLE``.

One image (``config/Dockerfile``; tini is PID 1 and hands SIGTERM to this process), roles:

* ``torchserve``: TorchServe with both models, everything on loopback (inference, management,
  metrics, gRPC), token authorization on. Kubernetes: the main container.
* ``all``: TorchServe and nginx in one container (``docker run``, KServe).
* ``nginx``: nginx alone, for a TorchServe in another container of the pod. Kubernetes runs the
  same thing as ``python -m medfakedet.frontdoor``, which needs no torch in memory.
* ``render-nginx``: write nginx.conf for the current key and token, and exit (what the
  front door runs at start and when either changes).

nginx uses the same template as ``make serve`` (``config/nginx.conf``, rendered by
:func:`~medfakedet.deploy.render.render_nginx_config`) plus the container's snippets
(``config/nginx.d/``): it listens on all interfaces, checks the client's token (a Kubernetes
Secret, or ``MEDFAKEDET_TOKEN``), forwards with TorchServe's own key (``key_file.json``) and
serves TorchServe's metrics on a port of its own. The processes are supervised by
:class:`medfakedet.frontdoor.Supervisor` (SIGTERM drains: nginx first, then TorchServe); the
TorchServe container's readiness check is :mod:`medfakedet.probe`.

Paths and ports default to the image's layout and can be set by environment or flags; the test
(``tests/integration/test_container.py``) runs this command outside Docker with a temp layout.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from medfakedet.deploy.config import DEFAULT_PORTS, MODELS, REPO_ROOT, StackConfig
from medfakedet.deploy.render import render_nginx_config, render_template, render_torchserve_config
from medfakedet.deploy.stack import torchserve_command, torchserve_env
from medfakedet.frontdoor import PATH_OPTIONS, Supervisor, TokenError, read_token
from medfakedet.probe import torchserve_key

#: nginx snippets that only a container includes (``include .../nginx.d/<context>/*.conf``).
SNIPPETS = REPO_ROOT / "config" / "nginx.d"
#: The entry command's roles (config/Dockerfile's CMD is "all"; Kubernetes' pods use the others).
ROLES = ("torchserve", "nginx", "all", "render-nginx")


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


def render_front_door(layout: Layout, token: str, key: str) -> Path:
    """nginx.conf from the template, plus the container's snippets (token map, key, metrics)."""
    cfg = layout.stack()
    conf = render_nginx_config(cfg, host="0.0.0.0")
    values = {
        "TOKEN": token,
        "TORCHSERVE_KEY": key,
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
    cmd = torchserve_command(ts_config, layout.model_store, "--foreground")
    # key_file.json goes to the working directory: the run folder, shared with the nginx sidecar.
    return subprocess.Popen(cmd, cwd=cfg.run_dir, env=env)


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
        args.config, args.model_store, args.log_dir, args.web_root, args.token_file, ports
    )
    run_dir = args.log_dir / "run"

    def render() -> Path:
        key = torchserve_key(run_dir, "inference")
        if not key:
            raise ContainerError(f"no TorchServe key in {run_dir}/key_file.json yet")
        return render_front_door(layout, read_token(args.token_file), key)

    if args.role == "render-nginx":
        try:
            print(f"wrote {render()}")
            return 0
        except (ContainerError, TokenError) as e:
            print(f"medfakedet container: {e}", file=sys.stderr)
            return 2
    ts = (lambda: start_torchserve(layout)) if args.role in ("torchserve", "all") else None
    supervisor = Supervisor(args.log_dir, args.token_file, render, args.grace, ts)
    try:
        return supervisor.run(nginx=args.role in ("nginx", "all"))
    except (ContainerError, TokenError) as e:
        print(f"medfakedet container: {e}", file=sys.stderr)
        supervisor.stop()  # what did start (TorchServe) stops too
        return 2


if __name__ == "__main__":
    sys.exit(main())
