"""The MedFake layout (synthesis detection): ``ROOT/<organ>/<real|fake>/*.png|jpg|...``.

Reader, the paper's split (70/15/15 stratified by class, seed 42) and a group-aware split that
keeps every image derived from one source (a real scan and the fakes made from it) in one split.
``manifest.csv`` (written by the builder, optional for other datasets) gives each file its
source group and synthesis approach.
"""

from __future__ import annotations

import abc
import csv
from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from medfakedet.degrade import Degradation
from medfakedet.imaging import load_image_file
from medfakedet.labels import CLASS_NAMES, ORGANS, class_index
from medfakedet.preprocess import (
    CLASSIFIER_PREPROCESS,
    PreprocessConfig,
    eval_transform,
    resize_tensor,
    to_tensor,
    train_transform,
)

IMAGE_EXTENSIONS: frozenset[str] = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff"})
MANIFEST_NAME = "manifest.csv"
#: Offset of the real-only degradation's seed from the dataset's (its own random stream).
REAL_DEGRADATION_SEED = 7_919
MANIFEST_COLUMNS: tuple[str, ...] = ("path", "organ", "label", "approach", "group", "seed")
SPLITS: tuple[str, ...] = ("train", "val", "test")
PAPER_FRACTIONS: tuple[float, float, float] = (0.7, 0.15, 0.15)


@dataclass(frozen=True)
class Sample:
    """One MedFake image.

    Attributes:
        path: the image file.
        label: class index in CLASS_NAMES order (labels.class_index).
        organ: one of ORGANS.
        is_fake: True for the ``fake`` folder.
        group: source group; images of one group always share a split in ``mode="group"``.
        approach: synthesis approach of a fake from the manifest ("" when unknown or real).
    """

    path: Path
    label: int
    organ: str
    is_fake: bool
    group: str
    approach: str = ""


def is_image_file(path: Path) -> bool:
    """True for a regular file with one of IMAGE_EXTENSIONS (any case)."""
    return path.suffix.lower() in IMAGE_EXTENSIONS and path.is_file()


def read_manifest(root: Path, key: str = "path") -> dict[str, dict[str, str]]:
    """Rows of ``root/manifest.csv`` keyed by their ``key`` column (MedFake: the relative
    ``path``; MedFakeInpaint: the image ``id``); empty when absent."""
    path = Path(root) / MANIFEST_NAME
    if not path.is_file():
        return {}
    with path.open(newline="", encoding="utf-8") as f:
        return {row[key]: row for row in csv.DictReader(f) if row.get(key)}


def scan_medfake(root: str | Path) -> list[Sample]:
    """All images of a MedFake folder, in class order, then by file name.

    Reads ``root/<organ>/<real|fake>/*`` for the four organs (files directly in those folders,
    extensions png/jpg/jpeg/bmp/tif/tiff in any case). The group of an image comes from
    ``manifest.csv`` when it lists the file, else it is ``<organ>/<file stem>``.

    Raises:
        FileNotFoundError: ``root`` has no image in that layout.
    """
    root = Path(root)
    manifest = read_manifest(root)
    samples: list[Sample] = []
    for organ in ORGANS:
        for is_fake in (False, True):
            folder = root / organ / ("fake" if is_fake else "real")
            if not folder.is_dir():
                continue
            for path in sorted(p for p in folder.iterdir() if is_image_file(p)):
                rel = path.relative_to(root).as_posix()
                row = manifest.get(rel, {})
                samples.append(
                    Sample(
                        path=path,
                        label=class_index(organ, is_fake),
                        organ=organ,
                        is_fake=is_fake,
                        group=row.get("group") or f"{organ}/{path.stem}",
                        approach=row.get("approach", ""),
                    )
                )
    if not samples:
        raise FileNotFoundError(
            f"no MedFake images under {root}; expected ROOT/<organ>/<real|fake>/*.png|jpg|jpeg "
            f"with organ in {', '.join(ORGANS)}"
        )
    return samples


def _check_fractions(fractions: Sequence[float]) -> tuple[float, float, float]:
    if len(fractions) != 3 or any(f < 0 for f in fractions) or abs(sum(fractions) - 1) > 1e-6:
        raise ValueError(
            f"fractions must be three numbers >= 0 (train, val, test) summing to 1; got {fractions}"
        )
    return tuple(float(f) for f in fractions)  # type: ignore[return-value]


def _cut(n: int, fractions: tuple[float, float, float]) -> tuple[int, int]:
    n_train = round(n * fractions[0])
    n_val = round(n * fractions[1])
    return n_train, min(n, n_train + n_val)


