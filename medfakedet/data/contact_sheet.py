"""A contact sheet of a build: per organ a row of reals and a row per fake approach, then
inpainting examples.

Inpainting examples show four tiles each: the image, the image with the mask outline (red),
the density map (heat colours) and the image with the YOLO boxes (green), read back from the
files on disk, so the sheet shows what was written.
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw
from scipy import ndimage

from medfakedet.density import yolo_to_boxes
from medfakedet.imaging import load_image_file, to_uint8
from medfakedet.labels import CLASS_NAMES
from medfakedet.preprocess import to_channels, to_tensor

from .inpaint import index_files
from .medfake import MANIFEST_NAME

_LABEL_W = 118
_KIND_CODES = {"lesion": "L", "removal": "R", "copy_move": "C"}
_PAD = 2


def _read_rows(path: Path) -> list[dict[str, str]]:
    if not path.is_file():
        return []
    with path.open(newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def _load_gray(path: Path) -> Image.Image:
    """Decoded as the models decode it (16-bit PNGs scaled by 65535, not clipped by PIL)."""
    return Image.fromarray(to_uint8(to_channels(to_tensor(load_image_file(path).pixels), 1)[0]))


def _gray(path: Path, tile: int) -> Image.Image:
    return _load_gray(path).resize((tile, tile), Image.Resampling.BILINEAR)


def _heat(values: np.ndarray) -> np.ndarray:
    """uint8 HxW -> uint8 HxWx3 black-red-yellow-white."""
    v = values.astype(np.float32) / 255.0
    rgb = np.stack([np.clip(3 * v, 0, 1), np.clip(3 * v - 1, 0, 1), np.clip(3 * v - 2, 0, 1)], -1)
    return (rgb * 255 + 0.5).astype(np.uint8)


def _spread(rows: list[dict[str, str]], n: int, key: str) -> list[dict[str, str]]:
    """Up to ``n`` rows taking turns over the values of ``key`` (e.g. one per approach)."""
    buckets: dict[str, list[dict[str, str]]] = {}
    for row in rows:
        buckets.setdefault(row.get(key, ""), []).append(row)
    picked: list[dict[str, str]] = []
    while len(picked) < n and any(buckets.values()):
        for k in sorted(buckets):
            if buckets[k] and len(picked) < n:
                picked.append(buckets[k].pop(0))
    return picked


def _by_approach(rows: list[dict[str, str]]) -> list[tuple[str, list[dict[str, str]]]]:
    """``rows`` grouped by approach, in name order."""
    groups: dict[str, list[dict[str, str]]] = {}
    for row in rows:
        groups.setdefault(row.get("approach", ""), []).append(row)
    return sorted(groups.items())


def _inpaint_tiles(root: Path, image_id: str, tile: int) -> list[Image.Image]:
    image = _load_gray(index_files(root, "images")[image_id])
    w, h = image.size
    mask = np.asarray(Image.open(root / "masks" / f"{image_id}.png").convert("L")) > 127
    density = np.asarray(Image.open(root / "density" / f"{image_id}.png").convert("L"))
    base = np.stack([np.asarray(image)] * 3, -1)
    outlined = base.copy()
    outlined[mask & ~ndimage.binary_erosion(mask)] = (255, 40, 40)
    boxed = Image.fromarray(base)
    draw = ImageDraw.Draw(boxed)
    label = root / "labels" / f"{image_id}.txt"
    text = label.read_text(encoding="utf-8") if label.is_file() else ""
    for b in yolo_to_boxes(text, w, h):
        draw.rectangle((b.x1, b.y1, b.x2 - 1, b.y2 - 1), outline=(40, 255, 40))
    tiles = [
        image.convert("RGB"),
        Image.fromarray(outlined),
        Image.fromarray(_heat(density)),
        boxed,
    ]
    return [t.resize((tile, tile), Image.Resampling.NEAREST) for t in tiles]


def make_contact_sheet(
    build_root: str | Path,
    out_path: str | Path,
    per_row: int = 8,
    inpaint_rows: int = 3,
    tile: int = 128,
) -> Path:
    """Write a PNG contact sheet of the build in ``build_root`` to ``out_path``.

    Args:
        build_root: folder holding ``medfake/`` and ``medfakeinpaint/``.
        out_path: PNG to write.
        per_row: tiles per row (MedFake: images per class; inpaint: 4 tiles per example).
        inpaint_rows: rows of inpainting examples (0: none).
        tile: side of a tile in pixels.
    """
    build_root, out_path = Path(build_root), Path(out_path)
    mf_root, ip_root = build_root / "medfake", build_root / "medfakeinpaint"
    rows: list[tuple[str, list[Image.Image]]] = []
    medfake = _read_rows(mf_root / MANIFEST_NAME)
    for name in CLASS_NAMES:
        organ, label = name.rsplit("_", 1)
        members = [r for r in medfake if r["organ"] == organ and r["label"] == label]
        # Reals, then one row per approach, so each approach's fakes sit next to the reals.
        groups = [("", members)] if label == "real" else _by_approach(members)
        for approach, group in groups:
            picked = group[:per_row]
            caption = f"{name}\n{approach}" if approach else name
            tiles = [_gray(mf_root / r["path"], tile).convert("RGB") for r in picked]
            rows.append((caption, tiles))
    inpaint = [r for r in _read_rows(ip_root / MANIFEST_NAME) if r["variant"] != "orig"]
    per_example = 4
    examples = _spread(inpaint, inpaint_rows * (per_row // per_example), "variant")
    for k in range(0, len(examples), per_row // per_example):
        chunk = examples[k : k + per_row // per_example]
        tiles = [t for r in chunk for t in _inpaint_tiles(ip_root, r["id"], tile)]
        caption = "inpaint: image,\nmask, density,\nboxes\n" + "\n".join(
            f"{r['variant']}: " + "".join(_KIND_CODES.get(k, "?") for k in r["kind"].split("+"))
            for r in chunk
        )
        if k == 0:
            caption += "\n" + "\n".join(f"{c} = {name}" for name, c in _KIND_CODES.items())
        rows.append((caption, tiles))
    width = _LABEL_W + per_row * (tile + _PAD)
    sheet = Image.new("RGB", (width, len(rows) * (tile + _PAD)), (24, 24, 24))
    draw = ImageDraw.Draw(sheet)
    for r, (caption, tiles) in enumerate(rows):
        y = r * (tile + _PAD)
        draw.multiline_text((4, y + 4), caption, fill=(230, 230, 230), spacing=2)
        for c, t in enumerate(tiles):
            sheet.paste(t, (_LABEL_W + c * (tile + _PAD), y))
    out_path.parent.mkdir(parents=True, exist_ok=True)
    sheet.save(out_path, format="PNG")
    return out_path
