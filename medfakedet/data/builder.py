"""Build both datasets of the paper, synthetically, in their exact layouts.

``build_datasets(out)`` writes::

    OUT/medfake/<organ>/<real|fake>/<name>.png + manifest.csv
    OUT/medfakeinpaint/{images,density,masks,labels}/ID.png|txt + split_fixed_density.json
        + manifest.csv
    OUT/contact_sheet.png   what was built, for a person to look at
    OUT/build.json          arguments, counts, seconds taken, versions

Real images are procedural phantoms (medfakedet.data.phantoms) or, with ``real_dir``, real
scans from ``real_dir/<organ>/``; fakes come from medfakedet.data.fakes. Every MedFake image,
real or fake, goes through :func:`finalize_gray` and :func:`medfakedet.imaging.encode_png`, so
size, mode, format and encoder settings cannot reveal the label.

Determinism: every item draws from ``np.random.SeedSequence([seed, stream, ...])`` keyed by what
it is, never by when it runs, and torch runs single-threaded in the fake jobs, so the files are
byte-identical for a seed whatever the worker count (``build.json`` alone records timings).
"""

from __future__ import annotations

import csv
import json
import math
import multiprocessing
import os
import platform
import re
import shutil
import sys
import time
import warnings
from collections import Counter
from collections.abc import Callable, Iterable
from concurrent.futures import Future, ProcessPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
from scipy import ndimage
from tqdm import tqdm

from medfakedet.imaging import ImageDecodeError, encode_png, load_image_file, to_uint8
from medfakedet.labels import ORGANS
from medfakedet.preprocess import resize_tensor, to_channels, to_tensor

from .inpaint import (
    INPAINT_FRACTIONS,
    SPLIT_FILE,
    SUBDIRS,
    group_split_ids,
    write_record,
)
from .manipulations import MANIPULATIONS, manipulate
from .medfake import MANIFEST_COLUMNS, MANIFEST_NAME, is_image_file

DEFAULT_PER_CLASS = 200
DEFAULT_INPAINT = 2000
DEFAULT_SIZE = 128
DEFAULT_SEED = 42
#: Variants written per source slice; "orig" is untouched (one image in five).
VARIANTS: tuple[str, ...] = ("orig", "m1", "m2", "m3", "m45")
#: Regions per variant (m45: four or five).
VARIANT_REGIONS: dict[str, tuple[int, ...]] = {"m1": (1,), "m2": (2,), "m3": (3,), "m45": (4, 5)}
#: Manipulations of the default build: the inpainting kinds, as in the paper's MedFakeInpaint
#: (DDPM inpainting regenerates a region's content). ``copy_move`` is opt-in (``inpaint_kinds``):
#: its pasted content is genuine tissue of the same slice, which a single-image density model
#: cannot tell from untouched tissue (box recall 0.00 even on training images; README.md, "What
#: the models can and cannot do"); detecting it needs a self-similarity search.
DEFAULT_INPAINT_KINDS: tuple[str, ...] = ("lesion", "removal")
INPAINT_MANIFEST_COLUMNS: tuple[str, ...] = ("id", "source", "variant", "kind", "n_regions")
MEDFAKE_DIR, INPAINT_DIR = "medfake", "medfakeinpaint"
CONTACT_SHEET, BUILD_INFO = "contact_sheet.png", "build.json"

# Seed streams: an item's seed is [seed, stream, ...its identity], never its run order.
_REAL, _FAKE, _INPAINT = 1, 2, 3
_REAL_CHUNK, _INPAINT_CHUNK = 50, 8


def _rng(*key: int) -> np.random.Generator:
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


def _write_png(path: Path, image: np.ndarray, size: int) -> None:
    path.write_bytes(encode_png(finalize_gray(image, size)))


def estimate_tissue_mask(image: np.ndarray) -> np.ndarray:
    """Where lesions may go in a real brain slice: Otsu foreground, holes filled, the largest
    component, eroded away from the skull edge."""
    smooth = ndimage.gaussian_filter(image.astype(np.float32), 1.0)
    hist, edges = np.histogram(smooth, bins=256, range=(0, 256))
    p = hist / max(hist.sum(), 1)
    omega, mu = np.cumsum(p), np.cumsum(p * edges[:-1])
    between = (mu[-1] * omega - mu) ** 2 / np.maximum(omega * (1 - omega), 1e-12)
    fg = ndimage.binary_fill_holes(smooth > edges[int(np.argmax(between))])
    labels, count = ndimage.label(fg)
    if count == 0:
        return fg
    areas = ndimage.sum_labels(np.ones_like(labels), labels, np.arange(1, count + 1))
    largest = labels == int(np.argmax(areas)) + 1
    margin = max(1, round(6 * min(image.shape) / 128))
    return ndimage.binary_erosion(largest, iterations=margin)


