"""What both trainers share: config loading, device and threads, seeding, checkpoints, the loop.

A trainer is a config dataclass plus three callables (one training step on a batch, one
validation pass, one batch iterator per epoch); :func:`fit` runs the epochs with progress bars,
keeps the best validation weights, checkpoints every epoch into ``OUT/checkpoint/`` (safetensors
+ JSON, never pickle), resumes from there, and stops gracefully at ``max_minutes``.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import math
import os
import platform
import random
import sys
import time
import types
import typing
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml
from safetensors.torch import load_file, save_file
from torch import nn
from tqdm import tqdm

CONFIG_DIR = Path(__file__).resolve().parent / "configs"
CHECKPOINT_DIR = "checkpoint"

# ----------------------------------------------------------------------------------------------
# config: dataclass <- YAML <- CLI flags <- --set key=value


def _field_types(cls: type) -> dict[str, Any]:
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls)}


def _coerce(value: Any, hint: Any, key: str) -> Any:
    """Convert ``value`` (from YAML or a string from the CLI) to the field's annotated type."""
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        is_none = value is None or (
            isinstance(value, str) and value.strip().lower() in ("none", "null", "")
        )
        if is_none and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return _coerce(value, inner[0], key)
    if origin in (list, tuple):
        items = value.split(",") if isinstance(value, str) else list(value)
        elem = args[0] if args else str
        out = [_coerce(v.strip() if isinstance(v, str) else v, elem, key) for v in items]
        return tuple(out) if origin is tuple else out
    try:
        if hint is bool:
            if isinstance(value, str):
                low = value.strip().lower()
                if low in ("1", "true", "yes", "on"):
                    return True
                if low in ("0", "false", "no", "off"):
                    return False
                raise ValueError
            return bool(value)
        if hint is int:
            if isinstance(value, float) and not value.is_integer():
                raise ValueError
            return int(value)
        if hint is float:
            return float(value)
        if hint is str:
            return str(value)
    except (TypeError, ValueError):
        raise ValueError(
            f"config key {key!r} expects {getattr(hint, '__name__', hint)}, got {value!r}"
        ) from None
    return value


def apply_overrides(cfg: Any, overrides: dict[str, Any], source: str) -> Any:
    """A copy of the dataclass ``cfg`` with ``overrides`` applied (types checked and coerced)."""
    types_ = _field_types(type(cfg))
    unknown = sorted(set(overrides) - set(types_))
    if unknown:
        raise ValueError(
            f"unknown config key(s) {', '.join(unknown)} in {source}; "
            f"accepted: {', '.join(sorted(types_))}"
        )
    changes = {k: _coerce(v, types_[k], k) for k, v in overrides.items()}
    new = dataclasses.replace(cfg, **changes)
    validate = getattr(new, "validate", None)
    if validate is not None:
        validate()
    return new


def load_yaml_config(cls: type, path: str | Path | None) -> Any:
    """``cls()`` updated with the YAML mapping at ``path`` (None: the dataclass defaults)."""
    cfg = cls()
    if path is None:
        return cfg
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"config file {path} not found")
    data = yaml.safe_load(path.read_text()) or {}
    if not isinstance(data, dict):
        raise ValueError(f"{path} must hold a mapping of config keys, got {type(data).__name__}")
    return apply_overrides(cfg, data, str(path))


def parse_set(items: Iterable[str]) -> dict[str, str]:
    """``["epochs=3", "lr=1e-3"]`` -> ``{"epochs": "3", "lr": "1e-3"}``."""
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"--set expects key=value, got {item!r}")
        out[key.strip().replace("-", "_")] = value.strip()
    return out


def config_to_dict(cfg: Any) -> dict[str, Any]:
    d = dataclasses.asdict(cfg)
    return {k: list(v) if isinstance(v, tuple) else v for k, v in d.items()}


