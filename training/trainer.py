"""The one trainer skeleton: a task supplies its model, step, validation, calibration and summary.

:func:`train_task` owns everything else: threads, seeds and device, the train / val datasets and
their loaders, BatchNorm refresh before each validation, optimizer steps under
:class:`~training.loop.Precision`, the LR schedule (:class:`~training.loop.ScheduledLR`), the
epoch loop with checkpoints and resume (:func:`~training.loop.fit`), the artifact and
``config.json``, and the one-line summary. :func:`run_cli` is every trainer's ``main``.
"""

from __future__ import annotations

import argparse
import sys
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import nn
from torch.utils.data import DataLoader, Subset

from medfakedet import checkset
from medfakedet.artifacts import save_artifact
from medfakedet.data.paths import resolve_data_root
from medfakedet.pretrained import InitError, initialize
from medfakedet.runtime import machine_info, select_device, setup_threads
from training.checkpoint import Resumable
from training.common import epoch_generator, fixed_subset, seed_everything, write_json
from training.config import config_to_dict
from training.loop import Precision, ScheduledLR, fit, refresh_batchnorm


@dataclass
class RunData:
    """What every task starts from: device, output folder and the three datasets."""

    device: torch.device
    out: Path
    root: Path
    train: Any  # augmented when cfg.augment
    val: Any
    clean_train: Any  # the train split without augmentation (BatchNorm statistics)


class TrainingTask(ABC):
    """What one task supplies to :func:`train_task`; ``cfg`` is its typed config dataclass.

    The config must have ``validate()``, ``preprocess()`` and the fields ``arch``, ``init``,
    ``seed``, ``device``, ``num_threads``, ``split_mode``, ``augment``, ``epochs``,
    ``epoch_repeats``, ``batch_size``, ``lr``, ``lr_schedule``, ``amp``, ``max_minutes``,
    ``num_workers``, ``bn_recalibration_images`` and ``version``.
    """

    #: The artifact's task name and the dataset folder (``medfake`` / ``medfakeinpaint``).
    task: ClassVar[str]
    layout: ClassVar[str]
    #: Training images stored as the CPU path's check set (:mod:`medfakedet.checkset`).
    check_set_count: ClassVar[int] = checkset.DEFAULT_COUNT

    def __init__(self, cfg: Any) -> None:
        self.cfg = cfg
        self.run: RunData | None = None

    @abstractmethod
    def dataset_class(self) -> type:
        """The dataset class of :attr:`layout` (imported on use: the data stack is heavy)."""

    def train_options(self) -> dict[str, Any]:
        """Extra keyword arguments of the train split's dataset (none by default)."""
        return {}

    @abstractmethod
    def train_indices(self, train: Any) -> list[int]:
        """The train-split items this run trains on (all of them, or a seeded subset)."""

    @abstractmethod
    def build_model(self) -> nn.Module: ...

    @abstractmethod
    def build_optimizer(self, model: nn.Module) -> torch.optim.Optimizer: ...

    @abstractmethod
    def images(self, batch: Any) -> torch.Tensor:
        """The input images of a loader batch (for the BatchNorm refresh)."""

    #: Batch size of the BatchNorm refresh (its running averages depend on it).
    @property
    def bn_batch_size(self) -> int:
        return self.cfg.batch_size

    def start_epoch(self, epoch: int) -> None:  # noqa: B027 - optional hook
        """Called before each epoch's batches (e.g. to reseed per-epoch random crops)."""

    @abstractmethod
    def step(
        self, model: nn.Module, batch: Any, precision: Precision
    ) -> tuple[torch.Tensor, dict[str, float]]:
        """The loss of one training batch and its logs (``"n"``: the batch's sample count)."""

    @abstractmethod
    def validate(self, model: nn.Module) -> dict[str, float]:
        """Validation numbers after an epoch (BatchNorm already refreshed)."""

    @abstractmethod
    def score(self, val: dict[str, float]) -> tuple[float, ...]:
        """Ranks epochs by their validation numbers; higher is better."""

    @abstractmethod
    def calibrate(self, model: nn.Module) -> tuple[dict[str, Any], dict[str, Any]]:
        """``(calibration, validation summary)`` of the best weights, both on val."""

    def training_info(self, train_idx: Sequence[int]) -> dict[str, Any]:
        """Task-specific entries of the artifact's ``training`` record."""
        return {}

    def artifact_info(self) -> dict[str, Any]:
        """Extra keyword arguments of :func:`medfakedet.artifacts.save_artifact`."""
        return {}

    @abstractmethod
    def summary(self, calibration: dict[str, Any], val: dict[str, Any]) -> str:
        """The one line printed after saving (without the folder and the seconds)."""


def prepare_run(
    cfg: Any,
    data: str | Path,
    out: str | Path,
    layout: str,
    dataset_cls: type,
    train_options: dict[str, Any] | None = None,
) -> RunData:
    """Validate ``cfg``, set threads / seeds / device, and open the train and val splits
    (``train_options``: extra keyword arguments of the train split's dataset)."""
    cfg.validate()
    setup_threads(cfg.num_threads)
    seed_everything(cfg.seed)
    device = select_device(cfg.device)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    root = resolve_data_root(data, layout)
    common = dict(preprocess=cfg.preprocess(), split_mode=cfg.split_mode, seed=cfg.seed)
    degradation = cfg.degradation()  # training/augment.py: the train split only
    train = dataset_cls(
        root, "train", augment=cfg.augment, degradation=degradation,
        **common, **(train_options or {}),
    )  # fmt: skip
    val = dataset_cls(root, "val", **common)
    if len(train) == 0 or len(val) == 0:
        raise ValueError(
            f"{root}: the {cfg.split_mode} split left {len(train)} train and {len(val)} "
            "val images; need at least one of each"
        )
    return RunData(device, out, root, train, val, dataset_cls(root, "train", **common))


