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

``int8`` (synthesis8 only, opt-in): post-training static quantisation in eager mode,
torchvision's quantizable ResNet18 with its convolutions, batch norms and ReLUs fused, the
``x86`` engine's per-channel weights and histogram-observed activations calibrated on the first
``INT8_CALIBRATION_IMAGES`` images of the check set. Eager mode keeps the module tree, so the
in-distribution check's forward hooks on ``layer1`` .. ``layer4`` still see the features
(dequantized). The quantized copy runs the forward; the float model stays for what needs
gradients (the Grad-CAM explanation). Forced on a model it cannot quantize (the localizer's
U-Net) or where torch lacks the ``x86`` engine, it falls back to fp32 and says so.
It is not an ``auto`` candidate: measured on the 192-px real-scan model (AMD EPYC, one thread),
it ran 5.6x fp32 at b=16 and agreed with fp32 on all 256 stored training images, but on 300
real-val / fake-val scans from other sources only on 98.7-99.0 % of the classes (bf16_cl: 100 %),
so the stored set cannot vouch for it. ``MEDFAKEDET_CPU_PATH=int8`` (or ``cpu_path: int8``)
takes it for the speed, with that cost; ``make performance`` measures it on the machine.

Not candidates: TorchScript freezing, torch.compile and FX graph quantisation rewrite the module
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
#: order of :func:`candidates`: fp32, fp32_cl, bf16_cl) is adopted, so two paths whose
#: times are within the noise of a shared machine do not swap from one start to the next.
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
#: Images of the check set (its first ones) that calibrate the int8 activation ranges.
INT8_CALIBRATION_IMAGES = 64


@dataclass(frozen=True)
class CpuPath:
    """How a model runs on the CPU: memory format and autocast dtype."""

    name: str
    channels_last: bool = False
    dtype: torch.dtype | None = None  # autocast dtype; None = fp32
    quantized: bool = False  # int8: a quantized copy of the model runs instead of the model

    def prepare(self, model: nn.Module, calibration: torch.Tensor | None = None) -> nn.Module:
        """The module to run on this path: ``model`` itself in the path's memory format (set in
        place), or for a quantized path a quantized copy calibrated on ``calibration``."""
        if self.quantized:
            if calibration is None:
                raise ValueError(f"path {self.name} needs calibration inputs")
            return quantize_int8(model, calibration)
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
    "int8": CpuPath("int8", quantized=True),
}
#: The quantized engine of the int8 path (fbgemm's successor on x86 CPUs).
INT8_ENGINE = "x86"


@dataclass
class PathChoice:
    """The adopted path and why: timings (ms per batch of TIMING_BATCH), agreement scores."""

    path: CpuPath
    reason: str
    timings_ms: dict[str, float] = field(default_factory=dict)
    agreement: dict[str, float] = field(default_factory=dict)
    rejected: dict[str, str] = field(default_factory=dict)
    check_set: str = ""  # what the agreement was measured on
    module: nn.Module | None = None  # what runs the forward on this path (set by choose)

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


def int8_supported(model: nn.Module | None) -> bool:
    """True where torch has the x86 quantized engine and ``model`` is a torchvision ResNet18
    (the architecture :func:`quantize_int8` rebuilds)."""
    if model is None or INT8_ENGINE not in torch.backends.quantized.supported_engines:
        return False
    from torchvision.models.resnet import BasicBlock, ResNet

    return (
        isinstance(model, ResNet)
        and isinstance(model.layer1[0], BasicBlock)
        and [len(getattr(model, f"layer{i}")) for i in range(1, 5)] == [2, 2, 2, 2]
    )


def quantize_int8(model: nn.Module, calibration: torch.Tensor) -> nn.Module:
    """An int8 copy of the float ResNet18 ``model``: torchvision's quantizable ResNet18 with its
    weights, fused, observed on ``calibration`` (model inputs) and converted. ``model`` is
    left as it was."""
    if not int8_supported(model):
        raise ValueError(f"int8: no quantized version of {type(model).__name__} here")
    import warnings

    from torch.ao import quantization as tq
    from torchvision.models import quantization as qmodels

    torch.backends.quantized.engine = INT8_ENGINE
    quantized = qmodels.resnet18(weights=None, quantize=False, num_classes=model.fc.out_features)
    quantized.load_state_dict(model.state_dict())  # strict: the same architecture, every weight
    quantized.eval().fuse_model()
    quantized.qconfig = tq.get_default_qconfig(INT8_ENGINE)
    with warnings.catch_warnings():  # eager-mode quantisation is deprecated upstream, not gone
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", UserWarning)
        tq.prepare(quantized, inplace=True)
        with torch.inference_mode():
            for start in range(0, len(calibration), 32):
                quantized(calibration[start : start + 32].contiguous())
        tq.convert(quantized, inplace=True)
    return quantized


