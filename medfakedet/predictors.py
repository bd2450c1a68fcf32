"""Batched predictors over trained artifacts: what the TorchServe handlers (and scripts) call.

``predict(items)`` takes a list of encoded images (bytes) or :class:`DecodedImage` and returns one
entry per item: a JSON-ready dict, or a :class:`PredictionError` for an item that could not be
used (its HTTP status and a message). One bad item never fails the others.

On CUDA the model runs in channels_last with float16 autocast; on CPU in float32.
"""

from __future__ import annotations

import base64
import logging
import math
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from medfakedet.artifacts import Artifact, ArtifactError, load_artifact
from medfakedet.density import density_to_boxes, presence_score, scale_boxes
from medfakedet.imaging import (
    DecodedImage,
    DecodeLimits,
    ImageDecodeError,
    decode_image,
    encode_png,
)
from medfakedet.labels import CLASS_NAMES, ORGANS, fake_probability, organ_of, organ_probabilities
from medfakedet.preprocess import preprocess_batch

logger = logging.getLogger(__name__)

#: Largest side of the returned overlay PNGs: enough to look at, small enough to send.
OVERLAY_MAX_SIDE = 1024
_CHUNK = 32  # forward at most this many images at once


class PredictionError(Exception):
    """One item could not be predicted: ``status`` is its HTTP code, ``message`` says why."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = int(status)
        self.message = message

    def to_dict(self) -> dict:
        return {"error": self.message, "status": self.status}

    def __repr__(self) -> str:
        return f"PredictionError({self.status}, {self.message!r})"


#: An input: encoded bytes, an already decoded image, or an error found earlier (e.g. while
#: parsing the request), which is passed through so results stay aligned with requests.
Item = bytes | bytearray | DecodedImage | PredictionError


@dataclass(frozen=True)
class DensityParams:
    """Per-request settings of the localizer.

    Attributes:
        threshold: level of the RAW density map that a box region must reach, in [0, 1].
        min_area: smallest region kept, in pixels of the model's input grid (128 x 128, as the
            paper's ``min_area``), so one value means the same on every upload size.
        return_density: add the density map (gray PNG) and a colour overlay to the result.
    """

    threshold: float = 0.28
    min_area: int = 20
    return_density: bool = False

    def __post_init__(self) -> None:
        t = self.threshold
        if isinstance(t, bool) or not isinstance(t, int | float) or not math.isfinite(t):
            raise ValueError(f"threshold must be a number in [0, 1], got {t!r}")
        if not 0.0 <= t <= 1.0:
            raise ValueError(f"threshold must be a number in [0, 1], got {t!r}")
        a = self.min_area
        if isinstance(a, bool) or not isinstance(a, int) or a < 0:
            raise ValueError(f"min_area must be a whole number of pixels >= 0, got {a!r}")


def package_dirs() -> list[str]:
    """Folders the loaded ``medfakedet`` modules came from (a served archive must show only its
    own copy, never the source tree)."""
    return sorted(
        {
            str(Path(m.__file__).parent)
            for name, m in list(sys.modules.items())
            if name.split(".")[0] == "medfakedet" and getattr(m, "__file__", None)
        }
    )


def select_device(gpu_id: int | str | None = None) -> torch.device:
    """``cuda:<gpu_id>`` when a GPU id is given and CUDA is available, else the CPU."""
    if gpu_id is not None and str(gpu_id) != "" and torch.cuda.is_available():
        return torch.device(f"cuda:{int(gpu_id)}")
    return torch.device("cpu")


def _b64_png(array: np.ndarray) -> str:
    return base64.b64encode(encode_png(array)).decode("ascii")


def _jet(values: np.ndarray) -> np.ndarray:
    """The classic 'jet' colour map of values in [0, 1] -> HxWx3 floats (no matplotlib needed)."""
    v = np.clip(values, 0.0, 1.0)[..., None]
    anchors = np.array([0.125, 0.375, 0.625])  # where blue, green, red start to rise
    return np.clip(1.5 - np.abs(4.0 * v - 4.0 * anchors[::-1] - 0.5), 0.0, 1.0)


def _fit(width: int, height: int, max_side: int = OVERLAY_MAX_SIDE) -> tuple[int, int]:
    scale = min(1.0, max_side / max(width, height))
    return max(1, round(width * scale)), max(1, round(height * scale))


def _resize(array: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """HxW or HxWxC float array -> (height, width) of ``size`` = (w, h), bilinear."""
    t = torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32))
    t = t[None, None] if t.ndim == 2 else t.permute(2, 0, 1)[None]
    w, h = size
    if t.shape[-2:] != (h, w):
        t = F.interpolate(t, size=(h, w), mode="bilinear", align_corners=False, antialias=True)
    out = t[0].permute(1, 2, 0).numpy()
    return out[..., 0] if array.ndim == 2 else out


def heatmap_overlay(pixels: np.ndarray, heat: np.ndarray, alpha: float = 0.45) -> np.ndarray:
    """Colour ``heat`` (HxW in [0, 1], any size) over ``pixels`` (HxWxC in [0, 1]).

    The result is RGB float in [0, 1] at the image's size, capped at OVERLAY_MAX_SIDE.
    """
    h, w = pixels.shape[:2]
    size = _fit(w, h)
    base = _resize(pixels, size)
    base = np.repeat(base, 3, axis=2) if base.shape[2] == 1 else base[..., :3]
    colour = _jet(_resize(heat, size))
    return np.clip((1 - alpha) * base + alpha * colour, 0.0, 1.0)


class _Predictor:
    """Shared loading, decoding and device handling of both predictors."""

    task = ""

    def __init__(
        self, artifact: Artifact, device: torch.device, limits: DecodeLimits | None = None
    ) -> None:
        if artifact.task != self.task:
            raise ArtifactError(
                f"{type(self).__name__} needs a {self.task} artifact, got {artifact.task}"
            )
        self.artifact = artifact
        self.device = device
        self.limits = limits
        self.model = artifact.model.to(device).eval()
        self.cfg = artifact.preprocess
        self.on_gpu = device.type == "cuda"
        if self.on_gpu:  # tensor cores like NHWC; CPU convs gain nothing from it here
            self.model = self.model.to(memory_format=torch.channels_last)

    @classmethod
    def from_artifact(
        cls,
        artifact_dir: str | Path,
        device: str | torch.device = "cpu",
        limits: DecodeLimits | None = None,
    ):
        """Load the artifact folder onto ``device`` ("cpu", "cuda:0", ...)."""
        device = torch.device(device)
        return cls(load_artifact(artifact_dir, device=device), device, limits)

    @property
    def model_version(self) -> str:
        return self.artifact.version

    def _decode(self, item: Item) -> DecodedImage | PredictionError:
        if isinstance(item, DecodedImage | PredictionError):  # errors pass through in place
            return item
        if not isinstance(item, bytes | bytearray | memoryview):
            return PredictionError(400, f"expected image bytes, got {type(item).__name__}")
        try:
            return decode_image(item, self.limits)
        except ImageDecodeError as e:
            return PredictionError(e.status, str(e))
        except Exception as e:  # a decoder bug on hostile bytes must stay this item's problem
            logger.exception("unexpected error while decoding an upload")
            return PredictionError(400, f"could not decode the image ({type(e).__name__})")

    def _inputs(self, images: Sequence[DecodedImage]) -> torch.Tensor:
        x = preprocess_batch([im.pixels for im in images], self.cfg).to(self.device)
        if self.on_gpu:
            x = x.contiguous(memory_format=torch.channels_last)
        return x

    def _run(self, images: Sequence[DecodedImage]):
        """Forward ``images`` in chunks; outputs come back as float32 on the CPU."""
        outs = []
        for start in range(0, len(images), _CHUNK):
            x = self._inputs(images[start : start + _CHUNK])
            with (
                torch.inference_mode(),
                torch.autocast(self.device.type, dtype=torch.float16, enabled=self.on_gpu),
            ):
                out = self.model(x)
            outs.append(out)
        if isinstance(outs[0], tuple):
            return tuple(torch.cat([o[i] for o in outs]).float().cpu() for i in range(len(outs[0])))
        return torch.cat(outs).float().cpu()

    def _predict(self, items: Sequence[Item], postprocess) -> list[dict | PredictionError]:
        """Decode every item, forward the good ones as one batch, keep errors in their place.

        ``postprocess(indices, images, outputs)`` turns the batch outputs into one dict per image.
        """
        decoded = [self._decode(item) for item in items]
        ok = [i for i, d in enumerate(decoded) if isinstance(d, DecodedImage)]
        results: list[dict | PredictionError] = list(decoded)  # images are replaced below
        if ok:
            images = [decoded[i] for i in ok]
            for i, result in zip(ok, postprocess(ok, images, self._run(images)), strict=True):
                results[i] = result
        return results

    def warmup(self, size: int = 160) -> None:
        """Run one PNG through decode -> model -> postprocess, so the first request is not slow
        and a broken model fails at load time instead of on a user's request."""
        ramp = np.linspace(0.0, 1.0, size * size, dtype=np.float32).reshape(size, size)
        result = self.predict([encode_png(ramp)])[0]
        if isinstance(result, PredictionError):
            raise RuntimeError(f"warm-up inference failed: {result.message}")


