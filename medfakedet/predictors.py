"""Batched predictors over trained artifacts: what the TorchServe handlers (and scripts) call.

``predict(items)`` takes a list of encoded images (bytes) or :class:`DecodedImage` and returns one
entry per item: a JSON-ready dict, or a :class:`PredictionError` for an item that could not be
used (its HTTP status and a message). One bad item never fails the others.

On CUDA the model runs in channels_last with float16 autocast; on the CPU on the path of
:mod:`medfakedet.fastpath` (fp32 unless ``from_artifact(cpu_path=...)`` or ``MEDFAKEDET_CPU_PATH``
asks for another or for ``auto``, the measured choice that serving makes).

Every result carries the in-distribution check of :mod:`medfakedet.ood` (features captured
during the same forward pass) and the verdict of :mod:`medfakedet.verdict`.
"""

from __future__ import annotations

import contextlib
import logging
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from medfakedet import checkset, fastpath
from medfakedet.artifacts import Artifact, ArtifactError, load_artifact
from medfakedet.density import RegionScorer
from medfakedet.imaging import (
    DecodedImage,
    DecodeLimits,
    ImageDecodeError,
    decode_image,
    encode_png,
)
from medfakedet.labels import CLASS_NAMES
from medfakedet.ood import captured_features, stacked
from medfakedet.overlays import heatmap_overlay, png_base64, preview_png
from medfakedet.preprocess import preprocess_batch
from medfakedet.runtime import autocast, select_device
from medfakedet.schema import (
    DensityParams,
    PredictionError,
    density_result,
    explanation,
    synthesis8_result,
)
from medfakedet.verdict import NO_GREY_ZONE, UNKNOWN, InDistribution

logger = logging.getLogger(__name__)

_CHUNK = 32  # forward at most this many images at once


