"""Where and how a model runs: the one device selector, the one autocast, machine facts.

Serving (predictors), training and evaluation all choose their device and precision here, so a
model evaluated in a report runs exactly as it is served.
"""

from __future__ import annotations

import contextlib
import os
import platform
from pathlib import Path
from typing import Any

import torch

#: Set in GPU pods (config/k8s/overlays/gpu): never fall back to the CPU there.
REQUIRE_CUDA_ENV = "MEDFAKEDET_REQUIRE_CUDA"


def select_device(name: int | str | torch.device | None = "auto") -> torch.device:
    """The device to run on.

    Args:
        name: ``"auto"`` (the first CUDA GPU when present, else the CPU); a device string such as
            ``"cpu"`` or ``"cuda:1"``; a bare GPU id (``0`` or ``"0"``, as TorchServe's
            ``gpu_id``), which falls back to the CPU when CUDA is missing; or None / "" (CPU).

    Raises:
        ValueError: a ``cuda`` device string was asked for explicitly but CUDA is not available.
        RuntimeError: ``MEDFAKEDET_REQUIRE_CUDA=1`` (a GPU pod) and the choice is not a GPU:
            the worker then fails to load instead of serving from the CPU unnoticed.
    """
    device = _choose_device(name)
    if os.environ.get(REQUIRE_CUDA_ENV, "") not in ("", "0") and device.type != "cuda":
        raise RuntimeError(
            f"{REQUIRE_CUDA_ENV} is set but the model would run on {device} (asked: {name!r}; "
            f"torch.cuda.is_available() = {torch.cuda.is_available()}, torch {torch.__version__}, "
            f"CUDA build {torch.version.cuda}): check the node's NVIDIA driver and the GPU request"
        )
    return device


def _choose_device(name: int | str | torch.device | None) -> torch.device:
    if isinstance(name, torch.device):
        name = str(name)
    if name is None or str(name) == "":
        return torch.device("cpu")
    text = str(name)
    if text.isdigit():  # TorchServe's gpu_id: use it when the GPU is really there
        return torch.device(f"cuda:{int(text)}" if torch.cuda.is_available() else "cpu")
    if text == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(text)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {text!r} requested but CUDA is not available; use cpu or auto")
    return device


def amp_dtype(device: torch.device) -> torch.dtype | None:
    """The mixed-precision dtype on ``device``: bf16 where the GPU supports it, else fp16; None on
    the CPU (fp32 there: bf16 is slower on CPUs without native bf16 units)."""
    if device.type != "cuda":
        return None
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


def autocast(
    device: torch.device, enabled: bool = True, dtype: torch.dtype | None = None
) -> contextlib.AbstractContextManager:
    """Mixed precision on CUDA, a no-op elsewhere.

    ``dtype`` defaults to :func:`amp_dtype`; inference passes ``torch.float16``, whose finer
    mantissa keeps served scores closest to fp32.
    """
    if not enabled or device.type != "cuda":
        return contextlib.nullcontext()
    dtype = dtype or amp_dtype(device)
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def setup_threads(num_threads: int | None = None) -> int:
    """Use every core for intra-op parallelism (torch's default may be fewer in containers)."""
    n = num_threads or os.cpu_count() or 1
    torch.set_num_threads(n)
    return n


def cpu_model() -> str:
    """The CPU's model name (``/proc/cpuinfo``), or what ``platform`` knows."""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def machine_info(device: torch.device | None = None) -> dict[str, Any]:
    """CPU model, core count, torch version and the accelerator, for reports."""
    info: dict[str, Any] = {
        "cpu": cpu_model(),
        "cpu_cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(terse=True),
        "device": str(device) if device is not None else "cpu",
    }
    if device is not None and device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    return info
