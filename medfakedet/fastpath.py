"""The CPU inference path, chosen on the machine that serves (issue #12).

Candidates: ``fp32`` (eager, contiguous), ``fp32_cl`` (eager, channels_last) and ``bf16_cl``
(channels_last under bfloat16 autocast; a candidate only where the CPU has native bf16 units:
``avx512_bf16`` or AMX in ``/proc/cpuinfo``; elsewhere bf16 is emulated and slower). At load
every candidate is checked against fp32 on a fixed input set (synthesis8: top-1 agreement
>= 99.5 %; the localizer: mean box IoU >= 0.95): the artifact's stored training images
(:mod:`medfakedet.checkset`), else seeded fields (:func:`check_inputs`). The agreeing ones are
timed round-robin on a short batch; of those within ``PREFERENCE_MARGIN`` of the fastest, the
one nearest fp32 is adopted when it beats fp32 by at least ``MIN_GAIN`` (otherwise fp32: a gain
inside the timing noise is not worth a different numeric path, and the choice stays the same
from one start to the next). The choice is logged and kept as :class:`PathChoice` (shown in the
served model's metadata).

``MEDFAKEDET_CPU_PATH`` (or ``cpu_path`` in the model's model-config.yaml) forces a path:
``fp32``, ``fp32_cl``, ``bf16_cl``, or ``auto`` (measure). A forced path is used as it is
(no check, no timing): the operator asked for it.

Not candidates: TorchScript freezing, torch.compile and int8 FX quantisation rewrite the module
tree, and the in-distribution check (:mod:`medfakedet.ood`) reads features through forward hooks
on named submodules (``layer1``.. ``layer4``, ``enc1``..), which those graphs no longer have.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from medfakedet.density import box_iou, density_to_boxes
from medfakedet.preprocess import PreprocessConfig

logger = logging.getLogger(__name__)

CPU_PATH_ENV = "MEDFAKEDET_CPU_PATH"
AUTO = "auto"
#: Smallest speed-up over fp32 (ratio of the best times) for which another path is adopted.
MIN_GAIN = 1.05
#: Stability between two starts on the same machine (a CI run flipped between bf16 and fp32):
#: among the agreeing paths within this factor of the fastest time, the one nearest fp32 (the
#: order of :func:`candidates`: fp32, fp32_cl, bf16_cl) is adopted, so two paths whose times are
#: within the noise of a shared machine do not swap from one start to the next.
PREFERENCE_MARGIN = 1.10
MIN_TOP1_AGREEMENT = 0.995
MIN_BOX_IOU = 0.95
#: Size of the seeded fallback set (an artifact without a stored check set) of the top-1 check
#: (200: one disagreement is 99.5 %) and of the box check (a mean IoU: fewer images suffice, and
#: the localizer is slower per image). A stored set (:mod:`medfakedet.checkset`) is used whole:
#: 256 images for synthesis8, 128 for the localizer (each image checked costs start-up time).
CHECK_IMAGES = 200
BOX_CHECK_IMAGES = 64
TIMING_BATCH = 8
#: Timed rounds; in each round every path runs once (round-robin), and a path's time is its
#: fastest round: a load spike from another process then slows one round, not one path.
TIMING_REPEATS = 3


@dataclass(frozen=True)
class CpuPath:
    """How a model runs on the CPU: memory format and autocast dtype."""

    name: str
    channels_last: bool = False
    dtype: torch.dtype | None = None  # autocast dtype; None = fp32

    def prepare(self, model: nn.Module) -> nn.Module:
        fmt = torch.channels_last if self.channels_last else torch.contiguous_format
        return model.to(memory_format=fmt)

    def inputs(self, x: torch.Tensor) -> torch.Tensor:
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last else x

    def context(self) -> contextlib.AbstractContextManager:
        if self.dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type="cpu", dtype=self.dtype)


PATHS = {
    "fp32": CpuPath("fp32"),
    "fp32_cl": CpuPath("fp32_cl", channels_last=True),
    "bf16_cl": CpuPath("bf16_cl", channels_last=True, dtype=torch.bfloat16),
}


@dataclass
class PathChoice:
    """The adopted path and why: timings (ms per batch of TIMING_BATCH), agreement scores."""

    path: CpuPath
    reason: str
    timings_ms: dict[str, float] = field(default_factory=dict)
    agreement: dict[str, float] = field(default_factory=dict)
    rejected: dict[str, str] = field(default_factory=dict)
    check_set: str = ""  # what the agreement was measured on

    def as_dict(self) -> dict:
        return {
            "cpu_path": self.path.name,
            "reason": self.reason,
            "check_set": self.check_set,
            "timings_ms": {k: round(v, 2) for k, v in self.timings_ms.items()},
            "agreement": {k: round(v, 4) for k, v in self.agreement.items()},
            "rejected": dict(self.rejected),
        }


def cpu_flags() -> set[str]:
    """The CPU feature flags of ``/proc/cpuinfo`` (empty where there is none)."""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                return set(line.split(":", 1)[1].split())
    return set()


def native_bf16(flags: set[str] | None = None) -> bool:
    """True where the CPU computes bf16 in hardware (AVX512-BF16 or AMX)."""
    flags = cpu_flags() if flags is None else flags
    return bool(flags & {"avx512_bf16", "amx_bf16"})


def candidates(flags: set[str] | None = None) -> list[CpuPath]:
    """The paths worth measuring on this CPU, fp32 first."""
    names = ["fp32", "fp32_cl"] + (["bf16_cl"] if native_bf16(flags) else [])
    return [PATHS[n] for n in names]


def requested(setting: str | None) -> str:
    """The path asked for: ``setting`` (model-config.yaml), overridden by the environment."""
    name = (os.environ.get(CPU_PATH_ENV) or setting or AUTO).strip().lower()
    if name != AUTO and name not in PATHS:
        raise ValueError(f"{CPU_PATH_ENV} / cpu_path {name!r}: use one of {[AUTO, *PATHS]}")
    return name


def check_inputs(cfg: PreprocessConfig, n: int, seed: int = 0) -> torch.Tensor:
    """A fixed set of ``n`` model inputs, normalised as served: seeded random fields of several
    scales (coarse blobs to fine texture) with per-image brightness, contrast and noise, so that
    the outputs spread over the model's decision regions."""
    gen = torch.Generator().manual_seed(seed)
    images = torch.empty(n, 1, cfg.size, cfg.size)
    for i in range(n):
        grid = 2 ** int(torch.randint(1, 6, (1,), generator=gen))
        coarse = torch.rand(1, 1, grid, grid, generator=gen)
        images[i] = F.interpolate(coarse, size=(cfg.size, cfg.size), mode="bicubic")[0]
    gain, offset = torch.rand(2, n, 1, 1, 1, generator=gen)
    noise = 0.03 * torch.randn(images.shape, generator=gen)
    images = (images * (0.2 + 0.8 * gain) + 0.6 * offset - 0.2 + noise).clamp(0, 1)
    images = images.expand(-1, cfg.channels, -1, -1)
    mean = torch.tensor(cfg.mean).view(1, -1, 1, 1)
    std = torch.tensor(cfg.std).view(1, -1, 1, 1)
    return ((images - mean) / std).contiguous()


