"""The MedFakeInpaint layout (manipulation localisation on brain MRI).

::

    ROOT/images/ID.png     gray slice
    ROOT/density/ID.png    8-bit density map: a Gaussian blob over each manipulated region
    ROOT/masks/ID.png      binary mask (> 127 = manipulated)
    ROOT/labels/ID.txt     YOLO lines "cls xc yc w h" (normalised); empty when untouched
    ROOT/split_fixed_density.json   {"val": [ids], "test": [ids]}; the rest is train

IDs are ``<source>_<k>_<variant>``: ``<source>_<k>`` names one source slice and the variant is
``orig`` (untouched) or ``m<digits>`` (a manipulated version of that same slice). Every variant
of a slice shares its group, :func:`group_of`; ``mode="group"`` splits keep groups whole (the
paper's random split did not, so near-identical variants leak between train and test).
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from medfakedet.degrade import PLAIN_PNG, Degradation, EncodeSpec, encode_image
from medfakedet.density import (
    Box,
    boxes_to_yolo,
    density_from_uint8,
    density_to_png_uint8,
    mask_to_boxes,
    mask_to_density,
    scale_boxes,
    yolo_to_boxes,
)
from medfakedet.imaging import encode_png
from medfakedet.preprocess import (
    LOCALIZER_PREPROCESS,
    PreprocessConfig,
    eval_transform,
    resize_tensor,
    to_tensor,
    train_transform,
)

from .medfake import SPLITS, SplitDataset, assign_groups, is_image_file, read_manifest

SPLIT_FILE = "split_fixed_density.json"
SUBDIRS: tuple[str, ...] = ("images", "density", "masks", "labels")
#: Paper proportions: 9,090 / 1,069 / 534 of 10,693 images.
INPAINT_FRACTIONS: tuple[float, float, float] = (0.85, 0.10, 0.05)
#: Shares for a build around a folder of real scans (``make train-real``): a few hundred real
#: brain slices, one untouched image each, and a false-alarm rate on untouched slices means
#: something only from about 50 of them (397 real-dev brains: 60 untouched in val and in test,
#: against 20 at the paper's 5%).
REAL_INPAINT_FRACTIONS: tuple[float, float, float] = (0.70, 0.15, 0.15)
#: Density blob width (pixels) at 128 px; scaled with the image size.
DENSITY_SIGMA_128 = 2.0

_VARIANT = re.compile(r"^(?P<group>.+)_(?P<variant>orig|m\d+)$")


def read_manipulation_kinds(root: str | Path) -> dict[str, str]:
    """``{image ID: "lesion+removal"...}`` from the builder's ``manifest.csv`` ("" = untouched).

    Empty when the folder has no manifest (the paper's dataset has none).
    """
    return {i: row.get("kind") or "" for i, row in read_manifest(Path(root), "id").items()}


def group_of(image_id: str) -> str:
    """Source slice of an image ID: ``"a_3_m2"`` -> ``"a_3"``; an ID without variant is its own."""
    m = _VARIANT.match(image_id)
    return m.group("group") if m else image_id


def variant_of(image_id: str) -> str:
    """Variant suffix of an ID (``"orig"``, ``"m1"``, ...), "" when it has none."""
    m = _VARIANT.match(image_id)
    return m.group("variant") if m else ""


def is_inpaint_root(root: str | Path) -> bool:
    """True when ``root`` looks like a MedFakeInpaint folder (has ``images/``)."""
    return (Path(root) / "images").is_dir()


def index_files(root: Path, subdir: str) -> dict[str, Path]:
    """ID -> file in ``root/subdir`` (images of any accepted extension, or ``.txt`` labels)."""
    folder = root / subdir
    if not folder.is_dir():
        return {}
    if subdir == "labels":
        return {p.stem: p for p in sorted(folder.glob("*.txt"))}
    return {p.stem: p for p in sorted(folder.iterdir()) if is_image_file(p)}


def list_ids(root: str | Path) -> list[str]:
    """Sorted IDs of ``root/images``.

    Raises:
        FileNotFoundError: no images there.
    """
    ids = sorted(index_files(Path(root), "images"))
    if not ids:
        raise FileNotFoundError(
            f"no images in {Path(root) / 'images'}; expected the MedFakeInpaint layout "
            "images/ density/ masks/ labels/ + split_fixed_density.json"
        )
    return ids


def group_split_ids(
    ids: list[str], seed: int = 42, fractions: tuple[float, float, float] = INPAINT_FRACTIONS
) -> dict[str, list[str]]:
    """Seeded split of IDs by source group (every variant of a slice in one split)."""
    sizes: dict[str, int] = {}
    for image_id in ids:
        g = group_of(image_id)
        sizes[g] = sizes.get(g, 0) + 1
    assignment = assign_groups(sizes, dict.fromkeys(sizes, "brain"), seed, fractions)
    out: dict[str, list[str]] = {s: [] for s in SPLITS}
    for image_id in ids:
        out[assignment[group_of(image_id)]].append(image_id)
    return out


def read_split_file(root: str | Path) -> dict[str, list[str]]:
    """``{"val": [...], "test": [...]}`` from the split json.

    Raises:
        FileNotFoundError / ValueError: the file is missing or malformed.
    """
    path = Path(root) / SPLIT_FILE
    if not path.is_file():
        raise FileNotFoundError(
            f"{path} not found; MedFakeInpaint needs it for split_mode='json' "
            "(or use split_mode='group')"
        )
    data = json.loads(path.read_text(encoding="utf-8"))
    if not isinstance(data, dict) or not all(
        isinstance(data.get(k), list) and all(isinstance(i, str) for i in data[k])
        for k in ("val", "test")
    ):
        raise ValueError(f"{path}: expected {{'val': [ids], 'test': [ids]}} with string ids")
    return {"val": list(data["val"]), "test": list(data["test"])}


def load_split(root: str | Path, mode: str = "json", seed: int = 42) -> dict[str, list[str]]:
    """Train / val / test IDs of a MedFakeInpaint folder.

    Args:
        root: the folder.
        mode: "json": val and test from ``split_fixed_density.json`` (IDs without an image are
            skipped; :mod:`medfakedet.data.check` reports them), the rest train. "group": a
            seeded split by source group with the paper's proportions (85/10/5).
        seed: seed of the group split.
    """
    ids = list_ids(root)
    if mode == "group":
        return group_split_ids(ids, seed)
    if mode != "json":
        raise ValueError(f"unknown split mode {mode!r}; expected 'json' or 'group'")
    fixed = read_split_file(root)
    present = set(ids)
    val = [i for i in fixed["val"] if i in present]
    test = [i for i in fixed["test"] if i in present and i not in set(val)]
    held_out = set(val) | set(test)
    return {"train": [i for i in ids if i not in held_out], "val": val, "test": test}


def write_record(
    root: Path,
    image_id: str,
    image: np.ndarray,
    mask: np.ndarray,
    sigma: float | None = None,
    encode: EncodeSpec = PLAIN_PNG,
) -> int:
    """Write one image with its mask, density map and YOLO labels; returns the region count.

    The image (gray uint8) is written as ``encode`` says (:func:`medfakedet.degrade.encode_image`:
    JPEG or 8/16-bit PNG); the maps stay 8-bit PNG. ``encode`` must keep the geometry (scale 1),
    so masks, density maps and labels stay pixel-aligned with the image.
    """
    if encode.scale != 1.0:
        raise ValueError(f"MedFakeInpaint images keep their geometry; got scale {encode.scale}")
    h, w = image.shape
    sigma = DENSITY_SIGMA_128 * min(h, w) / 128.0 if sigma is None else sigma
    boxes = mask_to_boxes(mask)
    lines = boxes_to_yolo(boxes, w, h)
    data = encode_png(image) if encode == PLAIN_PNG else encode_image(image, encode)
    (root / "images" / f"{image_id}{encode.suffix}").write_bytes(data)
    (root / "masks" / f"{image_id}.png").write_bytes(encode_png(mask.astype(bool)))
    density = density_to_png_uint8(mask_to_density(mask, sigma=sigma))
    (root / "density" / f"{image_id}.png").write_bytes(encode_png(density))
    (root / "labels" / f"{image_id}.txt").write_text(
        "".join(line + "\n" for line in lines), encoding="utf-8"
    )
    return len(boxes)


class MedFakeInpaintDataset(SplitDataset):
    """MedFakeInpaint items as dicts of tensors for the density localiser.

    ``__getitem__(i)`` returns ``{"image": (1, S, S) float (core preprocessing), "density":
    (1, S, S) float in [0, 1], "mask": (1, S, S) float 0/1, "id": str}``; S is the
    preprocessing size. With ``augment``, random horizontal and vertical flips are applied to
    the three maps jointly (paper), drawn from a generator seeded by (seed, epoch, index).
    A missing density map is computed from the mask.

    Args:
        root: MedFakeInpaint folder.
        split: "train", "val", "test" or "all".
        preprocess: the model's PreprocessConfig (1 channel).
        augment: joint random flips.
        split_mode: "json" (the folder's split file) or "group".
        seed: group-split and augmentation seed.
        cache: keep decoded files in memory.
        degradation: random JPEG / blur / resize / noise of the image alone (the maps keep
            their geometry: none of these ops moves a pixel).
    """

    def __init__(
        self,
        root: str | Path,
        split: str,
        preprocess: PreprocessConfig = LOCALIZER_PREPROCESS,
        augment: bool = False,
        split_mode: str = "json",
        seed: int = 42,
        cache: bool = True,
        degradation: Degradation | None = None,
    ) -> None:
        super().__init__(root, split, preprocess, augment, seed, cache, degradation)
        self._degrade = (
            train_transform(preprocess, hflip=False, rotation_deg=0.0, degradation=degradation)
            if self.degradation is not None
            else None
        )
        self.ids: list[str] = (
            list_ids(self.root)
            if split == "all"
            else load_split(self.root, split_mode, seed)[split]
        )
        self._files = {sub: index_files(self.root, sub) for sub in SUBDIRS}

    def __len__(self) -> int:
        return len(self.ids)

    def _path(self, subdir: str, image_id: str) -> Path | None:
        return self._files[subdir].get(image_id)

    def _file(self, subdir: str, image_id: str) -> Path:
        path = self._path(subdir, image_id)
        if path is None:
            raise FileNotFoundError(f"{self.root / subdir} has no file for ID {image_id!r}")
        return path

    def image_path(self, index: int) -> Path:
        return self._file("images", self.ids[index])

    def _gray(self, subdir: str, image_id: str) -> np.ndarray:
        pixels = self.pixel_cache.pixels(self._file(subdir, image_id))
        # Maps are stored gray; an RGB map keeps its first channel.
        return pixels[:, :, 0]

    def original_size(self, index: int) -> tuple[int, int]:
        """(width, height) of the image file."""
        pixels = self._gray("images", self.ids[index])
        return int(pixels.shape[1]), int(pixels.shape[0])

    def _mask(self, image_id: str) -> np.ndarray:
        return self._gray("masks", image_id) > 0.5  # > 127 of 255

    def is_manipulated(self, index: int) -> bool:
        """True when the mask marks any pixel."""
        return bool(self._mask(self.ids[index]).any())

    def gt_boxes(self, index: int, size: int | tuple[int, int] | None = None) -> list[Box]:
        """Ground-truth boxes from the YOLO labels, in a ``size`` image (default: model size).

        ``size`` is an int (square) or (width, height). Without a label file the boxes come
        from the mask.
        """
        size = self.preprocess.size if size is None else size
        w, h = (size, size) if isinstance(size, int) else size
        image_id = self.ids[index]
        path = self._path("labels", image_id)
        if path is not None:
            return yolo_to_boxes(path.read_text(encoding="utf-8"), w, h)
        mask = self._mask(image_id)
        return scale_boxes(mask_to_boxes(mask), (mask.shape[1], mask.shape[0]), (w, h))

    def __getitem__(self, index: int) -> dict[str, torch.Tensor | str]:
        image_id = self.ids[index]
        size = self.preprocess.size
        pixels = self.pixel_cache.pixels(self._file("images", image_id))
        if self._degrade is not None:
            # Its own stream: the flips below draw the same numbers with or without it.
            image = self._degrade(pixels, self.item_generator(len(self) + index))
        else:
            image = eval_transform(pixels, self.preprocess)
        mask_hw = self._mask(image_id)
        if self._path("density", image_id) is not None:
            density_hw = self._gray("density", image_id)
        else:
            sigma = DENSITY_SIGMA_128 * min(mask_hw.shape) / 128.0
            density_hw = density_from_uint8(density_to_png_uint8(mask_to_density(mask_hw, sigma)))
        density = resize_tensor(to_tensor(density_hw), size)
        mask = to_tensor(mask_hw.astype(np.float32))
        if mask.shape[-2:] != (size, size):
            mask = F.interpolate(mask[None], size=(size, size), mode="nearest")[0]
        if self.augment:
            flips = torch.rand(2, generator=self.item_generator(index)) < 0.5
            dims = [d for d, f in zip((-1, -2), flips.tolist(), strict=True) if f]
            if dims:
                image, density, mask = (t.flip(dims) for t in (image, density, mask))
        return {"image": image, "density": density, "mask": mask, "id": image_id}
