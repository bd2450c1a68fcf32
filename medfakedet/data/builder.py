"""Build both datasets of the paper, synthetically, in their exact layouts.

``build_datasets(out)`` writes::

    OUT/medfake/<organ>/<real|fake>/<name>.png + manifest.csv
    OUT/medfakeinpaint/{images,density,masks,labels}/ID.png|txt + split_fixed_density.json
        + manifest.csv
    OUT/contact_sheet.png   what was built, for a person to look at
    OUT/build.json          arguments, counts, seconds taken, versions

Real images are procedural phantoms (medfakedet.data.phantoms) or, with ``real_dir``, real
scans from ``real_dir/<organ>/``; fakes come from medfakedet.data.fakes. Every MedFake image,
real or fake, goes through :func:`~medfakedet.data.build_common.finalize_gray` and the one
encode path, :func:`~medfakedet.data.build_common.write_image`: with ``encode="random"`` (the
default) each file is resampled 0.5-2x and written as JPEG (quality 50-100) or 8/16-bit PNG, by
one seeded rule for both classes, so size, format, bit depth and JPEG quality cannot reveal the
label (``manifest.csv``'s ``encode`` column records each draw). MedFakeInpaint images get the
same format draw at their build size (the maps stay aligned). The MedFake part lives in
:mod:`.build_medfake`, the MedFakeInpaint part in :mod:`.build_inpaint`, what they share in
:mod:`.build_common`; this module runs them in order and writes the manifests, the split and
``build.json``.

Determinism: every item draws from ``np.random.SeedSequence([seed, stream, ...])`` keyed by what
it is, never by when it runs, and torch runs single-threaded in the fake jobs, so the files are
byte-identical for a seed whatever the worker count (``build.json`` alone records timings).
"""

from __future__ import annotations

import json
import math
import os
import platform
import shutil
import sys
import time
import warnings
from collections import Counter
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from medfakedet.labels import ORGANS

from .build_common import ENCODE_MODES, JobRunner, write_manifest
from .build_inpaint import (
    DEFAULT_INPAINT_KINDS,
    INPAINT_CHUNK,
    INPAINT_MANIFEST_COLUMNS,
    VARIANTS,
    inpaint_job,
    inpaint_sources,
)
from .build_medfake import (
    FakeOptions,
    Named,
    load_real_dir,
    submit_fakes,
    write_phantom_reals,
    write_real_dir_reals,
)
from .inpaint import INPAINT_FRACTIONS, SPLIT_FILE, SUBDIRS, group_split_ids
from .manipulations import MANIPULATIONS
from .medfake import MANIFEST_COLUMNS, MANIFEST_NAME

__all__ = [
    "DEFAULT_INPAINT",
    "DEFAULT_INPAINT_KINDS",
    "DEFAULT_PER_CLASS",
    "DEFAULT_SEED",
    "DEFAULT_SIZE",
    "ENCODE_MODES",
    "FakeOptions",
    "build_datasets",
    "real_fake_options",
]

DEFAULT_PER_CLASS = 200
DEFAULT_INPAINT = 2000
DEFAULT_SIZE = 128
#: The real-scan recipe's sides (``make train-real``; training/pipeline.py). MedFake at 256 px:
#: synthesis8 reads 192 px, and reals written at 128 px reached it upsampled, blurrier than any
#: real scan a user sends; built at 256 px (session 22, same seed and model) the real-dev test
#: split's fakes answered fake rose 0.861 -> 0.965 (false "fake" 0.8% -> 0%), and published
#: generators' outputs (fake-val) answered fake 11.2% -> 15.4%; but real scans halved and
#: brought back are answered fake 9.0% (0.8%): sharp now reads as real (docs/reports/
#: real-scans.md, session 22). MedFakeInpaint stays at 128 px, the localizer's side.
REAL_SIZE, REAL_INPAINT_SIZE = 256, 128
#: How the real recipe makes its fakes (sessions 26 and 28). The GAN trains 1500 steps on the CPU
#: (its own cap, 160, keeps phantom builds and tests quick; on CUDA its larger GPU cap stays), and
#: the VAE, diffusion and upsampling fakes get their real's spectrum as the GAN's do. With 160
#: steps the GAN's fakes were blocky, and the three others told themselves apart from the reals by
#: blur and noise alone (cross-validated ROC-AUC 0.99-1.00; after: 0.93-0.95), so softness read
#: as "fake". Two runs each, same seed and preset (docs/reports/real-scans.md, sessions 26-28):
#: real-val (real scans of other sources) against fake-val (published generators' outputs),
#: ROC-AUC 0.845 and 0.826 against 0.767 and 0.768 for the old fakes (chest X-rays 0.61-0.62
#: against 0.42-0.53); real scans halved and brought back answered fake 0.8-1.6% against
#: 3.3-6.6%. Fewer published fakes are answered fake (4.9-9.1% against 10.5-14.7%): they move to
#: uncertain, not to real (on one thread, as make train-real trains: 53.8% answered real against
#: 54.5%), and the served rates of one run move with its grey zone's luck (session 27).
REAL_GAN_CPU_STEPS = 1500
REAL_DETAIL_MATCH = ("vae", "diffusion_resynth", "upsample")
DEFAULT_SEED = 42
MEDFAKE_DIR, INPAINT_DIR = "medfake", "medfakeinpaint"
CONTACT_SHEET, BUILD_INFO = "contact_sheet.png", "build.json"


