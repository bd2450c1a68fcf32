"""The epoch loop, and the pieces of a training step both tasks share.

:func:`fit` runs the epochs with progress bars, keeps the best validation weights, checkpoints
every epoch into ``OUT/checkpoint/`` (:mod:`training.checkpoint`), resumes from there, and
stops gracefully at ``max_minutes``. :class:`Precision` owns mixed precision (the dtype and
autocast of :mod:`medfakedet.runtime`, plus the fp16 GradScaler); :class:`ScheduledLR` is the
learning-rate schedule as a torch LR scheduler; :func:`refresh_batchnorm` re-estimates the
BatchNorm statistics with ``torch.optim.swa_utils.update_bn``.
"""

from __future__ import annotations

import contextlib
import math
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.optim.lr_scheduler import LRScheduler
from torch.optim.swa_utils import update_bn

from medfakedet.runtime import amp_dtype, autocast
from training.checkpoint import Resumable, TrainState, cpu_state, load_checkpoint, save_checkpoint
from training.common import progress


class Precision:
    """Mixed precision on CUDA (bf16 when supported, else fp16 with a GradScaler); fp32 on CPU."""

    def __init__(self, device: torch.device, enabled: bool = True) -> None:
        self.device = device
        self.dtype = amp_dtype(device) if enabled else None
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.dtype == torch.float16)

    def autocast(self) -> contextlib.AbstractContextManager:
        return autocast(self.device, self.dtype is not None, self.dtype)

    def step(self, loss: torch.Tensor, optimizer: torch.optim.Optimizer) -> None:
        """Backward pass and optimizer step (through the GradScaler when fp16)."""
        optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        self.scaler.step(optimizer)
        self.scaler.update()


def refresh_batchnorm(
    model: nn.Module, inputs: Iterable[torch.Tensor], device: torch.device
) -> None:
    """Re-estimate BatchNorm running statistics as exact averages over ``inputs``.

    Trained from scratch for few steps (or on crops), the running averages lag far behind the
    weights and eval-mode accuracy collapses (e.g. 0.35 vs 0.81 with batch statistics after 3
    short epochs); a forward pass over a few hundred clean training images fixes that. Only
    the BN buffers change, so training itself is unaffected.
    """

    def prepared(x: torch.Tensor) -> torch.Tensor:
        x = x.to(device, non_blocking=True)
        return x.contiguous(memory_format=torch.channels_last) if device.type == "cuda" else x

    update_bn((prepared(x) for x in inputs), model)


LR_SCHEDULES = ("constant", "onecycle")


def scheduled_lr(schedule: str, base_lr: float, step: int, total_steps: int) -> float:
    """Learning rate at ``step`` of ``total_steps``.

    ``onecycle``: linear warm-up from base/25 over the first 25% of steps, then cosine decay to
    base/1000 -- from-scratch networks converge in far fewer CPU steps than at a constant rate.
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


class ScheduledLR(LRScheduler):
    """:func:`scheduled_lr` as a torch LR scheduler: call ``step()`` after each optimizer step.

    Its ``state_dict()`` (the step count) goes into the checkpoint, so a resumed run continues
    on the same curve. The rate is computed from the base rate directly (not as base times a
    factor) so that it equals :func:`scheduled_lr` to the last bit.
    """

    def __init__(self, optimizer: torch.optim.Optimizer, schedule: str, total_steps: int) -> None:
        if schedule not in LR_SCHEDULES:
            raise ValueError(f"unknown lr_schedule {schedule!r}; expected one of {LR_SCHEDULES}")
        self.schedule, self.total_steps = schedule, total_steps
        super().__init__(optimizer)

    def state_dict(self) -> dict[str, Any]:
        """The step count and last rates; the curve itself comes from the config."""
        state = super().state_dict()
        for key in ("schedule", "total_steps"):
            state.pop(key, None)
        return state

    def get_lr(self) -> list[float]:
        return [
            scheduled_lr(self.schedule, base, self.last_epoch, self.total_steps)
            for base in self.base_lrs
        ]


@dataclass
class FitResult:
    state: TrainState
    best_weights: dict[str, torch.Tensor]
    train_seconds: float  # the training loop's time, over every run of a resumed training
    resumed_seconds: float = 0.0  # of it, what earlier runs spent (0: not resumed)


def fit(
    *,
    parts: Resumable,
    epochs: int,
    batches: Callable[[int], Iterator[Any]],
    n_batches: int,
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
    model = parts.model
    state = TrainState()
    best: dict[str, torch.Tensor] | None = None
    if resume:
        state, best = load_checkpoint(out, parts, config)
        state.stopped_early = False  # a new time budget starts with this run
    resumed_seconds = state.elapsed_s
    budget_s = None if not max_minutes else max_minutes * 60.0
    start = time.monotonic() - state.elapsed_s
    session_start = time.monotonic()
    while state.epoch < epochs:
        epoch = state.epoch
        model.train()
        sums: dict[str, float] = {}
        seen = 0
        desc = f"epoch {epoch + 1}/{epochs}"
        bar = progress(batches(epoch), show_progress, total=n_batches, desc=desc, leave=False)
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
            best = cpu_state(model)
        state.epoch = epoch + 1
        state.elapsed_s = time.monotonic() - start
        state.stopped_early = out_of_time
        print(
            f"epoch {epoch + 1}/{epochs}: "
            + ", ".join(f"{k}={v:.4f}" for k, v in row.items() if isinstance(v, float))
            + (" (best)" if state.best_epoch == epoch + 1 else ""),
            file=sys.stderr,
        )
        save_checkpoint(out, parts, state, config, best)
        if out_of_time:
            print(
                f"stopping: --max-minutes {max_minutes:g} reached during epoch {epoch + 1}; "
                f"keeping the best validation weights (epoch {state.best_epoch})",
                file=sys.stderr,
            )
            break
    if best is None:  # resumed a finished run, or epochs = 0
        best = cpu_state(model)
    return FitResult(state, best, state.elapsed_s, resumed_seconds)