def build_arg_parser(description: str, default_config: Path) -> argparse.ArgumentParser:
    """The trainers' common command line (each adds its own flags on top)."""
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--data", required=True, help="dataset folder")
    p.add_argument("--out", required=True, help="artifact folder to write")
    p.add_argument(
        "--config",
        default=str(default_config),
        help=f"YAML config (default {default_config.relative_to(CONFIG_DIR.parent.parent)}); "
        "or a preset name: paper, embedded, quick (training/configs/)",
    )
    p.add_argument("--epochs", type=int)
    p.add_argument("--batch-size", type=int)
    p.add_argument("--lr", type=float)
    p.add_argument("--size", type=int, help="model input side in pixels")
    p.add_argument("--split-mode", help="how train/val/test are cut")
    p.add_argument("--seed", type=int)
    p.add_argument("--max-minutes", type=float, help="stop gracefully after this wall time")
    p.add_argument("--device", help="auto (default), cpu, cuda, cuda:1, ...")
    p.add_argument("--resume", action="store_true", help="continue from OUT/checkpoint/")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="any config key")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    return p


#: CLI flag (argparse dest) -> config key; flags left unset do not override the YAML.
CLI_KEYS = ("epochs", "batch_size", "lr", "size", "split_mode", "seed", "max_minutes", "device")


def preset_path(config: str | Path, preset_prefix: str) -> Path:
    """A YAML path, or a preset name: "paper" -> ``configs/PREFIX.yaml``, "embedded" ->
    ``configs/PREFIX_embedded.yaml``, "quick" -> ``configs/PREFIX_quick.yaml``."""
    name = str(config)
    if "/" in name or name.endswith((".yaml", ".yml")):
        return Path(config)
    path = CONFIG_DIR / (
        f"{preset_prefix}.yaml" if name == "paper" else f"{preset_prefix}_{name}.yaml"
    )
    if not path.is_file():
        presets = sorted(
            "paper" if p.stem == preset_prefix else p.stem.removeprefix(preset_prefix + "_")
            for p in CONFIG_DIR.glob(f"{preset_prefix}*.yaml")
        )
        raise FileNotFoundError(
            f"no preset {name!r} for {preset_prefix}; presets: {', '.join(presets)} "
            "(or give a YAML path)"
        )
    return path


def resolve_config(cls: type, args: argparse.Namespace, preset_prefix: str) -> Any:
    """Dataclass defaults <- YAML (``--config``) <- named flags <- ``--set key=value``."""
    cfg = load_yaml_config(cls, preset_path(args.config, preset_prefix))
    flags = {k: getattr(args, k) for k in CLI_KEYS if getattr(args, k, None) is not None}
    cfg = apply_overrides(cfg, flags, "command-line flags")
    return apply_overrides(cfg, parse_set(args.set), "--set")


# ----------------------------------------------------------------------------------------------
# machine, device, seeding


def setup_threads(num_threads: int | None = None) -> int:
    """Use every core for intra-op parallelism (torch's default may be fewer in containers)."""
    n = num_threads or os.cpu_count() or 1
    torch.set_num_threads(n)
    return n