def real_fake_options() -> FakeOptions:
    """The real recipe's :class:`FakeOptions` on this machine (see :data:`REAL_GAN_CPU_STEPS`)."""
    from medfakedet.runtime import select_device

    cuda = select_device("auto").type == "cuda"
    steps = None if cuda else REAL_GAN_CPU_STEPS
    return FakeOptions(gan_steps=steps, detail_match=REAL_DETAIL_MATCH)


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


def _checked_options(
    per_class: int,
    inpaint: int,
    size: int,
    inpaint_kinds: Iterable[str],
    inpaint_fractions: tuple[float, float, float],
    encode: str = "random",
    inpaint_size: int | None = None,
) -> tuple[tuple[str, ...], tuple[float, ...]]:
    """Refuse bad options before anything is written; returns (kinds, fractions) normalised."""
    if encode not in ENCODE_MODES:
        raise ValueError(f"encode must be one of {', '.join(ENCODE_MODES)}; got {encode!r}")
    sides = (size, size if inpaint_size is None else inpaint_size)
    if per_class < 1 or inpaint < 0 or not all(32 <= s <= 4096 for s in sides):
        raise ValueError(
            f"need per_class >= 1, inpaint >= 0 and 32 <= size <= 4096; got {per_class}, "
            f"{inpaint}, {size}" + ("" if sides[0] == sides[1] else f" (inpaint {sides[1]})")
        )
    kinds = tuple(dict.fromkeys(inpaint_kinds))
    unknown = sorted(set(kinds) - set(MANIPULATIONS))
    if not kinds or unknown:
        raise ValueError(
            f"inpaint_kinds must name some of {', '.join(MANIPULATIONS)}; got {list(kinds)}"
        )
    fractions = tuple(float(f) for f in inpaint_fractions)
    if len(fractions) != 3 or min(fractions) <= 0 or abs(sum(fractions) - 1.0) > 1e-6:
        raise ValueError(
            f"inpaint_fractions must be three positive shares summing to 1; got {inpaint_fractions}"
        )
    return kinds, fractions


def _checked_fake_options(options: FakeOptions) -> FakeOptions:
    """Refuse an unknown approach, a negative share or step count, or a missing device."""
    from medfakedet.runtime import select_device

    from .fakes import DEFAULT_MIX, SYNTHESIZERS, check_detail_match

    mix = options.mix or DEFAULT_MIX
    if not mix or set(mix) - set(SYNTHESIZERS) or min(mix.values()) < 0 or sum(mix.values()) <= 0:
        raise ValueError(
            f"fake mix must give approaches of {', '.join(SYNTHESIZERS)} shares >= 0 with a "
            f"positive sum; got {mix}"
        )
    if options.gan_steps is not None and options.gan_steps < 0:
        raise ValueError(f"gan_steps must be >= 0 (None: the default); got {options.gan_steps}")
    check_detail_match(options.detail_match)
    select_device(options.gan_device)  # raises for cuda without CUDA
    return options


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