class Synthesis8Predictor(_Predictor):
    """The 8-class synthesis detector (organ x real/fake), temperature-calibrated."""

    task = "synthesis8"

    def __init__(
        self, artifact: Artifact, device: torch.device, limits: DecodeLimits | None = None
    ) -> None:
        super().__init__(artifact, device, limits)
        names = tuple(artifact.class_names or CLASS_NAMES)
        if names != CLASS_NAMES:
            raise ArtifactError(
                f"synthesis8 artifact has classes {names}; serving needs the paper's order "
                f"{CLASS_NAMES}"
            )
        self.temperature = float(artifact.calibration.get("temperature", 1.0))

    def _result(self, probs: np.ndarray) -> dict:
        idx = int(np.argmax(probs))
        return {
            "class_id": idx,
            "class_name": CLASS_NAMES[idx],
            "organ": organ_of(idx),
            "is_fake": idx % 2 == 1,
            "fake_probability": round(float(fake_probability(probs)), 6),
            "organ_probabilities": {
                o: round(float(p), 6)
                for o, p in zip(ORGANS, organ_probabilities(probs), strict=True)
            },
            "probabilities": {
                n: round(float(p), 6) for n, p in zip(CLASS_NAMES, probs, strict=True)
            },
            "model_version": self.model_version,
        }

    def predict(self, items: Sequence[Item]) -> list[dict | PredictionError]:
        """One result per item: class, organ, calibrated P(fake) and all 8 probabilities."""

        def postprocess(_indices, _images, logits):
            probs = torch.softmax(logits / self.temperature, dim=1).numpy()
            return [self._result(p) for p in probs]

        return self._predict(items, postprocess)

    def explain(self, items: Sequence[Item]) -> list[dict | PredictionError]:
        """Grad-CAM on ``layer4`` for the predicted class of each item.

        Each result is the prediction plus ``explanation`` (method, layer, target class) and
        ``heatmap_png``: a base64 PNG of the colour heatmap over the image (the image's aspect,
        longest side <= 1024). Items are explained one at a time (gradients per image).
        """
        return [self._explain_one(self._decode(item)) for item in items]

    def answer(
        self, items: Sequence[Item], explain: Sequence[bool]
    ) -> list[dict | PredictionError]:
        """Predict the items whose flag is False and explain the others, in one call.

        TorchServe may batch ``/predictions`` and ``/explanations`` requests together, so the
        choice is made per item, not per batch.
        """
        if len(explain) != len(items):
            raise ValueError(f"{len(items)} items but {len(explain)} explain flags")
        plain = iter(self.predict([it for it, e in zip(items, explain, strict=True) if not e]))
        return [
            self._explain_one(self._decode(it)) if e else next(plain)
            for it, e in zip(items, explain, strict=True)
        ]

    def _explain_one(self, image: DecodedImage | PredictionError) -> dict | PredictionError:
        if isinstance(image, PredictionError):
            return image
        captured: dict[str, torch.Tensor] = {}
        hook = self.model.layer4.register_forward_hook(
            lambda _m, _i, out: captured.__setitem__("act", out)
        )
        try:
            with torch.enable_grad():
                logits = self.model(self._inputs([image])).float()
                target = int(logits[0].argmax())
                (grads,) = torch.autograd.grad(logits[0, target], captured["act"])
        finally:
            hook.remove()
        act = captured["act"].detach().float()
        weights = grads.float().mean(dim=(2, 3), keepdim=True)  # channel importance
        cam = F.relu((weights * act).sum(dim=1, keepdim=True))
        cam = F.interpolate(cam, size=(self.cfg.size, self.cfg.size), mode="bilinear")[0, 0]
        peak = float(cam.max())
        cam = cam / peak if peak > 0 else cam
        probs = torch.softmax(logits.detach() / self.temperature, dim=1)[0].cpu().numpy()
        result = self._result(probs)
        result["explanation"] = {
            "method": "grad-cam",
            "layer": "layer4",
            "target_class": CLASS_NAMES[target],
        }
        result["heatmap_png"] = _b64_png(heatmap_overlay(image.pixels, cam.cpu().numpy()))
        return result


