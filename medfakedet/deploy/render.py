"""Render the run files of a stack: TorchServe's ``config.properties`` and ``nginx.conf`` from
the templates in ``config/``, with the stack's ports and absolute paths filled in."""

from __future__ import annotations

import getpass
import os
from pathlib import Path

from medfakedet.deploy.config import REPO_ROOT, DeployError, StackConfig

NGINX_TEMPLATE = REPO_ROOT / "config" / "nginx.conf"
#: The temp folders nginx.conf points into ``run/nginx/``; nginx does not create them itself.
NGINX_TEMP_DIRS = ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")


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


def render_torchserve_config(cfg: StackConfig) -> tuple[Path, bool]:
    """Write ``run/config.properties``: the template with the stack's ports, store and models.

    Returns:
        The written file, and whether token authorization is on in it.
    """
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
    rendered = render_properties(Path(cfg.config).read_text(), overrides)
    token_auth = read_properties(rendered).get("disable_token_authorization", "false") != "true"
    out = cfg.run_dir / "config.properties"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(rendered)
    return out, token_auth


def render_nginx_config(cfg: StackConfig, host: str = "127.0.0.1") -> Path:
    """Write ``run/nginx.conf`` (and the temp folders it names) from ``config/nginx.conf``.

    ``host`` is the address nginx listens on: loopback for ``make serve``, ``0.0.0.0`` in a
    container, where nginx is the only door (:mod:`medfakedet.deploy.container`).
    """
    run = cfg.run_dir
    for sub in NGINX_TEMP_DIRS:
        (run / "nginx" / sub).mkdir(parents=True, exist_ok=True)
    values = {
        # As root, nginx would drop its workers to "nobody", who cannot read a private tmp dir.
        "USER_DIRECTIVE": f"user {getpass.getuser()};" if os.geteuid() == 0 else "",
        "RUN_DIR": str(run.resolve()),
        "LOG_DIR": str(Path(cfg.log_dir).resolve()),
        "WEB_ROOT": str(Path(cfg.web_root).resolve()),
        "INFERENCE_PORT": str(cfg.ports["inference"]),
        "NGINX_HOST": host,
        "NGINX_PORT": str(cfg.ports["nginx"]),
    }
    out = run / "nginx.conf"
    out.write_text(render_template(NGINX_TEMPLATE.read_text(), values))
    return out