def train_task(
    task: TrainingTask,
    data: str | Path,
    out: str | Path,
    resume: bool = False,
    show_progress: bool = True,
) -> Path:
    """Train, calibrate on val and save the artifact of ``task``; returns the artifact folder."""
    cfg = task.cfg
    wall_start = time.monotonic()
    run = task.run = prepare_run(
        cfg, data, out, task.layout, task.dataset_class(), task.train_options()
    )
    device = run.device
    train_idx = task.train_indices(run.train)
    subset = Subset(run.train, train_idx * cfg.epoch_repeats)
    # Clean (non-augmented, whole) training images for BatchNorm statistics.
    bn_pick = fixed_subset(len(train_idx), cfg.bn_recalibration_images, cfg.seed)
    bn_ds = Subset(run.clean_train, [train_idx[i] for i in bn_pick])

    model = task.build_model()
    init = initialize(model, cfg.init, cfg.arch)  # --init: scratch, imagenet or a file
    model = model.to(device)
    # NHWC: tensor cores on GPU; on this 2-core CPU too, training runs 15-25% faster with it.
    model = model.to(memory_format=torch.channels_last)
    optimizer = task.build_optimizer(model)
    steps_per_epoch = -(-len(subset) // cfg.batch_size)
    scheduler = ScheduledLR(optimizer, cfg.lr_schedule, steps_per_epoch * cfg.epochs)
    precision = Precision(device, cfg.amp)
    config = {"task": task.task, **config_to_dict(cfg)}

    def batches(epoch: int):
        run.train.set_epoch(epoch)
        task.start_epoch(epoch)
        loader = DataLoader(
            subset,
            batch_size=cfg.batch_size,
            shuffle=True,
            generator=epoch_generator(cfg.seed, epoch),
            num_workers=cfg.num_workers,
            pin_memory=device.type == "cuda",
        )
        return iter(loader)

    def train_step(batch: Any) -> dict[str, float]:
        loss, logs = task.step(model, batch, precision)
        precision.step(loss, optimizer)
        scheduler.step()
        return logs

    def validate() -> dict[str, float]:
        if len(bn_ds):
            loader = DataLoader(bn_ds, batch_size=task.bn_batch_size, num_workers=cfg.num_workers)
            refresh_batchnorm(model, (task.images(b) for b in loader), device)
        return task.validate(model)

    result = fit(
        parts=Resumable(model, optimizer, scheduler, precision.scaler),
        epochs=cfg.epochs,
        batches=batches,
        n_batches=steps_per_epoch,
        train_step=train_step,
        validate=validate,
        score=task.score,
        out=run.out,
        config=config,
        resume=resume,
        max_minutes=cfg.max_minutes,
        show_progress=show_progress,
    )

    model.load_state_dict(result.best_weights)
    calibration, val_summary = task.calibrate(model)
    this_run = time.monotonic() - wall_start
    training = {
        "config": config,
        "init": init,
        "data": str(run.root),
        "split_sizes": {"train": len(train_idx), "val": len(run.val)},
        **task.training_info(train_idx),
        "history": result.state.history,
        "best_epoch": result.state.best_epoch,
        "epochs_run": result.state.epoch,
        "stopped_early": result.state.stopped_early,
        "train_seconds": round(result.train_seconds, 2),
        # The whole time this artifact took: this run, plus the training loop of the runs it
        # resumed (a --resume of a finished run only recalibrates: its own time is minutes).
        "total_seconds": round(this_run + result.resumed_seconds, 2),
        "seconds_this_run": round(this_run, 2),
        "machine": machine_info(device),
    }
    model.to("cpu")
    save_artifact(
        run.out,
        model,
        task=task.task,
        arch=cfg.arch,
        preprocess=cfg.preprocess(),
        calibration=calibration,
        metrics={"val": val_summary},
        training=training,
        version=cfg.version,
        **task.artifact_info(),
    )
    write_json(run.out / "config.json", config)
    # The CPU path's agreement check set (issue #12): a sample of the images trained on.
    checkset.write(
        run.out,
        (run.train.image_path(i) for i in train_idx),
        cfg.preprocess(),
        task.check_set_count,
        cfg.seed,
    )
    summary = task.summary(calibration, val_summary)
    print(f"saved {run.out}: {summary}, {training['total_seconds']:.0f} s", file=sys.stderr)
    return run.out


def run_cli(
    parse_args: Callable[[Sequence[str] | None], tuple[argparse.Namespace, Any]],
    train: Callable[..., Path],
    argv: Sequence[str] | None = None,
) -> int:
    """A trainer's ``main``: parse the command line, train, exit 0."""
    args, cfg = parse_args(argv)
    try:
        train(cfg, args.data, args.out, resume=args.resume, show_progress=not args.quiet)
    except InitError as e:  # weights that do not fit: a message, not a traceback
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0