def assign_groups(
    group_sizes: dict[str, int],
    strata: dict[str, str],
    seed: int,
    fractions: tuple[float, float, float],
) -> dict[str, str]:
    """Assign whole groups to splits so that each stratum's image counts follow ``fractions``.

    Within a stratum, groups are taken in a seeded random order and each goes to the split that
    is furthest below its target share; so no group is ever split. A split with a share that
    would stay empty (tiny strata) takes one group from train.

    Returns:
        group -> "train" | "val" | "test".
    """
    rng = np.random.default_rng(seed)
    by_stratum: dict[str, list[str]] = defaultdict(list)
    for group in sorted(group_sizes):
        by_stratum[strata[group]].append(group)
    assignment: dict[str, str] = {}
    for stratum in sorted(by_stratum):
        groups = by_stratum[stratum]
        counts = dict.fromkeys(SPLITS, 0)
        train: list[str] = []
        for i in rng.permutation(len(groups)):
            group = groups[i]
            total = sum(counts.values()) + group_sizes[group]
            # Deficit of each split after adding this group; ties go to train, val, test.
            deficit = [fractions[k] * total - counts[s] for k, s in enumerate(SPLITS)]
            split = SPLITS[int(np.argmax(deficit))]
            counts[split] += group_sizes[group]
            assignment[group] = split
            if split == "train":
                train.append(group)
        # Small strata: a split with a share must not stay empty while train can spare a group.
        for k, split in enumerate(SPLITS[1:], start=1):
            if fractions[k] > 0 and counts[split] == 0 and len(train) >= 2:
                group = train.pop()
                assignment[group] = split
                counts[split] += group_sizes[group]
    return assignment


def split_medfake(
    samples: Sequence[Sample],
    mode: str = "paper",
    seed: int = 42,
    fractions: Sequence[float] = PAPER_FRACTIONS,
) -> dict[str, list[Sample]]:
    """Split samples into train / val / test.

    Args:
        samples: from :func:`scan_medfake`.
        mode: "paper": per class, a seeded shuffle cut at 70/15/15 (the paper's stratified
            random split; variants of one source may land in different splits). "group":
            whole source groups go to one split, stratified by the classes a group holds.
        seed: shuffle seed (42 in the paper).
        fractions: (train, val, test).

    Returns:
        {"train": [...], "val": [...], "test": [...]}, each in the input order.
    """
    fr = _check_fractions(fractions)
    split_of: dict[int, str] = {}
    if mode == "paper":
        rng = np.random.default_rng(seed)
        by_class: dict[int, list[int]] = defaultdict(list)
        for i, s in enumerate(samples):
            by_class[s.label].append(i)
        for label in sorted(by_class):
            idx = sorted(by_class[label], key=lambda i: samples[i].path.as_posix())
            order = [idx[j] for j in rng.permutation(len(idx))]
            n_train, n_trainval = _cut(len(order), fr)
            for rank, i in enumerate(order):
                split_of[i] = "train" if rank < n_train else "val" if rank < n_trainval else "test"
    elif mode == "group":
        sizes = Counter(s.group for s in samples)
        classes: dict[str, set[int]] = defaultdict(set)
        for s in samples:
            classes[s.group].add(s.label)
        # Stratum = the classes a group holds (a lone real, a lone fake, a real + its fakes).
        strata = {g: "+".join(CLASS_NAMES[c] for c in sorted(v)) for g, v in classes.items()}
        assignment = assign_groups(dict(sizes), strata, seed, fr)
        split_of = {i: assignment[s.group] for i, s in enumerate(samples)}
    else:
        raise ValueError(f"unknown split mode {mode!r}; expected 'paper' or 'group'")
    out: dict[str, list[Sample]] = {s: [] for s in SPLITS}
    for i, s in enumerate(samples):
        out[split_of[i]].append(s)
    return out


class PixelCache:
    """Decodes image files, optionally keeping them in memory (uint8 when that is lossless)."""

    def __init__(self, enabled: bool = True) -> None:
        self.enabled = enabled
        self._store: dict[Path, np.ndarray] = {}

    def pixels(self, path: Path) -> np.ndarray:
        """float32 HxWxC in [0, 1], exactly as medfakedet.imaging decodes the file."""
        stored = self._store.get(path)
        if stored is not None:
            return (
                stored.astype(np.float32) / np.float32(255.0)
                if stored.dtype == np.uint8
                else stored
            )
        pixels = load_image_file(path).pixels
        if self.enabled:
            q = np.rint(pixels * 255.0).astype(np.uint8)
            # Keep 8-bit images as uint8 (4x smaller) only when decoding them back is exact.
            exact = np.array_equal(q.astype(np.float32) / np.float32(255.0), pixels)
            self._store[path] = q if exact else pixels
        return pixels


def item_seed(seed: int, epoch: int, index: int) -> int:
    """A 63-bit seed for item ``index`` of ``epoch``: independent of worker scheduling."""
    state = np.random.SeedSequence([seed, epoch, index]).generate_state(2, dtype=np.uint32)
    return int((int(state[0]) << 31) ^ int(state[1]))