class DensityPredictor(_Predictor):
    """The manipulation localizer: density map -> presence score and boxes."""

    task = "manipulation_density"

    def __init__(
        self, artifact: Artifact, device: torch.device, limits: DecodeLimits | None = None
    ) -> None:
        super().__init__(artifact, device, limits)
        cal = artifact.calibration
        self.presence_threshold = float(cal["presence_threshold"])
        self.defaults = DensityParams(
            threshold=float(cal["box_threshold"]), min_area=int(cal["min_area"])
        )

    @property
    def max_area(self) -> int:
        """Pixels of the model's input grid: the largest meaningful ``min_area``."""
        return self.cfg.size * self.cfg.size

    def predict(
        self, items: Sequence[Item], params: Sequence[DensityParams | None] | None = None
    ) -> list[dict | PredictionError]:
        """One result per item; ``params[i]`` (None = calibrated defaults) applies to item i."""
        if params is None:
            params = [None] * len(items)
        if len(params) != len(items):
            raise ValueError(f"{len(items)} items but {len(params)} params")

        def postprocess(indices, images, outputs):
            density = outputs[0][:, 0].numpy()  # raw map, model resolution; mask head unused
            return [
                self._result(image, density[j], params[i] or self.defaults)
                for j, (i, image) in enumerate(zip(indices, images, strict=True))
            ]

        return self._predict(items, postprocess)

    def _result(self, image: DecodedImage, density: np.ndarray, p: DensityParams) -> dict:
        model_size = (density.shape[1], density.shape[0])
        # Boxes on the RAW map at model resolution (min_area is in model pixels), then scaled.
        # A region counts when its own peak reaches the presence threshold (hysteresis): every
        # box is then a region the model calls manipulated, and faint blobs give no box.
        regions = density_to_boxes(density, p.threshold, p.min_area, self.presence_threshold)
        boxes = scale_boxes(regions, model_size, image.size)
        score = presence_score(density)
        manipulated = score >= self.presence_threshold
        result = {
            "is_manipulated": bool(manipulated),
            "presence_score": round(score, 6),
            "presence_threshold": self.presence_threshold,
            "threshold": p.threshold,
            "min_area": p.min_area,
            "count": len(boxes),
            "boxes": [b.to_dict() for b in boxes],
            "image_size": {"width": image.width, "height": image.height},
            "density_size": {"width": model_size[0], "height": model_size[1]},
            "model_version": self.model_version,
            "message": self._message(score, manipulated, len(boxes), p),
        }
        if p.return_density:
            result["density_png"] = _b64_png(density)
            result["heatmap_png"] = _b64_png(heatmap_overlay(image.pixels, density))
        return result

    def _message(self, score: float, manipulated: bool, count: int, p: DensityParams) -> str:
        relation = ">=" if manipulated else "<"
        vs = f"presence score {score:.2f} {relation} {self.presence_threshold:.2f}"
        regions = f"{count} suspicious region{'s' if count != 1 else ''}"
        if manipulated and count:
            return f"Manipulation likely: {regions} found ({vs})."
        if manipulated:
            return (
                f"Manipulation likely ({vs}), but no region reaches thr={p.threshold:g} with at "
                f"least {p.min_area} pixels; lower thr or min_area to see boxes."
            )
        # No box here: a region counts only when its peak reaches the presence threshold.
        return f"No manipulation detected ({vs})."