def outputs(model: nn.Module, path: CpuPath, x: torch.Tensor, batch: int = 32) -> torch.Tensor:
    """The float32 outputs of ``model`` on ``x`` run on ``path`` (the localizer's: its density
    map), ``batch`` images per forward."""
    outs = []
    with torch.inference_mode(), path.context():
        for start in range(0, len(x), batch):
            outs.append(model(path.inputs(x[start : start + batch])))
    if isinstance(outs[0], tuple | list):
        return torch.cat([o[0] for o in outs]).float()  # the localizer's density map
    return torch.cat(outs).float()


def top1_agreement(ref: torch.Tensor, out: torch.Tensor) -> float:
    """Fraction of rows whose arg-max class is the same."""
    return float((ref.argmax(1) == out.argmax(1)).float().mean())


def box_agreement(threshold: float, min_area: int = 1) -> Callable[..., float]:
    """Mean over images of the boxes' IoU with fp32's (density maps at ``threshold``): each fp32
    box scores its best match, an image with no box on either side scores 1."""

    def score(ref: torch.Tensor, out: torch.Tensor) -> float:
        values = []
        for a, b in zip(ref[:, 0].numpy(), out[:, 0].numpy(), strict=True):
            ra = density_to_boxes(a, threshold, min_area)
            rb = density_to_boxes(b, threshold, min_area)
            if not ra and not rb:
                values.append(1.0)
            elif not ra or not rb or len(ra) != len(rb):
                values.append(0.0)
            else:
                values.append(float(np.mean([max(box_iou(x, y) for y in rb) for x in ra])))
        return float(np.mean(values))

    return score