def safe_name(text: str) -> str:
    """File-name-safe version of ``text`` (letters, digits, ``-``)."""
    return re.sub(r"[^A-Za-z0-9-]+", "-", text).strip("-") or "x"


# ------------------------------------------------------------------------------- jobs
# Top-level functions, so worker processes can run them; each writes its own files and
# returns small rows.


def _init_worker() -> None:
    import torch

    # CPU float reductions are reproducible per thread count: fix it.
    torch.set_num_threads(1)


def _medfake_row(
    organ: str, is_fake: bool, name: str, approach: str, group: str, seed: int
) -> dict[str, Any]:
    src = "fake" if is_fake else "real"
    return {
        "path": f"{organ}/{src}/{name}.png",
        "organ": organ,
        "label": src,
        "approach": approach,
        "group": group,
        "seed": seed,
        "source": "",
    }


def _real_job(
    out: str, organ: str, start: int, stop: int, seed: int, size: int
) -> tuple[list[dict], list[np.ndarray]]:
    from .phantoms import generate_slice

    root = Path(out)
    organ_index = ORGANS.index(organ)
    rows, images = [], []
    for i in range(start, stop):
        image = finalize_gray(
            generate_slice(organ, _rng(seed, _REAL, organ_index, i), size).image, size
        )
        name = f"{organ}_real_{i:05d}"
        _write_png(root / organ / "real" / f"{name}.png", image, size)
        rows.append(_medfake_row(organ, False, name, "", name, seed))
        images.append(image)
    return rows, images


def _fake_job(
    out: str,
    organ: str,
    reals: list[np.ndarray],
    real_groups: list[str],
    n: int,
    seed: int,
    size: int,
    time_budget_s: float | None,
) -> list[dict]:
    import torch

    from .fakes import make_fakes

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # same thread count inline and in workers: same bytes
    try:
        # No budget: train to the step caps, so the weights do not depend on machine speed.
        budget = math.inf if time_budget_s is None else time_budget_s
        fakes = make_fakes(
            organ, reals, n, _rng(seed, _FAKE, ORGANS.index(organ)), time_budget_s=budget
        )
    finally:
        torch.set_num_threads(threads)
    root = Path(out)
    rows = []
    for i, (image, approach, source) in enumerate(fakes):
        name = f"{organ}_fake_{i:05d}"
        # A fake shares the group of the real it was made from, so both land in one split.
        group = real_groups[int(source)]
        _write_png(root / organ / "fake" / f"{name}.png", image, size)
        rows.append(_medfake_row(organ, True, name, approach, group, seed))
    return rows


def _inpaint_job(
    out: str,
    sources: list[tuple[int, str, np.ndarray | None]],
    n_images: int,
    seed: int,
    size: int,
    kinds: tuple[str, ...] = DEFAULT_INPAINT_KINDS,
) -> list[dict]:
    """Write the variants of each source slice; ``sources`` = (index, name, image or None).

    Without an image the source is a phantom brain slice drawn from its index.
    """
    from .phantoms import generate_slice

    root = Path(out)
    rows = []
    for j, name, image in sources:
        if image is None:
            phantom = generate_slice("brain", _rng(seed, _INPAINT, j), size)
            image, tissue = finalize_gray(phantom.image, size), phantom.tissue_mask
        else:
            image = finalize_gray(image, size)
            tissue = estimate_tissue_mask(image)
        group = f"{name}_0"
        for v, variant in enumerate(VARIANTS):
            if j * len(VARIANTS) + v >= n_images:
                break
            rng = _rng(seed, _INPAINT, j, v + 1)
            if variant == "orig":
                edited, mask, applied = image, np.zeros(image.shape, dtype=bool), []
            else:
                n_regions = int(rng.choice(VARIANT_REGIONS[variant]))
                edited, mask, applied = manipulate(image, tissue, n_regions, rng, kinds)
            image_id = f"{group}_{variant}"
            n = write_record(root, image_id, edited, mask)
            rows.append(
                {
                    "id": image_id,
                    "source": group,
                    "variant": variant,
                    "kind": "+".join(applied),
                    "n_regions": n,
                }
            )
    return rows


# ---------------------------------------------------------------------------- real dir