def candidates(flags: set[str] | None = None) -> list[CpuPath]:
    """The paths ``auto`` measures on this CPU, fp32 first."""
    names = ["fp32", "fp32_cl"] + (["bf16_cl"] if native_bf16(flags) else [])
    return [PATHS[n] for n in names]


def runnable(model: nn.Module, flags: set[str] | None = None) -> list[CpuPath]:
    """Every path ``model`` can run on this CPU: the candidates, and int8 where it applies
    (what the benchmark measures)."""
    return candidates(flags) + ([PATHS["int8"]] if int8_supported(model) else [])


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


def runner(
    model: nn.Module, path: CpuPath, calibration: torch.Tensor | None = None
) -> tuple[Callable[..., torch.Tensor], nn.Module]:
    """``(run, module)``: ``run(x, batch=32)`` gives :func:`outputs` of ``x`` on ``path``, run by
    ``module``. Paths that share ``model`` set its memory format before each run; a quantized
    path builds its copy once, calibrated on ``calibration`` (:meth:`CpuPath.prepare`)."""
    if path.quantized:
        module = path.prepare(model, calibration)
        return (lambda x, batch=32: outputs(module, path, x, batch)), module

    def run(x: torch.Tensor, batch: int = 32) -> torch.Tensor:
        path.prepare(model)
        return outputs(model, path, x, batch)

    return run, model


def _times(runners: dict[str, Callable[..., torch.Tensor]], x: torch.Tensor) -> dict[str, float]:
    """Fastest milliseconds of a forward of ``x`` by each runner, over ``TIMING_REPEATS``
    round-robin rounds after one warm-up round."""
    times: dict[str, list[float]] = {name: [] for name in runners}
    for round_ in range(TIMING_REPEATS + 1):
        for name, run in runners.items():
            start = time.perf_counter()
            run(x, len(x))
            if round_:
                times[name].append((time.perf_counter() - start) * 1000)
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
    ``paths`` replaces :func:`candidates`. The returned choice's ``module`` is what runs the
    forward: ``model`` itself, or its quantized copy on the int8 path.
    """
    name = requested(setting)
    if name == AUTO:
        x, choice_set = agreement_inputs(cfg, check_set, images)
        choice = _measure(model, x, agree, minimum, paths or candidates())
        choice.check_set = choice_set
    elif PATHS[name].quantized and not int8_supported(model):
        choice = PathChoice(
            PATHS["fp32"],
            f"{name} forced, but no int8 version of {type(model).__name__} here: fp32",
        )
    else:
        choice = PathChoice(PATHS[name], f"forced by {CPU_PATH_ENV} or cpu_path")
    if choice.module is None and choice.path.quantized:  # forced: calibrated, not checked
        x, choice.check_set = agreement_inputs(cfg, check_set, images)
        choice.module = choice.path.prepare(model, x[:INT8_CALIBRATION_IMAGES])
    elif choice.module is None:
        choice.module = choice.path.prepare(model)
    if choice.path.quantized:  # the float model stays (explanations), on its fp32 layout
        PATHS["fp32"].prepare(model)
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
    runners, modules = {}, {}
    for path in [fp32, *(p for p in paths if p.name != "fp32")]:
        runners[path.name], modules[path.name] = runner(model, path, x[:INT8_CALIBRATION_IMAGES])
    reference = runners["fp32"](x)
    choice = PathChoice(fp32, "")
    agreeing = {"fp32": fp32}
    for path in paths:
        if path.name == "fp32":
            continue
        score = agree(reference, runners[path.name](x))
        choice.agreement[path.name] = score
        if score >= minimum:
            agreeing[path.name] = path
        else:
            choice.rejected[path.name] = f"agreement {score:.4f} < {minimum}"
    timed = {name: runners[name] for name in agreeing}
    choice.timings_ms = _times(timed, x[:TIMING_BATCH])
    base, fastest = choice.timings_ms["fp32"], min(choice.timings_ms.values())
    best = preferred(choice.timings_ms)
    if best != "fp32":
        choice.path = agreeing[best]
        choice.module = modules[best] if choice.path.quantized else None  # else: choose sets it
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
