"""Small helpers every training and evaluation module uses: seeding, progress bars, JSON."""

from __future__ import annotations

import json
import random
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm


def seed_everything(seed: int) -> None:
    """Seed Python's, numpy's and torch's global generators."""
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)


def epoch_generator(seed: int, epoch: int, stream: int = 0) -> torch.Generator:
    """A generator that depends only on (seed, epoch, stream): resuming replays the same draws."""
    state = np.random.SeedSequence([seed, epoch, stream]).generate_state(1, dtype=np.uint64)
    return torch.Generator().manual_seed(int(state[0]) & ((1 << 63) - 1))


def fixed_subset(n_total: int, n: int, seed: int) -> list[int]:
    """A seeded choice of ``min(n, n_total)`` indices, sorted."""
    rng = np.random.default_rng([seed, 7])
    return sorted(rng.permutation(n_total)[: min(n, n_total)].tolist())


def progress(iterable: Iterable, enabled: bool, **kwargs: Any) -> Iterable:
    """A tqdm bar on stderr, or the bare iterable when ``enabled`` is false."""
    return tqdm(iterable, disable=not enabled, file=sys.stderr, dynamic_ncols=True, **kwargs)


def write_json(path: Path, data: Any) -> None:
    """``data`` as indented JSON (numpy scalars and arrays, and paths, converted)."""
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
