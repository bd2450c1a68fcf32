"""The fixed image set on which a CPU path is checked against fp32, stored with the artifact.

:func:`medfakedet.fastpath.choose` adopts a faster path (channels_last, bf16) only if it agrees
with fp32 on a fixed input set (issue #12). Seeded noise fields make a poor set: their outputs
sit near decision boundaries that real scans seldom visit (bf16 of the real-scan synthesis8:
97.5 % top-1 agreement on 200 noise fields, 100 % on the 1,029 scans of real-dev). So the set is
real training images: ``check_set.safetensors`` in the artifact folder (tensor ``pixels``,
uint8, (N, C, size, size) at the model's size, not normalised; C = 1 for gray scans), a seeded
sample of the images the model was trained on (real scans and the builder's fakes). The trainer
writes it with the artifact (``training/trainer.py``, :func:`write`); for an artifact made
elsewhere:

    python -m medfakedet.checkset --artifact artifacts-real/synthesis8 --images data/real/medfake

It is packed into the model archive next to the weights. An artifact without it falls back to
:func:`medfakedet.fastpath.check_inputs` (the seeded fields).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from medfakedet.imaging import decode_image
from medfakedet.preprocess import PreprocessConfig, normalize, resize_tensor, to_channels, to_tensor

CHECK_FILE = "check_set.safetensors"
#: Images stored: one top-1 disagreement in 256 is 99.6 %, two fall below the 99.5 % minimum.
#: The whole set is checked at every start (the localizer's: 128 keep its start short).
DEFAULT_COUNT = 256
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")


def sample_files(roots: Sequence[Path], count: int, seed: int = 0) -> list[Path]:
    """A seeded sample of ``count`` image files under ``roots`` (all of them if fewer), in a
    seeded order (the first k of the set are a fair sample too)."""
    files = {f for r in roots for f in Path(r).rglob("*") if f.suffix.lower() in IMAGE_SUFFIXES}
    if not files:
        raise ValueError(f"no {'/'.join(IMAGE_SUFFIXES)} images under {list(map(str, roots))}")
    return sample(files, count, seed)


def sample(files: Iterable[Path], count: int, seed: int = 0) -> list[Path]:
    """A seeded sample of ``count`` of ``files`` (all if fewer), in a seeded order."""
    ordered = sorted(set(files))
    order = np.random.default_rng(seed).permutation(len(ordered))[:count]
    return [ordered[i] for i in order]


def build(files: Sequence[Path], cfg: PreprocessConfig) -> torch.Tensor:
    """(N, C, size, size) uint8 pixels of ``files``, decoded as served, at the model's size."""
    sized = [
        resize_tensor(
            to_channels(to_tensor(decode_image(f.read_bytes()).pixels), cfg.channels), cfg.size
        )  # fmt: skip
        for f in files
    ]
    pixels = (torch.stack(sized) * 255).round().clamp(0, 255).to(torch.uint8)
    if pixels.shape[1] == 3 and bool((pixels == pixels[:, :1]).all()):
        return pixels[:, :1].contiguous()  # gray scans for a 3-channel model: a third the size
    return pixels


def save(artifact_dir: str | Path, pixels: torch.Tensor) -> Path:
    """Write ``pixels`` (uint8, (N, C, H, W)) as the artifact's check set."""
    if pixels.dtype != torch.uint8 or pixels.ndim != 4:
        raise ValueError(f"expected uint8 (N, C, H, W) pixels, got {pixels.dtype} {pixels.shape}")
    path = Path(artifact_dir) / CHECK_FILE
    save_file({"pixels": pixels.contiguous()}, str(path))
    return path


def write(
    artifact_dir: str | Path, files: Iterable[Path], cfg: PreprocessConfig, count: int, seed: int
) -> Path:
    """Sample ``count`` of ``files`` (the training images) and store them as the check set."""
    return save(artifact_dir, build(sample(files, count, seed), cfg))


def load(artifact_dir: str | Path | None, cfg: PreprocessConfig) -> torch.Tensor | None:
    """The stored check set as normalised model inputs, or None when the artifact has none (or
    one of another channel count or size: the model changed since it was written)."""
    path = Path(artifact_dir) / CHECK_FILE if artifact_dir is not None else None
    if path is None or not path.is_file():
        return None
    pixels = load_file(str(path))["pixels"]
    if pixels.shape[1] not in (1, cfg.channels) or tuple(pixels.shape[2:]) != (cfg.size,) * 2:
        return None
    pixels = pixels.expand(-1, cfg.channels, -1, -1)  # stored gray for a 3-channel model
    return normalize(pixels.float() / 255.0, cfg).contiguous()


def main(argv: Sequence[str] | None = None) -> int:
    from medfakedet.artifacts import read_meta

    p = argparse.ArgumentParser(prog="python -m medfakedet.checkset", description=__doc__)
    p.add_argument("--artifact", type=Path, required=True, help="the artifact folder")
    p.add_argument("--images", type=Path, nargs="+", required=True, help="folders of images")
    p.add_argument("--count", type=int, default=DEFAULT_COUNT)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    cfg = PreprocessConfig.from_dict(read_meta(args.artifact)["preprocess"])
    files = sample_files(args.images, args.count, args.seed)
    path = save(args.artifact, build(files, cfg))  # the trainer's write(), from folders
    print(f"wrote {path}: {len(files)} images from {[str(r) for r in args.images]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