def load_real_images(
    folder: Path, size: int, limit: int, seed: int, stream: int
) -> tuple[list[tuple[str, np.ndarray]], list[str]]:
    """Up to ``limit`` images of ``folder`` (any format, any depth), gray size x size.

    Files are taken in a seeded order of their sorted paths; unreadable ones are skipped.

    Returns:
        ([(relative path, uint8 image)], [unreadable file messages]).
    """
    files = sorted(p for p in folder.rglob("*") if p.is_file() and not p.name.startswith("."))
    order = _rng(seed, stream).permutation(len(files))
    images, skipped = [], []
    for k in order:
        if len(images) >= limit:
            break
        path = files[k]
        try:
            pixels = load_image_file(path).pixels
        except (ImageDecodeError, OSError) as exc:
            if is_image_file(path):
                skipped.append(f"{path}: {exc}")
            continue
        images.append((path.relative_to(folder).as_posix(), finalize_gray(pixels, size)))
    return images, skipped


def _inpaint_sources(
    n_sources: int, brain_reals: list[tuple[str, np.ndarray]]
) -> list[tuple[int, str, np.ndarray | None]]:
    """(index, unique source name, image or None for a phantom) of each inpainting source."""
    if not brain_reals:
        return [(j, f"ph{j:05d}", None) for j in range(n_sources)]
    sources, seen = [], set()
    for j, (rel, image) in enumerate(brain_reals[:n_sources]):
        name = safe_name(rel.rsplit(".", 1)[0])
        if name in seen:
            name = f"{name}-{j}"
        seen.add(name)
        sources.append((j, name, image))
    return sources


# ---------------------------------------------------------------------------- runner


class _Deferred:
    """An inline job run when its result is asked for, so a progress bar moves per job."""

    def __init__(self, fn: Callable[..., Any], args: tuple[Any, ...]) -> None:
        self._fn, self._args = fn, args

    def result(self) -> Any:
        return self._fn(*self._args)


class _Runner:
    """Runs jobs inline (workers <= 1) or on a spawn process pool; results are taken in order."""

    def __init__(self, workers: int) -> None:
        self.pool: ProcessPoolExecutor | None = None
        if workers > 1:
            self.pool = ProcessPoolExecutor(
                max_workers=workers,
                mp_context=multiprocessing.get_context("spawn"),
                initializer=_init_worker,
            )

    def submit(self, fn: Callable[..., Any], *args: Any) -> Future | _Deferred:
        if self.pool is not None:
            return self.pool.submit(fn, *args)
        return _Deferred(fn, args)

    def close(self) -> None:
        if self.pool is not None:
            self.pool.shutdown(cancel_futures=True)


def _collect(
    futures: Iterable[Future | _Deferred], bar: tqdm, count: Callable[[Any], int]
) -> list[Any]:
    results = []
    for future in futures:
        result = future.result()
        bar.update(count(result))
        results.append(result)
    return results


def _prepare_out(out: Path) -> None:
    """Clear a previous build in ``out`` (only the paths the builder owns)."""
    owned = [out / MEDFAKE_DIR, out / INPAINT_DIR, out / CONTACT_SHEET, out / BUILD_INFO]
    foreign = [p for p in owned[:2] if p.exists() and any(p.iterdir())]
    if foreign and not (out / BUILD_INFO).is_file():
        raise FileExistsError(
            f"{foreign[0]} exists and holds files, but {out} has no {BUILD_INFO}: it is not a "
            "previous build; choose an empty or new --out folder"
        )
    for p in owned:
        if p.is_dir():
            shutil.rmtree(p)
        elif p.exists():
            p.unlink()
    for organ in ORGANS:
        for src in ("real", "fake"):
            (out / MEDFAKE_DIR / organ / src).mkdir(parents=True)
    for sub in SUBDIRS:
        (out / INPAINT_DIR / sub).mkdir(parents=True)


