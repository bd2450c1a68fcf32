"""Checkpoints: every tensor in safetensors, everything else in JSON, never pickle.

``OUT/checkpoint/`` holds ``last.safetensors`` (the weights after the last epoch),
``best.safetensors`` (the best validation weights so far), ``optimizer.safetensors`` (the
optimizer's tensors) and ``state.json`` (progress, the optimizer's and LR scheduler's plain
state, the GradScaler's state and the config). ``state.json`` is written last, atomically: it
names a complete checkpoint, or there is none.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import nn

CHECKPOINT_DIR = "checkpoint"
#: Config keys a resumed run must share with its checkpoint (the weights would not fit).
RESUME_GUARDED_KEYS = ("arch", "size", "task")


def cpu_state(module: nn.Module) -> dict[str, torch.Tensor]:
    """A detached CPU copy of ``module.state_dict()``."""
    return {k: v.detach().to("cpu").contiguous().clone() for k, v in module.state_dict().items()}


def optimizer_to_safetensors(optimizer: torch.optim.Optimizer) -> tuple[dict, dict]:
    """Split ``optimizer.state_dict()`` into tensors (for safetensors) and JSON-able metadata."""
    sd = optimizer.state_dict()
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, dict[str, Any]] = {}
    for pid, state in sd["state"].items():
        for key, value in state.items():
            if isinstance(value, torch.Tensor):
                tensors[f"{pid}.{key}"] = value.detach().to("cpu").contiguous()
            else:
                scalars.setdefault(str(pid), {})[key] = value
    return tensors, {"param_groups": sd["param_groups"], "scalars": scalars}


def optimizer_from_safetensors(
    optimizer: torch.optim.Optimizer, tensors: dict[str, torch.Tensor], meta: dict
) -> None:
    """Load what :func:`optimizer_to_safetensors` split back into ``optimizer``."""
    state: dict[int, dict[str, Any]] = {}
    for name, value in tensors.items():
        pid, key = name.split(".", 1)
        state.setdefault(int(pid), {})[key] = value
    for pid, values in meta["scalars"].items():
        state.setdefault(int(pid), {}).update(values)
    optimizer.load_state_dict({"state": state, "param_groups": meta["param_groups"]})


@dataclass
class TrainState:
    """Progress that a checkpoint restores: epochs done, best validation score, history."""

    epoch: int = 0  # completed epochs
    best_score: list[float] | None = None  # compared as a tuple; higher is better
    best_epoch: int = -1
    history: list[dict[str, Any]] = field(default_factory=list)
    elapsed_s: float = 0.0
    stopped_early: bool = False


@dataclass
class Resumable:
    """The objects whose state a checkpoint carries besides the weights."""

    model: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler | None = None
    scaler: torch.amp.GradScaler | None = None


def save_checkpoint(
    out: Path,
    parts: Resumable,
    state: TrainState,
    config: dict[str, Any],
    best_weights: dict[str, torch.Tensor] | None,
) -> None:
    """Write ``OUT/checkpoint/{last,best,optimizer}.safetensors`` and ``state.json``."""
    ckpt = out / CHECKPOINT_DIR
    ckpt.mkdir(parents=True, exist_ok=True)
    save_file(cpu_state(parts.model), str(ckpt / "last.safetensors"))
    if best_weights is not None:
        save_file(best_weights, str(ckpt / "best.safetensors"))
    tensors, opt_meta = optimizer_to_safetensors(parts.optimizer)
    save_file(tensors, str(ckpt / "optimizer.safetensors"))
    scaler = parts.scaler
    meta = {
        "state": dataclasses.asdict(state),
        "optimizer": opt_meta,
        "scheduler": parts.scheduler.state_dict() if parts.scheduler is not None else None,
        "scaler": scaler.state_dict() if scaler is not None and scaler.is_enabled() else None,
        "config": config,
    }
    tmp = ckpt / "state.json.tmp"
    tmp.write_text(json.dumps(meta, indent=1, default=float) + "\n")
    tmp.replace(ckpt / "state.json")  # state.json names a complete checkpoint, or none


def load_checkpoint(
    out: Path, parts: Resumable, config: dict[str, Any]
) -> tuple[TrainState, dict[str, torch.Tensor] | None]:
    """Restore weights, optimizer, scheduler, scaler and progress from ``OUT/checkpoint/``.

    Raises:
        FileNotFoundError: there is no complete checkpoint in ``OUT/checkpoint/``.
        ValueError: the checkpoint was trained with another arch, input size or task.
    """
    ckpt = out / CHECKPOINT_DIR
    if not (ckpt / "state.json").is_file():
        raise FileNotFoundError(f"--resume: no checkpoint in {ckpt} (state.json missing)")
    meta = json.loads((ckpt / "state.json").read_text())
    for key in RESUME_GUARDED_KEYS:
        old, new = meta["config"].get(key), config.get(key)
        if old != new:
            raise ValueError(
                f"--resume: checkpoint in {ckpt} was trained with {key}={old!r}, "
                f"the config now says {new!r}; use another --out or the same {key}"
            )
    parts.model.load_state_dict(load_file(str(ckpt / "last.safetensors")), strict=True)
    optimizer_from_safetensors(
        parts.optimizer, load_file(str(ckpt / "optimizer.safetensors")), meta["optimizer"]
    )
    if parts.scheduler is not None and meta.get("scheduler"):
        parts.scheduler.load_state_dict(meta["scheduler"])
    if parts.scaler is not None and meta.get("scaler"):
        parts.scaler.load_state_dict(meta["scaler"])
    best = (
        load_file(str(ckpt / "best.safetensors")) if (ckpt / "best.safetensors").is_file() else None
    )
    return TrainState(**meta["state"]), best
