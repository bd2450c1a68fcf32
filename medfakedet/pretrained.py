"""Initial weights of a model about to be trained (the trainers' ``--init``).

``scratch``: the builders' random init. ``imagenet``: torchvision's ImageNet weights of the
ResNet (the classifier, or an ``smp_unet:resnet*`` localizer's encoder), read from the local
torch cache (``torch.hub.get_dir()/checkpoints/``, which honours ``TORCH_HOME``); nothing is
ever downloaded. ``PATH``: a state dict in a ``.pth`` / ``.pt`` (read with
``weights_only=True``) or ``.safetensors`` file.

The ImageNet head (1000 classes) is replaced by the model's own, and the first convolution is
adapted when the model takes another number of input channels (3 -> 1: summed over the
channels, as segmentation-models-pytorch does). Any other missing, unexpected or mis-shaped
tensor is refused by name. :func:`initialize` returns what it did, for the artifact's
training record.
"""

from __future__ import annotations

import pickle
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
import torchvision
from torch import nn

from medfakedet.hashing import file_sha256
from medfakedet.models import SmpUNetDensity

INIT_KINDS = ("scratch", "imagenet")
STATE_DICT_SUFFIXES = (".pth", ".pt", ".safetensors")
#: The classification head of torchvision's ResNets (1000 ImageNet classes).
HEAD_KEYS = ("fc.weight", "fc.bias")
#: Keys listed per kind in a refusal (the rest are counted).
_SHOWN_KEYS = 8


class InitError(ValueError):
    """The requested initial weights cannot be found or do not fit the model."""


def init_problem(init: str, arch: str) -> str | None:
    """Why ``init`` cannot initialise a model of ``arch``, or None. Checks that the weights
    file is there; whether its tensors fit the model is checked when loading."""
    if init == "scratch":
        return None
    if init == "imagenet":
        if arch == "unet_density":
            return (
                "init 'imagenet' is not available for arch unet_density: the paper's UNetDensity "
                "has no pretrained weights (the paper trains it from scratch). Use --init "
                "scratch, --init PATH with a UNetDensity state dict (e.g. the model.safetensors "
                "of a manipulation_density artifact), or an ImageNet encoder: "
                "--set arch=smp_unet:resnet18 --init imagenet"
            )
        encoder = imagenet_encoder(arch)
        try:
            path, url = imagenet_weights_file(encoder)
        except InitError as e:
            return str(e)
        return None if path.is_file() else missing_imagenet_message(encoder, path, url)
    path = Path(init)
    if path.suffix not in STATE_DICT_SUFFIXES:
        return (
            f"init must be 'scratch', 'imagenet' or a state-dict file "
            f"({', '.join(STATE_DICT_SUFFIXES)}); got {init!r}"
        )
    if not path.is_file():
        return f"init weights file {path} not found"
    return None


def imagenet_encoder(arch: str) -> str:
    """The torchvision model whose ImageNet weights initialise ``arch``."""
    return arch.split(":", 1)[1] if arch.startswith("smp_unet:") else arch


def imagenet_weights_file(encoder: str = "resnet18") -> tuple[Path, str]:
    """``(path, url)``: where torchvision caches the ImageNet weights of ``encoder`` and the URL
    it downloads them from (only its metadata is read here: nothing is downloaded)."""
    try:
        weights = torchvision.models.get_model_weights(encoder).IMAGENET1K_V1
    except (ValueError, KeyError, AttributeError):
        raise InitError(
            f"no torchvision ImageNet weights for {encoder!r}; --init imagenet supports the "
            "ResNets (resnet18, resnet34, resnet50); use --init scratch or --init PATH"
        ) from None
    url = weights.url
    return Path(torch.hub.get_dir()) / "checkpoints" / url.rsplit("/", 1)[1], url


def missing_imagenet_message(encoder: str, path: Path, url: str) -> str:
    """How to get torchvision's ImageNet weights into the local cache."""
    return (
        f"--init imagenet needs torchvision's ImageNet weights of {encoder}, the file "
        f"{path.name}, in the local torch cache, and nothing is downloaded here: {path} does "
        f"not exist. Get it from {url} (e.g. on a machine with internet access: "
        f"curl -L -o {path.name} {url}) and copy it to {path.parent}/ (that folder is "
        "$TORCH_HOME/hub/checkpoints/, ~/.cache/torch/hub/checkpoints/ by default). "
        "Or train without it: --init scratch works offline."
    )


def load_state_dict_file(path: str | Path) -> dict[str, torch.Tensor]:
    """The tensors of a ``.pth`` / ``.pt`` (``weights_only=True``) or ``.safetensors`` file.

    A checkpoint holding the weights under ``state_dict`` or ``model`` is unwrapped, and a
    ``module.`` prefix (DataParallel) is removed.
    """
    path = Path(path)
    if not path.is_file():
        raise InitError(f"init weights file {path} not found")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        state: Any = load_file(path)
    elif path.suffix in (".pth", ".pt"):
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except (pickle.UnpicklingError, RuntimeError, EOFError) as e:
            raise InitError(
                f"{path} is not a weights-only PyTorch file (it cannot be read with "
                f"weights_only=True): {str(e).splitlines()[0]}"
            ) from None
    else:
        raise InitError(
            f"{path}: init weights must be a {', '.join(STATE_DICT_SUFFIXES)} file, got "
            f"{path.suffix or 'no suffix'}"
        )
    for wrapper in ("state_dict", "model"):
        if isinstance(state, Mapping) and isinstance(state.get(wrapper), Mapping):
            state = state[wrapper]
    if not isinstance(state, Mapping) or not state:
        raise InitError(f"{path} holds no state dict (a mapping of tensor names to tensors)")
    out = {}
    for key, value in state.items():
        if not isinstance(value, torch.Tensor):
            raise InitError(f"{path}: {key!r} is a {type(value).__name__}, not a tensor")
        out[key.removeprefix("module.")] = value
    return out