def _write_csv(path: Path, columns: Iterable[str], rows: list[dict], key: str) -> None:
    with path.open("w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=list(columns), lineterminator="\n")
        writer.writeheader()
        for row in sorted(rows, key=lambda r: r[key]):
            writer.writerow(row)


def _load_average() -> float | None:
    return round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None


def _versions() -> dict[str, str]:
    import PIL
    import scipy
    import torch

    from medfakedet import __version__

    return {
        "medfakedet": __version__,
        "python": platform.python_version(),
        "numpy": np.__version__,
        "scipy": scipy.__version__,
        "torch": torch.__version__,
        "pillow": PIL.__version__,
    }


def build_datasets(
    out: str | Path,
    real_dir: str | Path | None = None,
    per_class: int = DEFAULT_PER_CLASS,
    inpaint: int = DEFAULT_INPAINT,
    size: int = DEFAULT_SIZE,
    seed: int = DEFAULT_SEED,
    progress: bool = True,
    workers: int | None = None,
    fake_time_budget_s: float | None = None,
    contact_sheet: bool = True,
    inpaint_kinds: Iterable[str] = DEFAULT_INPAINT_KINDS,
    inpaint_fractions: tuple[float, float, float] = INPAINT_FRACTIONS,
) -> dict[str, Any]:
    """Build MedFake and MedFakeInpaint under ``out`` (see the module docstring).

    Args:
        out: output folder; a previous build there is replaced.
        real_dir: folder with ``brain/ chest/ kidney/ lung/`` real scans (any image format);
            None for procedural phantoms.
        per_class: images per MedFake class (fewer when ``real_dir`` has fewer).
        inpaint: MedFakeInpaint images (5 variants per source slice).
        size: side of every image in pixels.
        seed: the build's seed; the same seed gives byte-identical files.
        progress: show a progress bar on stderr.
        workers: processes (default: up to 2, the CPU count); results do not depend on it.
        fake_time_budget_s: training-time limit per organ for ``fakes.make_fakes``. None (the
            default): no limit, training stops at its step caps and the files are
            byte-identical for a seed; with a limit that triggers, the fakes depend on machine
            speed. 0 skips training (untrained generators: fast, deterministic, for tests).
        contact_sheet: write ``contact_sheet.png``.
        inpaint_kinds: manipulations drawn for MedFakeInpaint (see
            :data:`medfakedet.data.manipulations.MANIPULATIONS`); default the inpainting kinds.
        inpaint_fractions: train / val / test shares of MedFakeInpaint source groups written to
            ``split_fixed_density.json``; default the paper's 85 / 10 / 5.

    Returns:
        The summary also written to ``build.json``.
    """
    t0 = time.perf_counter()
    load_at_start = _load_average()
    if per_class < 1 or inpaint < 0 or not 32 <= size <= 4096:
        raise ValueError(
            f"need per_class >= 1, inpaint >= 0 and 32 <= size <= 4096; got {per_class}, "
            f"{inpaint}, {size}"
        )
    inpaint_kinds = tuple(dict.fromkeys(inpaint_kinds))
    unknown = sorted(set(inpaint_kinds) - set(MANIPULATIONS))
    if not inpaint_kinds or unknown:
        raise ValueError(
            f"inpaint_kinds must name some of {', '.join(MANIPULATIONS)}; got {list(inpaint_kinds)}"
        )
    fractions = tuple(float(f) for f in inpaint_fractions)
    if len(fractions) != 3 or min(fractions) <= 0 or abs(sum(fractions) - 1.0) > 1e-6:
        raise ValueError(
            f"inpaint_fractions must be three positive shares summing to 1; got {inpaint_fractions}"
        )
    out = Path(out)
    workers = min(2, os.cpu_count() or 1) if workers is None else max(1, int(workers))
    _prepare_out(out)
    mf_root, ip_root = out / MEDFAKE_DIR, out / INPAINT_DIR
    n_sources = math.ceil(inpaint / len(VARIANTS))
    skipped: list[str] = []

    real_sets: dict[str, list[tuple[str, np.ndarray]]] = {}
    brain_sources: list[tuple[str, np.ndarray]] = []
    if real_dir is not None:
        real_dir = Path(real_dir)
        missing = [o for o in ORGANS if not (real_dir / o).is_dir()]
        if missing:
            raise FileNotFoundError(
                f"{real_dir} lacks {', '.join(missing)}; --real-dir needs one folder per organ: "
                f"{', '.join(ORGANS)}"
            )
        for organ in ORGANS:
            limit = max(per_class, n_sources) if organ == "brain" else per_class
            images, bad = load_real_images(
                real_dir / organ, size, limit, seed, _REAL * 100 + ORGANS.index(organ)
            )
            if not images:
                raise ValueError(f"no readable image in {real_dir / organ}")
            skipped += bad
            real_sets[organ] = images[:per_class]
            if organ == "brain":
                brain_sources = images[:n_sources]
        n_sources = min(n_sources, len(brain_sources))
        inpaint = min(inpaint, n_sources * len(VARIANTS))
    n_medfake = sum(2 * len(v) for v in real_sets.values()) if real_sets else 8 * per_class
    bar = tqdm(
        total=n_medfake + inpaint, desc="build", unit="img", disable=not progress, file=sys.stderr
    )
    runner = _Runner(workers)
    try:
        # 1. Reals (phantoms in parallel chunks, or the real-dir images written here).
        medfake_rows: list[dict] = []
        reals: dict[str, list[np.ndarray]] = {}
        groups: dict[str, list[str]] = {}
        if real_dir is None:
            jobs = {
                organ: [
                    runner.submit(
                        _real_job,
                        str(mf_root),
                        organ,
                        a,
                        min(a + _REAL_CHUNK, per_class),
                        seed,
                        size,
                    )
                    for a in range(0, per_class, _REAL_CHUNK)
                ]
                for organ in ORGANS
            }
            for organ, futures in jobs.items():
                results = _collect(futures, bar, lambda r: len(r[0]))
                rows = [row for r in results for row in r[0]]
                medfake_rows += rows
                reals[organ] = [im for r in results for im in r[1]]
                groups[organ] = [row["group"] for row in rows]
        else:
            for organ, images in real_sets.items():
                reals[organ], groups[organ] = [], []
                for i, (rel, image) in enumerate(images):
                    name = f"{organ}_real_{i:05d}"
                    _write_png(mf_root / organ / "real" / f"{name}.png", image, size)
                    row = _medfake_row(organ, False, name, "real-dir", name, seed)
                    medfake_rows.append({**row, "source": f"{organ}/{rel}"})
                    reals[organ].append(image)
                    groups[organ].append(name)
                bar.update(len(images))
        # 2. Fakes (longest jobs first) and inpainting chunks.
        fake_futures = [
            runner.submit(
                _fake_job,
                str(mf_root),
                organ,
                reals[organ],
                groups[organ],
                len(reals[organ]),
                seed,
                size,
                fake_time_budget_s,
            )
            for organ in ORGANS
        ]
        sources = _inpaint_sources(n_sources, brain_sources)
        inpaint_futures = [
            runner.submit(
                _inpaint_job,
                str(ip_root),
                sources[a : a + _INPAINT_CHUNK],
                inpaint,
                seed,
                size,
                inpaint_kinds,
            )
            for a in range(0, n_sources, _INPAINT_CHUNK)
        ]
        medfake_rows += [row for rows in _collect(fake_futures, bar, len) for row in rows]
        inpaint_rows = [row for rows in _collect(inpaint_futures, bar, len) for row in rows]
    finally:
        runner.close()
        bar.close()

    _write_csv(mf_root / MANIFEST_NAME, (*MANIFEST_COLUMNS, "source"), medfake_rows, "path")
    _write_csv(ip_root / MANIFEST_NAME, INPAINT_MANIFEST_COLUMNS, inpaint_rows, "id")
    split = group_split_ids(sorted(r["id"] for r in inpaint_rows), seed, fractions)
    (ip_root / SPLIT_FILE).write_text(
        json.dumps({"val": split["val"], "test": split["test"]}, indent=1) + "\n", encoding="utf-8"
    )
    if contact_sheet:
        from .contact_sheet import make_contact_sheet

        make_contact_sheet(out, out / CONTACT_SHEET)

    seconds = time.perf_counter() - t0
    summary = {
        "args": {
            "out": str(out),
            "real_dir": None if real_dir is None else str(real_dir),
            "per_class": per_class,
            "inpaint": inpaint,
            "size": size,
            "seed": seed,
            "workers": workers,
            "fake_time_budget_s": fake_time_budget_s,
            "inpaint_kinds": list(inpaint_kinds),
            "inpaint_fractions": list(fractions),
        },
        "counts": {
            "medfake": dict(
                sorted(Counter(f"{r['organ']}_{r['label']}" for r in medfake_rows).items())
            ),
            "medfake_approaches": dict(
                sorted(Counter(r["approach"] for r in medfake_rows if r["label"] == "fake").items())
            ),
            "inpaint_images": len(inpaint_rows),
            "inpaint_manipulated": sum(1 for r in inpaint_rows if r["n_regions"] > 0),
            "inpaint_regions": sum(r["n_regions"] for r in inpaint_rows),
            "inpaint_kinds": dict(
                sorted(Counter(k for r in inpaint_rows for k in r["kind"].split("+") if k).items())
            ),
            "inpaint_split": {k: len(v) for k, v in split.items()},
        },
        "unreadable_real_files": skipped,
        "seconds": round(seconds, 2),
        # Timings depend on what else runs: record the 1-minute load at start and end.
        "load_average_1min": {"start": load_at_start, "end": _load_average()},
        "versions": _versions(),
    }
    (out / BUILD_INFO).write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    if skipped:
        warnings.warn(f"{len(skipped)} unreadable real files skipped; see build.json", stacklevel=2)
    return summary