#: An input: encoded bytes, an already decoded image, or an error found earlier (e.g. while
#: parsing the request), which is passed through so results stay aligned with requests.
Item = bytes | bytearray | DecodedImage | PredictionError


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
        #: The float model: the forward's own unless the CPU path runs a quantized copy; what
        #: needs gradients (synthesis8's explanation) always runs it.
        self.float_model = self.model
        self.cfg = artifact.preprocess
        self.ood = artifact.ood  # None: an artifact without statistics never abstains
        self.on_gpu = device.type == "cuda"
        self.cpu_path = fastpath.PATHS["fp32"]
        path = "cuda_fp16_channels_last" if self.on_gpu else "fp32"
        self.runtime: dict = {"device": str(device), "cpu_path": path}
        #: Seconds per stage of the last ``predict`` (decode, preprocess, forward, postprocess).
        self.timings: dict[str, float] = {}
        if self.on_gpu:  # tensor cores like NHWC
            self.model = self.model.to(memory_format=torch.channels_last)

    def use_cpu_path(self, setting: str | None, artifact_dir: str | Path | None = None) -> None:
        """Choose the CPU path (:func:`medfakedet.fastpath.choose`; ``auto`` measures it), checked
        against fp32 with this task's agreement score on the check set stored in ``artifact_dir``
        (:mod:`medfakedet.checkset`; seeded fields without one). No-op on a GPU."""
        if self.on_gpu:
            return
        agree, minimum, images = self.agreement_check()
        name = fastpath.requested(setting)
        measured = name == fastpath.AUTO or fastpath.PATHS[name].quantized  # the set is used
        stored = checkset.load(artifact_dir, self.cfg) if measured else None
        choice = fastpath.choose(
            self.float_model, self.cfg, agree, minimum, setting, images=images, check_set=stored
        )
        self.cpu_path = choice.path
        self.model = choice.module if choice.module is not None else self.float_model
        self.runtime = {"device": str(self.device), **choice.as_dict()}

    def agreement_check(self):
        """(score(fp32_outputs, candidate_outputs), minimum score, images) of the path check."""
        raise NotImplementedError

    @contextlib.contextmanager
    def _clock(self, stage: str) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            self.timings[stage] = self.timings.get(stage, 0.0) + time.perf_counter() - start

    @classmethod
    def from_artifact(
        cls,
        artifact_dir: str | Path,
        device: str | torch.device = "cpu",
        limits: DecodeLimits | None = None,
        cpu_path: str | None = "fp32",
    ):
        """Load the artifact folder onto ``device`` ("cpu", "cuda:0", "auto", a GPU id, ...);
        ``cpu_path``: see :mod:`medfakedet.fastpath` (``MEDFAKEDET_CPU_PATH`` overrides it)."""
        device = select_device(device)
        predictor = cls(load_artifact(artifact_dir, device=device), device, limits)
        predictor.use_cpu_path(cpu_path, artifact_dir)
        return predictor

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
            return x.contiguous(memory_format=torch.channels_last)
        return self.cpu_path.inputs(x)

    def _run(self, images: Sequence[DecodedImage]):
        """Forward ``images`` in chunks; outputs come back as float32 on the CPU."""
        outs = []
        for start in range(0, len(images), _CHUNK):
            with self._clock("preprocess"):
                x = self._inputs(images[start : start + _CHUNK])
            with (
                self._clock("forward"),
                torch.inference_mode(),
                autocast(self.device, dtype=torch.float16),
                self.cpu_path.context(),
            ):
                out = self.model(x)
            outs.append(out)
        if isinstance(outs[0], tuple):
            return tuple(torch.cat([o[i] for o in outs]).float().cpu() for i in range(len(outs[0])))
        return torch.cat(outs).float().cpu()

    def _checks(self, features: dict[str, list[torch.Tensor]], n: int) -> list[InDistribution]:
        """The in-distribution check of each of the ``n`` images whose features were captured."""
        if self.ood is None:
            return [UNKNOWN] * n
        inside, scores = self.ood.check(stacked(features))
        return [InDistribution(bool(i), float(s)) for i, s in zip(inside, scores, strict=True)]

    def _predict(self, items: Sequence[Item], postprocess) -> list[dict | PredictionError]:
        """Decode every item, forward the good ones as one batch, keep errors in their place.

        ``postprocess(indices, images, outputs, checks)`` turns the batch outputs and the
        in-distribution checks into one dict per image.
        """
        self.timings = {}
        with self._clock("decode"):
            decoded = [self._decode(item) for item in items]
        ok = [i for i, d in enumerate(decoded) if isinstance(d, DecodedImage)]
        results: list[dict | PredictionError] = list(decoded)  # images are replaced below
        if ok:
            images = [decoded[i] for i in ok]
            with captured_features(self.model) as features:
                outputs = self._run(images)
            with self._clock("postprocess"):
                answers = postprocess(ok, images, outputs, self._checks(features, len(images)))
            for i, result in zip(ok, answers, strict=True):
                results[i] = result
        return results

    def _stamp(self, result: dict, image: DecodedImage, preview: bool) -> dict:
        """Add the served weights' sha256 (chain of custody) and, when asked, the preview."""
        if self.artifact.weights_sha256:
            result["model_sha256"] = self.artifact.weights_sha256
        if preview:
            result["preview_png"] = preview_png(image.pixels)
        return result

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
        cal = artifact.calibration
        self.grey_zone = (
            float(cal.get("grey_low", NO_GREY_ZONE[0])),
            float(cal.get("grey_high", NO_GREY_ZONE[1])),
        )

    def agreement_check(self):
        return fastpath.top1_agreement, fastpath.MIN_TOP1_AGREEMENT, fastpath.CHECK_IMAGES

    def predict(
        self, items: Sequence[Item], previews: Sequence[bool] | None = None
    ) -> list[dict | PredictionError]:
        """One result per item: class, organ, calibrated P(fake) and all 8 probabilities
        (and ``preview_png`` where ``previews[i]``)."""
        wants = list(previews) if previews is not None else [False] * len(items)

        def postprocess(indices, images, logits, checks):
            probs = torch.softmax(logits / self.temperature, dim=1).numpy()
            return [
                self._stamp(
                    synthesis8_result(p, self.model_version, check, self.grey_zone), im, wants[i]
                )
                for i, im, p, check in zip(indices, images, probs, checks, strict=True)
            ]

        return self._predict(items, postprocess)

    def explain(self, items: Sequence[Item]) -> list[dict | PredictionError]:
        """Grad-CAM on ``layer4`` for the predicted class of each item.

        Each result is the prediction plus ``explanation`` (method, layer, target class) and
        ``heatmap_png``: a base64 PNG of the colour heatmap over the image (the image's aspect,
        longest side <= 1024). Items are explained one at a time (gradients per image).
        """
        return [self._explain_one(self._decode(item)) for item in items]

    def answer(
        self,
        items: Sequence[Item],
        explain: Sequence[bool],
        previews: Sequence[bool] | None = None,
    ) -> list[dict | PredictionError]:
        """Predict the items whose flag is False and explain the others, in one call
        (``previews[i]``: add ``preview_png`` to item i).

        TorchServe may batch ``/predictions`` and ``/explanations`` requests together, so the
        choice is made per item, not per batch.
        """
        if len(explain) != len(items):
            raise ValueError(f"{len(items)} items but {len(explain)} explain flags")
        wants = list(previews) if previews is not None else [False] * len(items)
        rows = list(zip(items, explain, wants, strict=True))
        kept = [(it, w) for it, e, w in rows if not e]
        plain = iter(self.predict([it for it, _ in kept], [w for _, w in kept]))
        return [self._explain_one(self._decode(it), w) if e else next(plain) for it, e, w in rows]

    def _explain_one(
        self, image: DecodedImage | PredictionError, preview: bool = False
    ) -> dict | PredictionError:
        if isinstance(image, PredictionError):
            return image
        captured: dict[str, torch.Tensor] = {}
        model = self.float_model  # gradients: never the quantized copy
        hook = model.layer4.register_forward_hook(
            lambda _m, _i, out: captured.__setitem__("act", out)
        )
        try:
            with torch.enable_grad(), captured_features(model) as features:
                logits = model(self._inputs([image])).float()
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
        (check,) = self._checks(features, 1)
        result = synthesis8_result(probs, self.model_version, check, self.grey_zone)
        result["explanation"] = explanation(target, "layer4")
        result["heatmap_png"] = png_base64(heatmap_overlay(image.pixels, cam.cpu().numpy()))
        return self._stamp(result, image, preview)


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
        scorer = cal.get("region_scorer")  # regions scored by a fit on val, not by their peak
        self.region_scorer = None if scorer is None else RegionScorer.from_dict(scorer)

    def agreement_check(self):
        score = fastpath.box_agreement(self.defaults.threshold, self.defaults.min_area)
        return score, fastpath.MIN_BOX_IOU, fastpath.BOX_CHECK_IMAGES

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

        def postprocess(indices, images, outputs, checks):
            density = outputs[0][:, 0].numpy()  # raw map, model resolution; mask head unused
            return [
                self._result(image, density[j], params[i] or self.defaults, checks[j])
                for j, (i, image) in enumerate(zip(indices, images, strict=True))
            ]

        return self._predict(items, postprocess)

    def _result(
        self, image: DecodedImage, density: np.ndarray, p: DensityParams, check: InDistribution
    ) -> dict:
        result = density_result(
            density,
            image.size,
            p,
            self.presence_threshold,
            self.model_version,
            check,
            self.region_scorer,
        )
        if p.return_density:
            result["density_png"] = png_base64(density)
            result["heatmap_png"] = png_base64(heatmap_overlay(image.pixels, density))
        return self._stamp(result, image, p.preview)