class SplitDataset(Dataset, abc.ABC):
    """What both dataset readers share: one split of a folder, decoded files kept in a
    :class:`PixelCache`, and augmentation drawn per (seed, epoch, index).

    Subclasses list their items after calling ``__init__`` and use :meth:`item_generator` for
    their random augmentation.
    """

    def __init__(
        self,
        root: str | Path,
        split: str,
        preprocess: PreprocessConfig,
        augment: bool,
        seed: int,
        cache: bool,
        degradation: Degradation | None = None,
    ) -> None:
        if split not in (*SPLITS, "all"):
            raise ValueError(f"unknown split {split!r}; expected train, val, test or all")
        self.root = Path(root)
        self.split = split
        self.preprocess = preprocess
        self.augment = augment
        #: Random degradations of the images (training only); None or inactive: none.
        self.degradation = degradation if degradation is not None and degradation.active else None
        self.seed = seed
        self.epoch = 0
        self.pixel_cache = PixelCache(cache)

    def set_epoch(self, epoch: int) -> None:
        """Select the augmentation draw of ``epoch`` (no effect without augment)."""
        self.epoch = int(epoch)

    def item_generator(self, index: int) -> torch.Generator:
        """The augmentation generator of item ``index`` in the current epoch."""
        return torch.Generator().manual_seed(item_seed(self.seed, self.epoch, index))

    @abc.abstractmethod
    def image_path(self, index: int) -> Path:
        """The image file of item ``index``."""


class MedFakeDataset(SplitDataset):
    """MedFake images of one split as ``(tensor (C, S, S), class index)``.

    Decodes with medfakedet.imaging and transforms with the core preprocessing
    (``eval_transform``, or ``train_transform`` when ``augment``). Augmentation draws from a
    generator seeded by (seed, epoch, index): call :meth:`set_epoch` each epoch for fresh but
    reproducible augmentations.

    Args:
        root: MedFake folder.
        split: "train", "val", "test" or "all".
        preprocess: the model's PreprocessConfig.
        augment: use the paper's training augmentation (h-flip, rotation 10 deg).
        split_mode: "paper" or "group" (see :func:`split_medfake`).
        seed: split and augmentation seed.
        cache: keep decoded images in memory.
        degradation: random JPEG / blur / resize / noise (:mod:`medfakedet.degrade`), with or
            without ``augment``.
        real_degradation: applied to the REAL images only, at the model size, before
            ``degradation`` and from a generator of its own (issue #10: a real scan that was
            resampled on its way, as uploads often are, is still real; the builder's VAE and
            upsampling fakes are soft, so without it softness alone reads as "fake").
    """

    def __init__(
        self,
        root: str | Path,
        split: str,
        preprocess: PreprocessConfig = CLASSIFIER_PREPROCESS,
        augment: bool = False,
        split_mode: str = "paper",
        seed: int = 42,
        cache: bool = True,
        degradation: Degradation | None = None,
        real_degradation: Degradation | None = None,
    ) -> None:
        super().__init__(root, split, preprocess, augment, seed, cache, degradation)
        active = real_degradation is not None and real_degradation.active
        self.real_degradation = real_degradation if active else None
        all_samples = scan_medfake(self.root)
        self.samples: list[Sample] = (
            all_samples if split == "all" else split_medfake(all_samples, split_mode, seed)[split]
        )
        self.targets: list[int] = [s.label for s in self.samples]
        self._train = (
            train_transform(
                preprocess,
                hflip=augment,
                rotation_deg=10.0 if augment else 0.0,
                degradation=self.degradation,
            )
            if augment or self.degradation is not None or self.real_degradation is not None
            else None
        )

    def __len__(self) -> int:
        return len(self.samples)

    def image_path(self, index: int) -> Path:
        return self.samples[index].path

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        sample = self.samples[index]
        pixels = self.pixel_cache.pixels(sample.path)
        if self.real_degradation is not None and not sample.is_fake:
            pixels = self._degrade_real(pixels, index)
        if self._train is not None:
            x = self._train(pixels, self.item_generator(index))
        else:
            x = eval_transform(pixels, self.preprocess)
        return x, sample.label

    def _degrade_real(self, pixels: np.ndarray, index: int) -> torch.Tensor:
        """:attr:`real_degradation` of a real image at the model size. Its draws come from a
        generator of their own, so the item's other augmentation draws stay as they were."""
        assert self.real_degradation is not None
        t = resize_tensor(to_tensor(pixels), self.preprocess.size)
        seed = item_seed(self.seed + REAL_DEGRADATION_SEED, self.epoch, index)
        return self.real_degradation(t, torch.Generator().manual_seed(seed))

    def class_counts(self) -> dict[str, int]:
        """Images per class name, all eight classes listed."""
        counts = Counter(self.targets)
        return {name: counts.get(i, 0) for i, name in enumerate(CLASS_NAMES)}