def select_device(name: str = "auto") -> torch.device:
    """``auto``: the first CUDA GPU when present, else the CPU."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {name!r} requested but CUDA is not available; use cpu or auto")
    return device


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)


def epoch_generator(seed: int, epoch: int, stream: int = 0) -> torch.Generator:
    """A generator that depends only on (seed, epoch, stream): resuming replays the same draws."""
    state = np.random.SeedSequence([seed, epoch, stream]).generate_state(1, dtype=np.uint64)
    return torch.Generator().manual_seed(int(state[0]) & ((1 << 63) - 1))


def cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def machine_info(device: torch.device | None = None) -> dict[str, Any]:
    """CPU model, core count, torch version and the accelerator, for reports."""
    info = {
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


class Precision:
    """Mixed precision on CUDA (bf16 when supported, else fp16 with a GradScaler); fp32 on CPU."""

    def __init__(self, device: torch.device, enabled: bool = True) -> None:
        self.device = device
        self.enabled = enabled and device.type == "cuda"
        self.dtype = (
            torch.bfloat16 if self.enabled and torch.cuda.is_bf16_supported() else torch.float16
        )
        use_scaler = self.enabled and self.dtype == torch.float16
        self.scaler = torch.amp.GradScaler("cuda", enabled=use_scaler)

    def autocast(self) -> contextlib.AbstractContextManager:
        if not self.enabled:
            return contextlib.nullcontext()
        return torch.autocast(device_type="cuda", dtype=self.dtype)

    def step(self, loss: torch.Tensor, optimizer: torch.optim.Optimizer) -> None:
        optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        self.scaler.step(optimizer)
        self.scaler.update()


def progress(iterable: Iterable, enabled: bool, **kwargs: Any) -> Iterable:
    return tqdm(iterable, disable=not enabled, file=sys.stderr, dynamic_ncols=True, **kwargs)


# ----------------------------------------------------------------------------------------------
# checkpoints: safetensors for every tensor, JSON for the rest


def _cpu_state(module: nn.Module) -> dict[str, torch.Tensor]:
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


def save_checkpoint(
    out: Path,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    state: TrainState,
    config: dict[str, Any],
    best_weights: dict[str, torch.Tensor] | None,
    scaler: torch.amp.GradScaler | None = None,
) -> None:
    """Write ``OUT/checkpoint/{last,best,optimizer}.safetensors`` and ``state.json``."""
    ckpt = out / CHECKPOINT_DIR
    ckpt.mkdir(parents=True, exist_ok=True)
    save_file(_cpu_state(model), str(ckpt / "last.safetensors"))
    if best_weights is not None:
        save_file(best_weights, str(ckpt / "best.safetensors"))
    tensors, opt_meta = optimizer_to_safetensors(optimizer)
    save_file(tensors, str(ckpt / "optimizer.safetensors"))
    meta = {
        "state": dataclasses.asdict(state),
        "optimizer": opt_meta,
        "scaler": scaler.state_dict() if scaler is not None and scaler.is_enabled() else None,
        "config": config,
    }
    tmp = ckpt / "state.json.tmp"
    tmp.write_text(json.dumps(meta, indent=1, default=float) + "\n")
    tmp.replace(ckpt / "state.json")  # state.json names a complete checkpoint, or none


def load_checkpoint(
    out: Path,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    config: dict[str, Any],
    scaler: torch.amp.GradScaler | None = None,
) -> tuple[TrainState, dict[str, torch.Tensor] | None]:
    """Restore model, optimizer and progress from ``OUT/checkpoint/``."""
    ckpt = out / CHECKPOINT_DIR
    if not (ckpt / "state.json").is_file():
        raise FileNotFoundError(f"--resume: no checkpoint in {ckpt} (state.json missing)")
    meta = json.loads((ckpt / "state.json").read_text())
    for key in ("arch", "size", "task"):
        old, new = meta["config"].get(key), config.get(key)
        if old != new:
            raise ValueError(
                f"--resume: checkpoint in {ckpt} was trained with {key}={old!r}, "
                f"the config now says {new!r}; use another --out or the same {key}"
            )
    model.load_state_dict(load_file(str(ckpt / "last.safetensors")), strict=True)
    optimizer_from_safetensors(
        optimizer, load_file(str(ckpt / "optimizer.safetensors")), meta["optimizer"]
    )
    if scaler is not None and meta.get("scaler"):
        scaler.load_state_dict(meta["scaler"])
    best = (
        load_file(str(ckpt / "best.safetensors")) if (ckpt / "best.safetensors").is_file() else None
    )
    return TrainState(**meta["state"]), best


# ----------------------------------------------------------------------------------------------
# the loop


@torch.no_grad()
def recalibrate_batchnorm(
    model: nn.Module, inputs: Iterable[torch.Tensor], device: torch.device
) -> None:
    """Re-estimate BatchNorm running statistics as exact averages over ``inputs``.

    Trained from scratch for few steps (or on crops), the running averages lag far behind the
    weights and eval-mode accuracy collapses (e.g. 0.35 vs 0.81 with batch statistics after 3
    short epochs); a forward pass over a few hundred clean training images fixes that. Only
    the BN buffers change, so training itself is unaffected.
    """
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not norms:
        return
    momenta = [m.momentum for m in norms]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # cumulative average
    was_training = model.training
    model.train()
    for x in inputs:
        x = x.to(device, non_blocking=True)
        if device.type == "cuda":
            x = x.contiguous(memory_format=torch.channels_last)
        model(x)
    for m, momentum in zip(norms, momenta, strict=True):
        m.momentum = momentum
    model.train(was_training)


LR_SCHEDULES = ("constant", "onecycle")


def scheduled_lr(schedule: str, base_lr: float, step: int, total_steps: int) -> float:
    """Learning rate at ``step`` of ``total_steps``.

    ``onecycle``: linear warm-up from base/25 over the first 25% of steps, then cosine decay to
    base/1000 -- from-scratch networks converge in far fewer CPU steps than at a constant rate.
    A pure function of the step, so a resumed run continues on exactly the same curve.
    """
    if schedule == "constant" or total_steps <= 0:
        return base_lr
    if schedule != "onecycle":
        raise ValueError(f"unknown lr_schedule {schedule!r}; expected one of {LR_SCHEDULES}")
    warm = max(1, int(0.25 * total_steps))
    if step < warm:
        return base_lr * (1 / 25 + (1 - 1 / 25) * step / warm)
    t = min(1.0, (step - warm) / max(1, total_steps - warm))
    low = base_lr / 1000
    return low + (base_lr - low) * 0.5 * (1 + math.cos(math.pi * t))


class LrScheduler:
    """Sets the optimizer's learning rate before every step from :func:`scheduled_lr`.

    ``start_epoch(e)`` puts the step counter at the start of epoch ``e`` (also after a resume).
    """

    def __init__(
        self,
        optimizer: torch.optim.Optimizer,
        schedule: str,
        base_lr: float,
        steps_per_epoch: int,
        epochs: int,
    ) -> None:
        self.optimizer, self.schedule, self.base_lr = optimizer, schedule, base_lr
        self.steps_per_epoch, self.total = steps_per_epoch, steps_per_epoch * epochs
        self.step_index = 0

    def start_epoch(self, epoch: int) -> None:
        self.step_index = epoch * self.steps_per_epoch

    def step(self) -> None:
        lr = scheduled_lr(self.schedule, self.base_lr, self.step_index, self.total)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        self.step_index += 1


def fixed_subset(n_total: int, n: int, seed: int) -> list[int]:
    """A seeded choice of ``min(n, n_total)`` indices, sorted."""
    rng = np.random.default_rng([seed, 7])
    return sorted(rng.permutation(n_total)[: min(n, n_total)].tolist())


@dataclass
class RunData:
    """What both trainers start from: device, output folder and the three datasets."""

    device: torch.device
    out: Path
    root: Path
    train: Any  # augmented when cfg.augment
    val: Any
    clean_train: Any  # the train split without augmentation (BatchNorm statistics)


def prepare_run(
    cfg: Any, data: str | Path, out: str | Path, layout: str, dataset_cls: type
) -> RunData:
    """Validate ``cfg``, set threads / seeds / device, and open the train and val splits."""
    from training.evaluate import resolve_data_root  # evaluate imports this module

    cfg.validate()
    setup_threads(cfg.num_threads)
    seed_everything(cfg.seed)
    device = select_device(cfg.device)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    root = resolve_data_root(data, layout)
    common = dict(preprocess=cfg.preprocess(), split_mode=cfg.split_mode, seed=cfg.seed)
    train = dataset_cls(root, "train", augment=cfg.augment, **common)
    val = dataset_cls(root, "val", **common)
    if len(train) == 0 or len(val) == 0:
        raise ValueError(
            f"{root}: the {cfg.split_mode} split left {len(train)} train and {len(val)} "
            "val images; need at least one of each"
        )
    return RunData(device, out, root, train, val, dataset_cls(root, "train", **common))


@dataclass
class FitResult:
    state: TrainState
    best_weights: dict[str, torch.Tensor]
    train_seconds: float


def fit(
    *,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    precision: Precision,
    epochs: int,
    batches: Callable[[int], Iterator[Any]],
    n_batches: Callable[[int], int],
    train_step: Callable[[Any], dict[str, float]],
    validate: Callable[[], dict[str, float]],
    score: Callable[[dict[str, float]], tuple[float, ...]],
    out: Path,
    config: dict[str, Any],
    resume: bool = False,
    max_minutes: float | None = None,
    show_progress: bool = True,
) -> FitResult:
    """Train for ``epochs`` epochs, validating after each; keep the best validation weights.

    ``score(validate())`` ranks epochs, higher is better, as a tuple (e.g. accuracy, then
    minus the loss to break ties). After ``max_minutes`` of this run's training-loop wall
    time the current epoch is cut short, validated, checkpointed, and training stops.
    """
    state = TrainState()
    best: dict[str, torch.Tensor] | None = None
    if resume:
        state, best = load_checkpoint(out, model, optimizer, config, precision.scaler)
        if state.stopped_early:
            state.stopped_early = False  # a new time budget starts with this run
    budget_s = None if not max_minutes else max_minutes * 60.0
    start = time.monotonic() - state.elapsed_s
    session_start = time.monotonic()
    while state.epoch < epochs:
        epoch = state.epoch
        model.train()
        sums: dict[str, float] = {}
        seen = 0
        bar = progress(
            batches(epoch),
            show_progress,
            total=n_batches(epoch),
            desc=f"epoch {epoch + 1}/{epochs}",
            leave=False,
        )
        out_of_time = False
        for batch in bar:
            logs = train_step(batch)
            n = int(logs.pop("n", 1))
            seen += n
            for k, v in logs.items():
                sums[k] = sums.get(k, 0.0) + v * n
            if show_progress:
                bar.set_postfix({k: f"{v / seen:.4f}" for k, v in sums.items()})
            if budget_s is not None and time.monotonic() - session_start >= budget_s:
                out_of_time = True
                break
        if show_progress:
            bar.close()
        model.eval()
        val = validate()
        row = {"epoch": epoch + 1, **{f"train_{k}": v / max(seen, 1) for k, v in sums.items()}}
        row.update({f"val_{k}": v for k, v in val.items()})
        row["partial"] = out_of_time
        row["elapsed_s"] = round(time.monotonic() - start, 2)
        state.history.append(row)
        ranked = [float(v) for v in score(val)]
        if best is None or state.best_score is None or tuple(ranked) > tuple(state.best_score):
            state.best_score, state.best_epoch = ranked, epoch + 1
            best = _cpu_state(model)
        state.epoch = epoch + 1
        state.elapsed_s = time.monotonic() - start
        state.stopped_early = out_of_time
        print(
            f"epoch {epoch + 1}/{epochs}: "
            + ", ".join(f"{k}={v:.4f}" for k, v in row.items() if isinstance(v, float))
            + (" (best)" if state.best_epoch == epoch + 1 else ""),
            file=sys.stderr,
        )
        save_checkpoint(out, model, optimizer, state, config, best, precision.scaler)
        if out_of_time:
            print(
                f"stopping: --max-minutes {max_minutes:g} reached during epoch {epoch + 1}; "
                f"keeping the best validation weights (epoch {state.best_epoch})",
                file=sys.stderr,
            )
            break
    if best is None:  # resumed a finished run, or epochs = 0
        best = _cpu_state(model)
    return FitResult(state, best, state.elapsed_s)


def write_json(path: Path, data: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2, default=_json_default) + "\n")


def _json_default(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")
