"""What every deploy step shares: the checkout's paths, model names, ports, the stack settings,
finding a console script, and the error type.
"""

from __future__ import annotations

import shutil
import sys
from dataclasses import dataclass, field
from pathlib import Path

from medfakedet.artifacts import TASKS

REPO_ROOT = Path(__file__).resolve().parents[2]
MODELS = TASKS  # TorchServe model name == artifact task
#: TorchServe's logging (``torchserve --log-config``): its built-in files, each line written once,
#: without the per-request lines (the reasons are in the file; issue #12).
LOG_CONFIG = REPO_ROOT / "config" / "log4j2.xml"
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


@dataclass
class StackConfig:
    """What to start and where.

    Attributes:
        log_dir: all logs; run files go to ``log_dir/run``.
        model_store: folder with the .mar files.
        config: TorchServe properties template (``config/config.properties``).
        ports: inference, management, metrics, gRPC and nginx ports (default: DEFAULT_PORTS).
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


def find_tool(name: str) -> str:
    """A console script of this environment (next to the interpreter), else from PATH."""
    local = Path(sys.executable).parent / name
    if local.is_file():
        return str(local)
    found = shutil.which(name)
    if not found:
        raise DeployError(f"{name} not found: pip install -e '.[serve]'")
    return found
