"""The MedFake part of the builder: reals (phantoms or a real-scan folder) and their fakes.

Writes ``OUT/medfake/<organ>/<real|fake>/<name>.png|jpg`` and returns the manifest rows. A fake
shares the group of the real it was made from, so the group-aware split keeps both together.
Every image, real or fake, is written by :func:`.build_common.write_image` with an encode drawn
by one rule from its own seed (:func:`.build_common.encode_spec`), recorded in ``encode``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from medfakedet.degrade import EncodeSpec
from medfakedet.imaging import ImageDecodeError, load_image_file
from medfakedet.labels import ORGANS

from .build_common import (
    FAKE_STREAM,
    REAL_STREAM,
    JobRunner,
    encode_spec,
    finalize_gray,
    seeded_rng,
    write_image,
)
from .medfake import is_image_file

#: Phantom reals per job.
REAL_CHUNK = 50

#: A named image: (relative path or name, uint8 gray image).
Named = tuple[str, np.ndarray]


@dataclass(frozen=True)
class FakeOptions:
    """How the fakes are made: the approach mix and the GAN's training."""

    #: ``{approach: share}``; None: :data:`medfakedet.data.fakes.DEFAULT_MIX`.
    mix: dict[str, float] | None = None
    #: GAN training steps; None: its default (more on CUDA than on the CPU).
    gan_steps: int | None = None
    #: "auto" (CUDA when present, else the CPU), "cpu" or "cuda[:N]".
    gan_device: str = "auto"
    #: Approaches whose fakes get their real's spectrum (``fakes.detail_matched``).
    detail_match: tuple[str, ...] = ()


def medfake_spec(encode: str, seed: int, organ: str, is_fake: bool, i: int) -> EncodeSpec:
    """The encode of image ``i`` of ``organ``'s real or fake folder (one rule for both)."""
    return encode_spec(encode, (seed, 0, ORGANS.index(organ), int(is_fake), i))


def medfake_row(
    organ: str,
    is_fake: bool,
    name: str,
    approach: str,
    group: str,
    seed: int,
    spec: EncodeSpec,
) -> dict[str, Any]:
    """The manifest row of ``<organ>/<real|fake>/<name><suffix>`` (``source`` filled by
    callers)."""
    src = "fake" if is_fake else "real"
    return {
        "path": f"{organ}/{src}/{name}{spec.suffix}",
        "organ": organ,
        "label": src,
        "approach": approach,
        "group": group,
        "seed": seed,
        "source": "",
        "encode": spec.tag(),
    }


def real_job(
    out: str, organ: str, start: int, stop: int, seed: int, size: int, encode: str = "random"
) -> tuple[list[dict], list[np.ndarray]]:
    """Write phantom reals ``start..stop-1`` of ``organ``; returns (rows, images)."""
    from .phantoms import generate_slice

    root = Path(out)
    organ_index = ORGANS.index(organ)
    rows, images = [], []
    for i in range(start, stop):
        image = finalize_gray(
            generate_slice(organ, seeded_rng(seed, REAL_STREAM, organ_index, i), size).image, size
        )
        name = f"{organ}_real_{i:05d}"
        spec = medfake_spec(encode, seed, organ, False, i)
        write_image(root / organ / "real", name, image, size, spec)
        rows.append(medfake_row(organ, False, name, "", name, seed, spec))
        images.append(image)
    return rows, images


def fake_job(
    out: str,
    organ: str,
    reals: list[np.ndarray],
    real_groups: list[str],
    n: int,
    seed: int,
    size: int,
    time_budget_s: float | None,
    encode: str = "random",
    fake_options: FakeOptions | None = None,
) -> list[dict]:
    """Train the fake generators of ``organ`` on its reals and write ``n`` fakes."""
    import torch

    from .fakes import DEFAULT_MIX, make_fakes

    opts = fake_options or FakeOptions()

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # same thread count inline and in workers: same bytes
    try:
        # No budget: train to the step caps, so the weights do not depend on machine speed.
        budget = math.inf if time_budget_s is None else time_budget_s
        fakes = make_fakes(
            organ,
            reals,
            n,
            seeded_rng(seed, FAKE_STREAM, ORGANS.index(organ)),
            approaches=opts.mix or DEFAULT_MIX,
            time_budget_s=budget,
            options={"gan": {"max_steps": opts.gan_steps, "device": opts.gan_device}},
            detail_match=opts.detail_match,
        )
    finally:
        torch.set_num_threads(threads)
    root = Path(out)
    rows = []
    for i, (image, approach, source) in enumerate(fakes):
        name = f"{organ}_fake_{i:05d}"
        # A fake shares the group of the real it was made from, so both land in one split.
        group = real_groups[int(source)]
        spec = medfake_spec(encode, seed, organ, True, i)
        write_image(root / organ / "fake", name, image, size, spec)
        rows.append(medfake_row(organ, True, name, approach, group, seed, spec))
    return rows


