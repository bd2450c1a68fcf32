"""Startup and readiness check of the TorchServe container, light enough for a kubelet probe.

``python -m medfakedet.probe [--require-cuda]`` exits 0 when every model has only READY workers
(with ``--require-cuda``: workers that TorchServe gave a GPU), else 1 with the reason on stderr.
It imports neither torch nor the deploy package (an exec probe runs every few seconds): the
management key comes from TorchServe's ``key_file.json`` in the container's run folder.

A GPU pod also sets ``MEDFAKEDET_REQUIRE_CUDA=1``: a handler that would fall back to the CPU
(wrong driver, no device) fails to load instead (:func:`medfakedet.runtime.select_device`), so
its workers never become READY and this check keeps the pod out of the Service.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import urllib.request
from pathlib import Path

#: The served models (medfakedet.deploy.MODELS, which needs torch to import).
MODELS = ("synthesis8", "manipulation_density")
RUN_DIR = Path(os.environ.get("MEDFAKEDET_LOG_DIR", "/home/model-server/logs")) / "run"


def torchserve_key(run_dir: Path, kind: str = "management") -> str:
    """A key TorchServe wrote at its start to ``run_dir/key_file.json`` ("management",
    "inference" or "API"; '' before that)."""
    try:
        return json.loads((run_dir / "key_file.json").read_text())[kind]["key"]
    except (OSError, ValueError, LookupError, TypeError):
        return ""


def not_ready(run_dir: Path, port: int, require_cuda: bool = False) -> str:
    """'' when every model has only READY workers (on a GPU with ``require_cuda``), else why."""
    key = torchserve_key(run_dir)
    if not key:
        return f"no key_file.json in {run_dir} yet: TorchServe is starting"
    for model in MODELS:
        req = urllib.request.Request(
            f"http://127.0.0.1:{port}/models/{model}", headers={"Authorization": f"Bearer {key}"}
        )
        try:
            with urllib.request.urlopen(req, timeout=4) as answer:
                workers = json.load(answer)[0].get("workers", [])
        except (OSError, ValueError, LookupError) as e:
            return f"{model}: {e}"
        if not workers or any(w.get("status") != "READY" for w in workers):
            return f"{model}: workers not READY ({[w.get('status') for w in workers]})"
        if require_cuda and not all(w.get("gpu") for w in workers):
            return f"{model}: a worker runs without a GPU, and this pod must use CUDA"
    return ""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m medfakedet.probe", description=__doc__)
    parser.add_argument("--run-dir", type=Path, default=RUN_DIR)
    parser.add_argument("--management-port", type=int, default=8081)
    parser.add_argument("--require-cuda", action="store_true")
    args = parser.parse_args(argv)
    why = not_ready(args.run_dir, args.management_port, args.require_cuda)
    if why:
        print(f"not ready: {why}", file=sys.stderr)
    return 1 if why else 0


if __name__ == "__main__":
    sys.exit(main())
