"""The ONE preprocessing path shared by training, evaluation and serving.

``eval_transform`` = channels -> resize (squash to size x size, bilinear with antialias, like the
paper's ``Resize((128, 128))``) -> normalise. Training puts its random ops on the [0, 1]
(C, H, W) tensor in front of the same tail, and the resolved :class:`PreprocessConfig` is saved
in every artifact, so serving cannot drift from training.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass

import numpy as np
import torch
import torch.nn.functional as F
import torchvision.transforms.v2.functional as TF

from medfakedet.degrade import Degradation


@dataclass(frozen=True)
class PreprocessConfig:
    """How an image becomes a model input.

    Attributes:
        size: side of the square model input (128 in the paper).
        channels: 3 for the classifier (gray is replicated), 1 for the localizer.
        mean: per-channel mean subtracted after resizing.
        std: per-channel std divided after subtracting the mean.
    """

    size: int = 128
    channels: int = 3
    mean: tuple[float, ...] = (0.5, 0.5, 0.5)
    std: tuple[float, ...] = (0.5, 0.5, 0.5)

    def __post_init__(self) -> None:
        object.__setattr__(self, "mean", tuple(float(m) for m in self.mean))
        object.__setattr__(self, "std", tuple(float(s) for s in self.std))
        if self.channels not in (1, 3):
            raise ValueError(f"channels must be 1 or 3, got {self.channels}")
        if len(self.mean) != self.channels or len(self.std) != self.channels:
            raise ValueError(
                f"mean and std need {self.channels} values each, got {self.mean} and {self.std}"
            )
        if any(s <= 0 or not math.isfinite(s) for s in self.std):
            raise ValueError(f"std values must be positive, got {self.std}")
        if not 8 <= self.size <= 4096:
            raise ValueError(f"size must be within 8..4096, got {self.size}")

    def to_dict(self) -> dict:
        d = asdict(self)
        d["mean"], d["std"] = list(self.mean), list(self.std)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> PreprocessConfig:
        unknown = set(d) - {"size", "channels", "mean", "std"}
        if unknown:
            raise ValueError(f"unknown preprocess keys {sorted(unknown)}")
        return cls(
            size=int(d["size"]),
            channels=int(d["channels"]),
            mean=tuple(d["mean"]),
            std=tuple(d["std"]),
        )


CLASSIFIER_PREPROCESS = PreprocessConfig(size=128, channels=3, mean=(0.5,) * 3, std=(0.5,) * 3)
LOCALIZER_PREPROCESS = PreprocessConfig(size=128, channels=1, mean=(0.0,), std=(1.0,))


def to_tensor(pixels: np.ndarray) -> torch.Tensor:
    """HxW or HxWxC float array in [0, 1] -> float32 tensor (C, H, W)."""
    arr = np.asarray(pixels, dtype=np.float32)
    if arr.ndim == 2:
        arr = arr[:, :, None]
    if arr.ndim != 3 or arr.shape[2] not in (1, 3, 4):
        raise ValueError(f"expected an HxW or HxWxC image with C in 1, 3, 4; got {arr.shape}")
    return torch.from_numpy(np.ascontiguousarray(arr.transpose(2, 0, 1)))


def to_channels(t: torch.Tensor, channels: int) -> torch.Tensor:
    """Gray <-> RGB on a (C, H, W) tensor. RGB -> gray uses ITU-R 601 luma, like PIL's "L"."""
    c = t.shape[0]
    if c == 4:  # alpha carries no anatomy
        t, c = t[:3], 3
    if c == channels:
        return t
    if channels == 3 and c == 1:
        return t.expand(3, -1, -1).contiguous()
    if channels == 1 and c == 3:
        w = torch.tensor([0.299, 0.587, 0.114], dtype=t.dtype).view(3, 1, 1)
        return (t * w).sum(0, keepdim=True)
    raise ValueError(f"cannot convert {c} channels to {channels}")


