"""What both dataset builders share: seeded item generators, the one image-writing path (with
its seeded encode draw), the job runner (inline or a spawn process pool) and the manifest writer.

Determinism: an item's generator is ``np.random.SeedSequence([seed, stream, ...its identity])``,
keyed by what it is, never by when it runs; workers run torch single-threaded.
"""

from __future__ import annotations

import csv
import multiprocessing
from collections.abc import Callable, Iterable
from concurrent.futures import Future, ProcessPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from medfakedet.degrade import PLAIN_PNG, EncodeSpec, draw_encode, encode_image
from medfakedet.imaging import encode_png, to_uint8
from medfakedet.preprocess import resize_tensor, to_channels, to_tensor

#: Seed streams: reals (phantoms; ``REAL_STREAM * 100 + organ`` orders real-dir files), fakes,
#: MedFakeInpaint sources, encodes (their own stream: ``encode="none"`` leaves the pixels as
#: they were).
REAL_STREAM, FAKE_STREAM, INPAINT_STREAM, ENCODE_STREAM = 1, 2, 3, 4
#: ``random``: every image through :func:`medfakedet.degrade.draw_encode` (JPEG q50-100 or
#: 8/16-bit PNG, resampled 0.5-2x); ``none``: 8-bit PNG at the build size.
ENCODE_MODES: tuple[str, ...] = ("random", "none")


def seeded_rng(*key: int) -> np.random.Generator:
    """The generator of the item identified by ``key`` (the build seed, a stream, indices)."""
    return np.random.default_rng(np.random.SeedSequence([int(k) for k in key]))


def finalize_gray(image: np.ndarray, size: int) -> np.ndarray:
    """The one final path of every image: gray, squash-resize to size x size, uint8.

    Accepts uint8 or float [0, 1] arrays, HxW or HxWxC; uses the core preprocessing's channel
    conversion and resize, so it matches what the models see.
    """
    arr = np.asarray(image)
    if arr.dtype == np.uint8 and arr.shape == (size, size):
        return arr
    pixels = arr.astype(np.float32) / 255.0 if arr.dtype == np.uint8 else arr.astype(np.float32)
    t = resize_tensor(to_channels(to_tensor(pixels), 1), size)
    return to_uint8(t[0].numpy())


def encode_spec(mode: str, key: tuple[int, ...], resize: bool = True) -> EncodeSpec:
    """The encode of the item identified by ``key`` (the build seed, then its identity).

    Drawn from its own seeded generator, by the same rule for real and fake images.
    """
    if mode == "none":
        return PLAIN_PNG
    if mode != "random":
        raise ValueError(f"encode must be one of {', '.join(ENCODE_MODES)}; got {mode!r}")
    return draw_encode(seeded_rng(key[0], ENCODE_STREAM, *key[1:]), resize=resize)


def write_image(folder: Path, name: str, image: np.ndarray, size: int, spec: EncodeSpec) -> str:
    """Write ``image`` through :func:`finalize_gray` and the one encoder; returns the file name.

    ``spec`` picks the format, bit depth, JPEG quality and resampling
    (:func:`medfakedet.degrade.encode_image`); :data:`~medfakedet.degrade.PLAIN_PNG` is the
    8-bit PNG at ``size``.
    """
    gray = finalize_gray(image, size)
    data = encode_png(gray) if spec == PLAIN_PNG else encode_image(gray, spec)
    (folder / f"{name}{spec.suffix}").write_bytes(data)
    return f"{name}{spec.suffix}"


def write_manifest(path: Path, columns: Iterable[str], rows: list[dict], key: str) -> None:
    """Write ``rows`` as CSV with ``columns``, sorted by ``key`` (so run order never shows)."""
    with path.open("w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=list(columns), lineterminator="\n")
        writer.writeheader()
        for row in sorted(rows, key=lambda r: r[key]):
            writer.writerow(row)


def init_worker() -> None:
    """Worker-process initialiser: one torch thread."""
    import torch

    # CPU float reductions are reproducible per thread count: fix it.
    torch.set_num_threads(1)


class Deferred:
    """An inline job run when its result is asked for, so a progress bar moves per job."""

    def __init__(self, fn: Callable[..., Any], args: tuple[Any, ...]) -> None:
        self._fn, self._args = fn, args

    def result(self) -> Any:
        return self._fn(*self._args)


class JobRunner:
    """Runs jobs inline (workers <= 1) or on a spawn process pool; results are taken in order.

    Jobs must be top-level functions (a worker process imports them by name); each writes its
    own files and returns small rows.
    """

    def __init__(self, workers: int, bar: tqdm) -> None:
        self.bar = bar
        self.pool: ProcessPoolExecutor | None = None
        if workers > 1:
            self.pool = ProcessPoolExecutor(
                max_workers=workers,
                mp_context=multiprocessing.get_context("spawn"),
                initializer=init_worker,
            )

    def submit(self, fn: Callable[..., Any], *args: Any) -> Future | Deferred:
        if self.pool is not None:
            return self.pool.submit(fn, *args)
        return Deferred(fn, args)

    def collect(self, futures: Iterable[Future | Deferred], count: Callable[[Any], int]) -> list:
        """The results of ``futures`` in order; the bar advances by ``count(result)`` each."""
        results = []
        for future in futures:
            result = future.result()
            self.bar.update(count(result))
            results.append(result)
        return results

    def close(self) -> None:
        if self.pool is not None:
            self.pool.shutdown(cancel_futures=True)