def _counts(
    medfake_rows: list[dict], inpaint_rows: list[dict], split: dict[str, list[str]]
) -> dict[str, Any]:
    """The ``counts`` block of ``build.json``."""
    classes = Counter(f"{r['organ']}_{r['label']}" for r in medfake_rows)
    fakes = Counter(r["approach"] for r in medfake_rows if r["label"] == "fake")
    kinds = Counter(k for r in inpaint_rows for k in r["kind"].split("+") if k)
    return {
        "medfake": dict(sorted(classes.items())),
        "medfake_approaches": dict(sorted(fakes.items())),
        "inpaint_images": len(inpaint_rows),
        "inpaint_manipulated": sum(1 for r in inpaint_rows if r["n_regions"] > 0),
        "inpaint_regions": sum(r["n_regions"] for r in inpaint_rows),
        "inpaint_kinds": dict(sorted(kinds.items())),
        "inpaint_split": {k: len(v) for k, v in split.items()},
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
    encode: str = "random",
    fake_options: FakeOptions | None = None,
    inpaint_size: int | None = None,
) -> dict[str, Any]:
    """Build MedFake and MedFakeInpaint under ``out`` (see the module docstring).

    Args:
        out: output folder; a previous build there is replaced.
        real_dir: folder with ``brain/ chest/ kidney/ lung/`` real scans (any image format);
            None for procedural phantoms.
        per_class: images per MedFake class (fewer when ``real_dir`` has fewer).
        inpaint: MedFakeInpaint images (5 variants per source slice).
        size: side of every MedFake image in pixels (before the random encode's resampling).
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
        encode: "random" (default): every image gets a seeded random encode (see the module
            docstring); "none": 8-bit PNG at ``size``, as before.
        fake_options: the MedFake fake approaches' mix and the GAN's steps and device (see
            :class:`FakeOptions`); default: ``fakes.DEFAULT_MIX``, the GAN's step cap, CUDA when
            present.
        inpaint_size: side of the MedFakeInpaint images; default ``size``. The brain slices
            manipulated are the same files at any side.

    Returns:
        The summary also written to ``build.json``.
    """
    t0 = time.perf_counter()
    load_at_start = _load_average()
    inpaint_size = size if inpaint_size is None else inpaint_size
    inpaint_kinds, fractions = _checked_options(
        per_class, inpaint, size, inpaint_kinds, inpaint_fractions, encode, inpaint_size
    )
    fake_options = _checked_fake_options(fake_options or FakeOptions())
    out = Path(out)
    workers = min(2, os.cpu_count() or 1) if workers is None else max(1, int(workers))
    _prepare_out(out)
    mf_root, ip_root = out / MEDFAKE_DIR, out / INPAINT_DIR
    n_sources = math.ceil(inpaint / len(VARIANTS))
    skipped: list[str] = []
    real_sets: dict[str, list[Named]] = {}
    brain_sources: list[Named] = []
    if real_dir is not None:
        real_dir = Path(real_dir)
        real_sets, brain_sources, skipped = load_real_dir(
            real_dir, per_class, n_sources, size, seed, inpaint_size
        )
        n_sources = min(n_sources, len(brain_sources))
        inpaint = min(inpaint, n_sources * len(VARIANTS))
    n_medfake = sum(2 * len(v) for v in real_sets.values()) if real_sets else 8 * per_class
    bar = tqdm(
        total=n_medfake + inpaint, desc="build", unit="img", disable=not progress, file=sys.stderr
    )
    runner = JobRunner(workers, bar)
    try:
        # 1. Reals (phantoms in parallel chunks, or the real-dir images written here).
        if real_dir is None:
            reals = write_phantom_reals(runner, mf_root, per_class, seed, size, encode)
        else:
            reals = write_real_dir_reals(runner, mf_root, real_sets, seed, size, encode)
        # 2. Fakes (longest jobs first) and inpainting chunks.
        fake_futures = submit_fakes(
            runner, mf_root, reals, seed, size, fake_time_budget_s, encode, fake_options
        )
        sources = inpaint_sources(n_sources, brain_sources)
        inpaint_futures = [
            runner.submit(
                inpaint_job,
                str(ip_root),
                sources[a : a + INPAINT_CHUNK],
                inpaint,
                seed,
                inpaint_size,
                inpaint_kinds,
                encode,
            )
            for a in range(0, n_sources, INPAINT_CHUNK)
        ]
        medfake_rows = reals.rows + [
            row for rows in runner.collect(fake_futures, len) for row in rows
        ]
        inpaint_rows = [row for rows in runner.collect(inpaint_futures, len) for row in rows]
    finally:
        runner.close()
        bar.close()

    columns = (*MANIFEST_COLUMNS, "source", "encode")
    write_manifest(mf_root / MANIFEST_NAME, columns, medfake_rows, "path")
    write_manifest(ip_root / MANIFEST_NAME, INPAINT_MANIFEST_COLUMNS, inpaint_rows, "id")
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
            "inpaint_size": inpaint_size,
            "seed": seed,
            "workers": workers,
            "fake_time_budget_s": fake_time_budget_s,
            "inpaint_kinds": list(inpaint_kinds),
            "inpaint_fractions": list(fractions),
            "encode": encode,
            "fake_mix": fake_options.mix,
            "gan_steps": fake_options.gan_steps,
            "gan_device": fake_options.gan_device,
            "detail_match": list(fake_options.detail_match),
        },
        "counts": _counts(medfake_rows, inpaint_rows, split),
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
