"""``python -m medfakedet.deploy archive|start|stop|status``.

archive  --artifacts artifacts --out model_store   write synthesis8.mar, manipulation_density.mar
start    [--log-dir logs] [--config ...] [--*-port N] [--no-nginx]
         start TorchServe + nginx in the background, wait until both models answer
stop     [--log-dir logs]   stop what start started
status   [--log-dir logs]   print whether the stack runs and each model's state
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from medfakedet.deploy import (
    DEFAULT_PORTS,
    MODELS,
    REPO_ROOT,
    DeployError,
    Stack,
    StackConfig,
    archive_all,
    stack_status,
    start,
    stop,
)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m medfakedet.deploy",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", required=True)
    arc = sub.add_parser("archive", help="build the .mar archives from trained artifacts")
    arc.add_argument("--artifacts", type=Path, default=REPO_ROOT / "artifacts")
    arc.add_argument("--out", type=Path, default=REPO_ROOT / "model_store")
    st = sub.add_parser("start", help="start TorchServe and nginx in the background")
    st.add_argument("--model-store", type=Path, default=REPO_ROOT / "model_store")
    st.add_argument("--config", type=Path, default=REPO_ROOT / "config" / "config.properties")
    st.add_argument("--web-root", type=Path, default=REPO_ROOT / "web")
    st.add_argument("--models", nargs="+", choices=MODELS, default=list(MODELS))
    st.add_argument("--no-nginx", action="store_true", help="TorchServe only")
    st.add_argument("--timeout", type=float, default=300.0, help="seconds to wait for READY")
    for name, port in DEFAULT_PORTS.items():
        st.add_argument(f"--{name.replace('_', '-')}-port", type=int, default=port)
    for name, p in (("stop", "stop the stack"), ("status", "is the stack running?")):
        sub.add_parser(name, help=p)
    for p in sub.choices.values():
        if p.prog.split()[-1] != "archive":
            p.add_argument("--log-dir", type=Path, default=REPO_ROOT / "logs")
    return parser


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


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        if args.command == "archive":
            for mar in archive_all(args.artifacts, args.out):
                print(f"wrote {mar} ({mar.stat().st_size / 2**20:.1f} MiB)")
        elif args.command == "start":
            cfg = StackConfig(
                log_dir=args.log_dir,
                model_store=args.model_store,
                config=args.config,
                ports={name: getattr(args, f"{name}_port") for name in DEFAULT_PORTS},
                models=tuple(args.models),
                nginx=not args.no_nginx,
                web_root=args.web_root,
            )
            print(f"starting TorchServe{'' if args.no_nginx else ' and nginx'} ...", flush=True)
            print(describe(start(cfg, timeout=args.timeout)))
        elif args.command == "stop":
            print("stopped" if stop(args.log_dir) else "nothing was running")
        else:
            status = stack_status(args.log_dir)
            if not status.running:
                print("not running")
                return 3
            print(f"running: {status.models}")
            if status.stack.nginx_pid and not status.nginx:
                print("nginx is not running: restart the stack (make restart)")
            print(describe(status.stack))
    except DeployError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