def _listed(kind: str, keys: list[str]) -> str:
    shown = ", ".join(keys[:_SHOWN_KEYS])
    more = f" and {len(keys) - _SHOWN_KEYS} more" if len(keys) > _SHOWN_KEYS else ""
    return f"{len(keys)} {kind} ({shown}{more})"


def _adapt_first_conv(weight: torch.Tensor, channels: int) -> torch.Tensor | None:
    """A first-conv weight (out, c, k, k) for ``channels`` inputs, or None if no rule fits."""
    if channels == 1:
        return weight.sum(dim=1, keepdim=True)
    if weight.shape[1] == 1:
        return weight.repeat(1, channels, 1, 1) / channels
    return None


def fit_state_dict(
    state: Mapping[str, torch.Tensor], target: nn.Module, source: str
) -> tuple[dict[str, torch.Tensor], int, list[str]]:
    """``state`` made to fit ``target``: ``(full state dict to load, tensors taken from the
    file, notes on what was adapted)``.

    The ImageNet head is dropped (target without ``fc``) or left at the target's own init (a
    head of another size); the target's first convolution is adapted to its input channels.
    Raises :class:`InitError` naming every other missing, unexpected or mis-shaped tensor.
    """
    own = target.state_dict()
    first_conv = next((k for k, v in own.items() if v.ndim == 4), None)
    merged, notes, taken = dict(own), [], 0
    unexpected, mismatched = [], []
    for key, value in state.items():
        if key in HEAD_KEYS and (key not in own or own[key].shape != value.shape):
            if key == "fc.weight":
                classes = f"{value.shape[0]} -> {own[key].shape[0]}" if key in own else "dropped"
                notes.append(f"classification head fc replaced ({classes} classes)")
            continue
        if key not in own:
            unexpected.append(key)
            continue
        want = own[key].shape
        if value.shape == want:
            merged[key] = value
        elif key == first_conv and value.shape[:1] + value.shape[2:] == want[:1] + want[2:]:
            adapted = _adapt_first_conv(value, want[1])
            if adapted is None:
                mismatched.append(f"{key} {tuple(value.shape)} vs {tuple(want)}")
                continue
            merged[key] = adapted
            notes.append(f"first conv {key} adapted from {value.shape[1]} to {want[1]} channels")
        else:
            mismatched.append(f"{key} {tuple(value.shape)} vs {tuple(want)}")
            continue
        taken += 1
    missing = [
        k
        for k in own
        if k not in state and k not in HEAD_KEYS and not k.endswith("num_batches_tracked")
    ]
    if unexpected or mismatched or missing:
        parts = [
            _listed(kind, keys)
            for kind, keys in (
                ("unexpected", unexpected),
                ("mis-shaped (file vs model)", mismatched),
                ("missing", missing),
            )
            if keys
        ]
        raise InitError(
            f"{source} does not fit the model: " + "; ".join(parts) + ". Give a state dict of "
            "the same architecture (a torchvision ResNet for the classifier or an smp_unet "
            "encoder; an artifact's model.safetensors of the same arch)"
        )
    return merged, taken, notes


def _target(model: nn.Module, state: Mapping[str, torch.Tensor] | None) -> tuple[nn.Module, str]:
    """The module the weights go into: an smp localizer's encoder, unless the file holds the
    whole localizer (keys ``net.*``)."""
    if isinstance(model, SmpUNetDensity) and (
        state is None or not any(k.startswith("net.") for k in state)
    ):
        return model.net.encoder, "encoder"
    return model, "model"


def initialize(model: nn.Module, init: str, arch: str) -> dict[str, Any]:
    """Load the initial weights ``init`` into ``model`` (of ``arch``) in place.

    Returns the record stored in the artifact's training metadata: ``init`` ("scratch",
    "imagenet" or "file"), and for the other two the file, its sha256, what was loaded into
    (``model`` or ``encoder``), how many tensors, and the adaptations made.
    """
    if init == "scratch":
        return {"init": "scratch"}
    problem = init_problem(init, arch)
    if problem is not None:
        raise InitError(problem)
    if init == "imagenet":
        path, url = imagenet_weights_file(imagenet_encoder(arch))
        record: dict[str, Any] = {"init": "imagenet", "url": url}
    else:
        path, record = Path(init), {"init": "file"}
    state = load_state_dict_file(path)
    target, into = _target(model, None if init == "imagenet" else state)
    merged, taken, notes = fit_state_dict(state, target, str(path))
    target.load_state_dict(merged)
    sha = file_sha256(path)
    expected = path.stem.rsplit("-", 1)[-1]
    if init == "imagenet" and not sha.startswith(expected):
        print(
            f"warning: the sha256 of {path} does not start with {expected} as torchvision's "
            "does: these are not torchvision's own ImageNet weights",
            file=sys.stderr,
        )
    return {**record, "file": str(path), "sha256": sha, "into": into, "tensors": taken,
            "adapted": notes}  # fmt: skip
