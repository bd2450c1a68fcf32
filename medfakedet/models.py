"""Model builders. Nothing is ever downloaded: every network starts from random weights
(:mod:`medfakedet.pretrained` loads the trainers' ``--init`` weights into them)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
import torchvision
from torch import nn

from medfakedet.labels import NUM_CLASSES

CLASSIFIER_ARCH = "resnet18"
LOCALIZER_ARCHS = ("unet_density", "smp_unet:resnet18", "smp_unet:resnet34")


def build_classifier(num_classes: int = NUM_CLASSES, arch: str = CLASSIFIER_ARCH) -> nn.Module:
    """torchvision ResNet18 with an ``num_classes`` head (paper: 8), random init."""
    if arch != CLASSIFIER_ARCH:
        raise ValueError(f"unknown classifier arch {arch!r}; supported: {CLASSIFIER_ARCH!r}")
    return torchvision.models.resnet18(weights=None, num_classes=num_classes)


def _double_conv(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, padding=1, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
        nn.Conv2d(cout, cout, 3, padding=1, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
    )


def _check_divisible(x: torch.Tensor, multiple: int, model: str) -> None:
    """Refuse an input whose height or width the model's downsampling cannot halve evenly."""
    if x.shape[-1] % multiple or x.shape[-2] % multiple:
        raise ValueError(
            f"{model} needs height and width divisible by {multiple}, got "
            f"{tuple(x.shape[-2:])}; resize or pad the input"
        )


class UNetDensity(nn.Module):
    """The paper's small U-Net: encoder 32-64, bottleneck 128, bilinear upsampling, two heads.

    ``forward(x)`` takes (N, 1, H, W) in [0, 1] with H and W divisible by 4 and returns
    ``(density, mask_logits)``, each (N, 1, H, W); density is already passed through a sigmoid.
    """

    def __init__(self, in_channels: int = 1, base: int = 32) -> None:
        super().__init__()
        self.enc1 = _double_conv(in_channels, base)
        self.enc2 = _double_conv(base, base * 2)
        self.bottleneck = _double_conv(base * 2, base * 4)
        self.dec2 = _double_conv(base * 4 + base * 2, base * 2)
        self.dec1 = _double_conv(base * 2 + base, base)
        self.density_head = nn.Conv2d(base, 1, 1)
        self.mask_head = nn.Conv2d(base, 1, 1)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        _check_divisible(x, 4, "UNetDensity")
        e1 = self.enc1(x)
        e2 = self.enc2(F.max_pool2d(e1, 2))
        b = self.bottleneck(F.max_pool2d(e2, 2))
        up = F.interpolate(b, scale_factor=2, mode="bilinear", align_corners=False)
        d2 = self.dec2(torch.cat([up, e2], dim=1))
        up = F.interpolate(d2, scale_factor=2, mode="bilinear", align_corners=False)
        d1 = self.dec1(torch.cat([up, e1], dim=1))
        return torch.sigmoid(self.density_head(d1)), self.mask_head(d1)


class SmpUNetDensity(nn.Module):
    """segmentation-models-pytorch U-Net with two output channels: density and mask logits.

    H and W must be divisible by 32 (the encoder downsamples five times).
    """

    def __init__(self, encoder: str, in_channels: int = 1) -> None:
        super().__init__()
        import segmentation_models_pytorch as smp  # heavy import, only for this arch

        self.net = smp.Unet(
            encoder_name=encoder, encoder_weights=None, in_channels=in_channels, classes=2
        )

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        _check_divisible(x, 32, "smp U-Net")
        out = self.net(x)
        return torch.sigmoid(out[:, :1]), out[:, 1:2]


def build_localizer(arch: str = "unet_density") -> nn.Module:
    """Density localizer: ``unet_density`` (paper) or ``smp_unet:<encoder>``, random init."""
    if arch == "unet_density":
        return UNetDensity()
    if arch.startswith("smp_unet:") and arch.split(":", 1)[1]:
        return SmpUNetDensity(arch.split(":", 1)[1])
    raise ValueError(
        f"unknown localizer arch {arch!r}; use 'unet_density' or 'smp_unet:<encoder>' "
        f"(e.g. {', '.join(LOCALIZER_ARCHS[1:])})"
    )


def build_model(task: str, arch: str) -> nn.Module:
    """Builder by task name, as stored in an artifact."""
    if task == "synthesis8":
        return build_classifier(arch=arch)
    if task == "manipulation_density":
        return build_localizer(arch)
    raise ValueError(f"unknown task {task!r}; expected 'synthesis8' or 'manipulation_density'")