def resize_tensor(t: torch.Tensor, size: int) -> torch.Tensor:
    """Squash a (C, H, W) or (N, C, H, W) tensor to size x size (bilinear, antialiased)."""
    batched = t.ndim == 4
    x = t if batched else t.unsqueeze(0)
    if x.shape[-2:] != (size, size):
        x = F.interpolate(
            x, size=(size, size), mode="bilinear", antialias=True, align_corners=False
        )
        x = x.clamp_(0.0, 1.0)
    return x if batched else x.squeeze(0)


def normalize(t: torch.Tensor, cfg: PreprocessConfig) -> torch.Tensor:
    """(x - mean) / std per channel on (C, H, W) or (N, C, H, W)."""
    shape = (-1, 1, 1)
    mean = torch.tensor(cfg.mean, dtype=t.dtype, device=t.device).view(shape)
    std = torch.tensor(cfg.std, dtype=t.dtype, device=t.device).view(shape)
    return (t - mean) / std


def _sized(t: torch.Tensor, cfg: PreprocessConfig) -> torch.Tensor:
    """Channels and size, before normalising. A gray image for a 3-channel model is resized once
    and then copied (the same values as resizing three equal channels, a third of the work)."""
    if t.shape[0] == 1 and cfg.channels == 3:
        return to_channels(resize_tensor(t, cfg.size), 3)
    return resize_tensor(to_channels(t, cfg.channels), cfg.size)


def _tail(t: torch.Tensor, cfg: PreprocessConfig) -> torch.Tensor:
    return normalize(_sized(t, cfg), cfg)


def _as_tensor(pixels: np.ndarray | torch.Tensor) -> torch.Tensor:
    return (pixels if isinstance(pixels, torch.Tensor) else to_tensor(pixels)).float()


def eval_transform(pixels: np.ndarray | torch.Tensor, cfg: PreprocessConfig) -> torch.Tensor:
    """The deterministic transform: image in [0, 1] -> normalised (C, size, size) tensor."""
    return _tail(_as_tensor(pixels), cfg)


def preprocess_batch(
    images: Sequence[np.ndarray | torch.Tensor], cfg: PreprocessConfig
) -> torch.Tensor:
    """Stack ``eval_transform`` of each image into (N, C, size, size) (normalised once, as a
    batch)."""
    if not images:
        return torch.empty(0, cfg.channels, cfg.size, cfg.size)
    return normalize(torch.stack([_sized(_as_tensor(im), cfg) for im in images]), cfg)


def train_transform(
    cfg: PreprocessConfig,
    hflip: bool = True,
    rotation_deg: float = 10.0,
    degradation: Degradation | None = None,
) -> Callable[[np.ndarray | torch.Tensor, torch.Generator], torch.Tensor]:
    """Random ops (paper: horizontal flip, rotation up to +-10 deg) in front of the eval tail.

    With an active ``degradation`` (:class:`medfakedet.degrade.Degradation`: down-up resize,
    blur, noise, JPEG recompression) the image is first resized to the model size and degraded
    there, like the robustness table's corruptions. The returned callable takes the image and a
    ``torch.Generator`` so runs are reproducible.
    """
    degrade = degradation if degradation is not None and degradation.active else None

    def transform(pixels: np.ndarray | torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        t = pixels if isinstance(pixels, torch.Tensor) else to_tensor(pixels)
        t = t.float()
        if degrade is not None:
            t = to_channels(t, 1 if t.shape[0] == 1 else 3)  # alpha dropped
            t = degrade(resize_tensor(t, cfg.size), generator)
        if hflip and torch.rand((), generator=generator) < 0.5:
            t = t.flip(-1)
        if rotation_deg > 0:
            angle = (torch.rand((), generator=generator).item() * 2 - 1) * rotation_deg
            t = TF.rotate(t, angle, interpolation=TF.InterpolationMode.BILINEAR)
        return _tail(t, cfg)

    return transform