def _times(model: nn.Module, paths: list[CpuPath], x: torch.Tensor) -> dict[str, float]:
    """Fastest milliseconds of a forward of ``x`` on each path, over ``TIMING_REPEATS``
    round-robin rounds after one warm-up round."""
    times: dict[str, list[float]] = {p.name: [] for p in paths}
    for round_ in range(TIMING_REPEATS + 1):
        for path in paths:
            path.prepare(model)
            start = time.perf_counter()
            outputs(model, path, x, batch=len(x))
            if round_:
                times[path.name].append((time.perf_counter() - start) * 1000)
    return {name: min(t) for name, t in times.items()}


def choose(
    model: nn.Module,
    cfg: PreprocessConfig,
    agree: Callable[[torch.Tensor, torch.Tensor], float],
    minimum: float,
    setting: str | None = None,
    paths: list[CpuPath] | None = None,
    images: int = CHECK_IMAGES,
    check_set: torch.Tensor | None = None,
) -> PathChoice:
    """Pick and apply (:meth:`CpuPath.prepare`) the CPU path of ``model``.

    ``agree(fp32_outputs, candidate_outputs)`` scores a candidate on ``check_set`` (the
    artifact's stored images, :mod:`medfakedet.checkset`), or where there is none on ``images``
    inputs of :func:`check_inputs`; it is adopted only if the score reaches ``minimum``.
    ``paths`` replaces :func:`candidates`.
    """
    name = requested(setting)
    if name != AUTO:
        choice = PathChoice(PATHS[name], f"forced by {CPU_PATH_ENV} or cpu_path")
    else:
        x, choice_set = agreement_inputs(cfg, check_set, images)
        choice = _measure(model, x, agree, minimum, paths or candidates())
        choice.check_set = choice_set
    choice.path.prepare(model)
    logger.info("CPU path %s (%s): %s", choice.path.name, choice.reason, choice.as_dict())
    return choice


def agreement_inputs(
    cfg: PreprocessConfig, check_set: torch.Tensor | None, images: int = CHECK_IMAGES
) -> tuple[torch.Tensor, str]:
    """The inputs a candidate path is checked on, and their description: the artifact's stored
    ``check_set`` when it has images, else ``images`` seeded fields (:func:`check_inputs`)."""
    if check_set is not None and len(check_set) > 0:
        return check_set, f"{len(check_set)} stored training images"
    return check_inputs(cfg, images), f"{images} seeded fields"


def _measure(model, x: torch.Tensor, agree, minimum, paths: list[CpuPath]) -> PathChoice:
    fp32 = PATHS["fp32"]
    fp32.prepare(model)
    reference = outputs(model, fp32, x)
    choice = PathChoice(fp32, "")
    agreeing = [fp32]
    for path in paths:
        if path.name == "fp32":
            continue
        path.prepare(model)
        score = agree(reference, outputs(model, path, x))
        choice.agreement[path.name] = score
        if score >= minimum:
            agreeing.append(path)
        else:
            choice.rejected[path.name] = f"agreement {score:.4f} < {minimum}"
    choice.timings_ms = _times(model, agreeing, x[:TIMING_BATCH])
    base, fastest = choice.timings_ms["fp32"], min(choice.timings_ms.values())
    best = preferred(choice.timings_ms)
    if best != "fp32":
        choice.path = next(p for p in agreeing if p.name == best)
        choice.reason = f"measured: {base / choice.timings_ms[best]:.2f}x fp32"
    else:
        choice.reason = (
            f"measured: no path beat fp32 by {MIN_GAIN}x and {PREFERENCE_MARGIN}x the others "
            f"(fastest {base / fastest:.2f}x)"
        )
    return choice


def preferred(timings_ms: dict[str, float]) -> str:
    """The path to adopt given the agreeing paths' times (``fp32`` first, then in the order of
    :func:`candidates`): the first within ``PREFERENCE_MARGIN`` of the fastest, if it beats
    fp32 by ``MIN_GAIN``; else ``fp32``."""
    base, fastest = timings_ms["fp32"], min(timings_ms.values())
    best = next(name for name, ms in timings_ms.items() if ms <= fastest * PREFERENCE_MARGIN)
    return best if base / timings_ms[best] >= MIN_GAIN else "fp32"