def _decode_real_files(
    folder: Path, limit: int, seed: int, stream: int
) -> tuple[list[tuple[str, np.ndarray]], list[str]]:
    """Up to ``limit`` decoded images of ``folder`` (any format, any depth) as they are stored.

    Files are taken in a seeded order of their sorted paths; unreadable ones are skipped.

    Returns:
        ([(relative path, pixels)], [unreadable file messages]).
    """
    files = sorted(p for p in folder.rglob("*") if p.is_file() and not p.name.startswith("."))
    order = seeded_rng(seed, stream).permutation(len(files))
    decoded, skipped = [], []
    for k in order:
        if len(decoded) >= limit:
            break
        path = files[k]
        try:
            pixels = load_image_file(path).pixels
        except (ImageDecodeError, OSError) as exc:
            if is_image_file(path):
                skipped.append(f"{path}: {exc}")
            continue
        decoded.append((path.relative_to(folder).as_posix(), pixels))
    return decoded, skipped


def load_real_images(
    folder: Path, size: int, limit: int, seed: int, stream: int
) -> tuple[list[Named], list[str]]:
    """Up to ``limit`` images of ``folder`` (:func:`_decode_real_files`), gray size x size.

    Returns:
        ([(relative path, uint8 image)], [unreadable file messages]).
    """
    decoded, skipped = _decode_real_files(folder, limit, seed, stream)
    return [(name, finalize_gray(pixels, size)) for name, pixels in decoded], skipped


def load_real_dir(
    real_dir: Path,
    per_class: int,
    n_sources: int,
    size: int,
    seed: int,
    inpaint_size: int | None = None,
) -> tuple[dict[str, list[Named]], list[Named], list[str]]:
    """The reals of each organ folder of ``real_dir`` at ``size`` and the brain slices to
    manipulate at ``inpaint_size`` (default ``size``; the same files at either side).

    Returns:
        ({organ: up to per_class images}, up to n_sources brain images, unreadable files).

    Raises:
        FileNotFoundError: an organ folder is missing.
        ValueError: an organ folder holds no readable image.
    """
    missing = [o for o in ORGANS if not (real_dir / o).is_dir()]
    if missing:
        raise FileNotFoundError(
            f"{real_dir} lacks {', '.join(missing)}; --real-dir needs one folder per organ: "
            f"{', '.join(ORGANS)}"
        )
    real_sets: dict[str, list[Named]] = {}
    brain_sources: list[Named] = []
    skipped: list[str] = []
    for organ in ORGANS:
        limit = max(per_class, n_sources) if organ == "brain" else per_class
        decoded, bad = _decode_real_files(
            real_dir / organ, limit, seed, REAL_STREAM * 100 + ORGANS.index(organ)
        )
        if not decoded:
            raise ValueError(f"no readable image in {real_dir / organ}")
        skipped += bad
        real_sets[organ] = [(name, finalize_gray(px, size)) for name, px in decoded[:per_class]]
        if organ == "brain":
            side = size if inpaint_size is None else inpaint_size
            brain_sources = [(name, finalize_gray(px, side)) for name, px in decoded[:n_sources]]
    return real_sets, brain_sources, skipped


class MedFakeReals:
    """The written reals of every organ: manifest rows, images and groups for the fakes."""

    def __init__(self) -> None:
        self.rows: list[dict] = []
        self.images: dict[str, list[np.ndarray]] = {}
        self.groups: dict[str, list[str]] = {}

    def add(self, organ: str, rows: list[dict], images: list[np.ndarray]) -> None:
        self.rows += rows
        self.images.setdefault(organ, []).extend(images)
        self.groups.setdefault(organ, []).extend(row["group"] for row in rows)


def write_phantom_reals(
    runner: JobRunner, mf_root: Path, per_class: int, seed: int, size: int, encode: str
) -> MedFakeReals:
    """Generate and write ``per_class`` phantom reals per organ, in parallel chunks."""
    jobs = {
        organ: [
            runner.submit(
                real_job,
                str(mf_root),
                organ,
                a,
                min(a + REAL_CHUNK, per_class),
                seed,
                size,
                encode,
            )
            for a in range(0, per_class, REAL_CHUNK)
        ]
        for organ in ORGANS
    }
    reals = MedFakeReals()
    for organ, futures in jobs.items():
        for rows, images in runner.collect(futures, lambda r: len(r[0])):
            reals.add(organ, rows, images)
    return reals


def write_real_dir_reals(
    runner: JobRunner,
    mf_root: Path,
    real_sets: dict[str, list[Named]],
    seed: int,
    size: int,
    encode: str,
) -> MedFakeReals:
    """Write the real-dir images as the reals, each row naming its source file."""
    reals = MedFakeReals()
    for organ, images in real_sets.items():
        rows = []
        for i, (rel, image) in enumerate(images):
            name = f"{organ}_real_{i:05d}"
            spec = medfake_spec(encode, seed, organ, False, i)
            write_image(mf_root / organ / "real", name, image, size, spec)
            row = medfake_row(organ, False, name, "real-dir", name, seed, spec)
            rows.append({**row, "source": f"{organ}/{rel}"})
        reals.add(organ, rows, [image for _, image in images])
        runner.bar.update(len(images))
    return reals


def submit_fakes(
    runner: JobRunner,
    mf_root: Path,
    reals: MedFakeReals,
    seed: int,
    size: int,
    time_budget_s: float | None,
    encode: str,
    fake_options: FakeOptions | None = None,
) -> list:
    """Start one fake job per organ (as many fakes as reals); collect with ``runner.collect``."""
    return [
        runner.submit(
            fake_job,
            str(mf_root),
            organ,
            reals.images[organ],
            reals.groups[organ],
            len(reals.images[organ]),
            seed,
            size,
            time_budget_s,
            encode,
            fake_options,
        )
        for organ in ORGANS
    ]
