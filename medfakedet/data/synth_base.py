"""Shared parts of the fake synthesizers: reals as tensors, seeded models, histogram matching.

Used by :mod:`.fakes` (VAE, diffusion resynthesis, upsampling) and :mod:`.gan`; see
:mod:`.fakes` for the determinism rules every approach follows.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .phantoms.canvas import display_uint8

MAX_WORK_SIZE = 128  # resolution cap for the patch-based approaches


def stack_reals(reals: Sequence[np.ndarray]) -> tuple[torch.Tensor, tuple[int, int]]:
    """Reals as a (N, 1, H, W) float tensor in [0, 1] at their most common shape."""
    if len(reals) == 0:
        raise ValueError("need at least one real image to fit a synthesizer; got none")
    shapes = [np.shape(r) for r in reals]
    bad = [s for s in shapes if len(s) != 2]
    if bad:
        raise ValueError(f"real images must be 2-D grayscale (H, W) arrays; got shape {bad[0]}")
    values, counts = np.unique(np.asarray(shapes), axis=0, return_counts=True)
    out_shape = (int(values[counts.argmax()][0]), int(values[counts.argmax()][1]))
    tensors = []
    for r in reals:
        t = torch.from_numpy(np.asarray(r, dtype=np.float32) / 255.0)[None, None]
        if t.shape[-2:] != out_shape:
            t = resize(t, out_shape)
        tensors.append(t)
    return torch.cat(tensors), out_shape


def resize(x: torch.Tensor, shape: tuple[int, int], mode: str = "bilinear") -> torch.Tensor:
    if tuple(x.shape[-2:]) == tuple(shape):
        return x
    down = shape[0] < x.shape[-2] or shape[1] < x.shape[-1]
    kw = {"align_corners": False, "antialias": down} if mode in ("bilinear", "bicubic") else {}
    return F.interpolate(x, size=shape, mode=mode, **kw)


def capped_shape(shape: tuple[int, int], cap: int) -> tuple[int, int]:
    scale = min(1.0, cap / max(shape))
    return max(8, round(shape[0] * scale)), max(8, round(shape[1] * scale))


def match_histogram(img: np.ndarray, ref: np.ndarray, levels: int = 256) -> np.ndarray:
    """Monotone remap of ``img`` so its value quantiles follow ``ref``'s.

    Quantile-to-quantile interpolation (not rank assignment), so flat regions stay flat.
    """
    q = np.linspace(0.0, 1.0, levels)
    src_q = np.quantile(img, q)
    ref_q = np.quantile(ref, q)
    src_q, keep = np.unique(src_q, return_index=True)  # np.interp needs increasing x
    return np.interp(img, src_q, ref_q[keep]).astype(np.float32)


def finish(fake: torch.Tensor, ref: torch.Tensor, shape: tuple[int, int]) -> np.ndarray:
    """Resize a (1, h, w) fake to ``shape``, match ``ref``'s histogram, quantise to uint8."""
    img = resize(fake[None], shape)[0, 0].numpy()
    return display_uint8(match_histogram(img, ref[0].numpy()))


def torch_seed(rng: np.random.Generator) -> int:
    return int(rng.integers(0, 2**62))


def train_adam(
    model: nn.Module,
    loss_fn: Callable[[torch.Generator], torch.Tensor],
    gen: torch.Generator,
    max_steps: int,
    time_budget_s: float,
    lr: float,
) -> int:
    """Adam loop until ``max_steps`` or ``time_budget_s``; returns the steps done."""
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    model.train()
    start = time.perf_counter()
    step = 0
    while step < max_steps and time.perf_counter() - start < time_budget_s:
        opt.zero_grad(set_to_none=True)
        loss_fn(gen).backward()
        opt.step()
        step += 1
    model.eval()
    return step


def random_patches(images: torch.Tensor, n: int, patch: int, gen: torch.Generator) -> torch.Tensor:
    """``n`` random (1, patch, patch) crops, randomly h-flipped."""
    N, _, H, W = images.shape
    p = min(patch, H, W)
    idx = torch.randint(0, N, (n,), generator=gen)
    ys = torch.randint(0, H - p + 1, (n,), generator=gen)
    xs = torch.randint(0, W - p + 1, (n,), generator=gen)
    flips = torch.rand(n, generator=gen) < 0.5
    crops = [
        images[i, :, y : y + p, x : x + p]
        for i, y, x in zip(idx.tolist(), ys.tolist(), xs.tolist(), strict=True)
    ]
    out = torch.stack(crops)
    return torch.where(flips[:, None, None, None], out.flip(-1), out)


def build_seeded(seed: int, factory: Callable[[], nn.Module]) -> nn.Module:
    """Build a module with a seeded init without touching torch's global RNG state."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return factory()


class FittedBase:
    """Keeps the reals (float tensor) and output shape shared by all approaches."""

    name = "base"

    def __init__(self) -> None:
        self._reals: torch.Tensor | None = None
        self._shape: tuple[int, int] = (0, 0)
        self.steps_trained = 0
        #: Index (into the fitted reals) of the real each fake of the last sample() came from.
        self.last_sources: list[int] = []

    def _require_fit(self) -> torch.Tensor:
        if self._reals is None:
            raise RuntimeError(f"{type(self).__name__}.sample() called before fit()")
        return self._reals

    def _start_fit(
        self,
        reals: list[np.ndarray],
        rng: np.random.Generator,
        work_shape: tuple[int, int] | None,
        factory: Callable[[], nn.Module],
    ) -> tuple[torch.Tensor, nn.Module, torch.Generator]:
        """Keep the reals and build the seeded model; returns (reals resized to ``work_shape``,
        None: the capped patch shape; the model; the training generator)."""
        work = self._keep_reals(reals, work_shape)
        return (work, *self._seeded_model(rng, factory))

    def _keep_reals(
        self, reals: list[np.ndarray], work_shape: tuple[int, int] | None = None
    ) -> torch.Tensor:
        """Keep the reals; returns them resized to ``work_shape`` (None: the capped patch
        shape)."""
        self._reals, self._shape = stack_reals(reals)
        return resize(self._reals, work_shape or capped_shape(self._shape, MAX_WORK_SIZE))

    @staticmethod
    def _seeded_model(
        rng: np.random.Generator, factory: Callable[[], nn.Module]
    ) -> tuple[nn.Module, torch.Generator]:
        """A model of ``factory`` seeded from ``rng``, and its training generator."""
        seed = torch_seed(rng)
        return build_seeded(seed, factory), torch.Generator().manual_seed(seed)

    def _sampling(self, rng: np.random.Generator) -> tuple[torch.Tensor, torch.Generator]:
        """(fitted reals, sampling generator) at the start of ``sample``."""
        reals = self._require_fit()
        return reals, torch.Generator().manual_seed(torch_seed(rng))

    def _pick(self, n: int, gen: torch.Generator) -> torch.Tensor:
        picks = torch.randint(0, self._require_fit().shape[0], (n,), generator=gen)
        self.last_sources = picks.tolist()
        return picks
