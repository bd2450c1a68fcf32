"""The public model card: what a client may know about a served model before it uploads anything.

``GET /detect/<model>`` (or ``GET /predictions/<model>``) through nginx answers the card of that
model: its version and weights' sha256, how it runs (device, CPU path) and the calibrated
defaults the endpoint applies when a request leaves them out, with their limits. The page sets
its threshold slider from it before the first upload.

TorchServe's describe metadata (``GET /models/<name>?customized=true``) holds the same version
and hash, but on the management API, which is never public. The card holds no secret and no
filesystem path: only what every answer of the endpoint already reveals.

TorchServe hands a handler neither the HTTP method nor the query string (a GET arrives as a row
with an empty body, like an empty POST), but it does hand over the request headers: nginx sets
``X-MedFakeDet-Card: 1`` on a GET of a model's endpoint (and on nothing else), and
:func:`card_requests` finds it, so the handler answers those requests without the model (see
:mod:`medfakedet.serving`). Straight on TorchServe: ``curl -H 'X-MedFakeDet-Card: 1'
http://127.0.0.1:8080/predictions/synthesis8``. Torch-free.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from medfakedet.decoding import DEFAULT_LIMITS, DecodeLimits
from medfakedet.imaging import ACCEPTED_FORMATS
from medfakedet.labels import CLASS_NAMES, ORGANS
from medfakedet.schema import DENSITY_FIELDS, SYNTHESIS8_FIELDS, ImageSize, Probability

#: The request header that asks for the card instead of a prediction (config/nginx.conf sets it
#: on GET /detect/<model>); any value but empty, 0, false, no or off.
CARD_HEADER = "X-MedFakeDet-Card"

_STRICT = ConfigDict(extra="forbid")


class CardRuntime(BaseModel):
    """Where the served model runs (the describe metadata has the measurements behind it)."""

    model_config = _STRICT
    device: str = Field(description='"cpu" or "cuda:<n>"')
    cpu_path: str = Field(description="fp32, channels_last or bf16 on a CPU (chosen at load)")


class CardInput(BaseModel):
    """What an upload may be: anything else is a 4xx that says so."""

    model_config = _STRICT
    formats: list[str] = Field(description="accepted image formats (sniffed, not by file name)")
    max_bytes: int = Field(ge=1, description="largest upload in bytes (50 MiB)")
    max_pixels: int = Field(ge=1, description="largest width x height")
    max_decode_seconds: float | None = Field(
        description="decoding one image longer than this is a 413; null: no limit"
    )
    fields: list[str] = Field(
        description="form fields (or JSON keys) besides the image that this endpoint accepts"
    )


class ModelCard(BaseModel):
    """What both models' cards hold."""

    model_config = _STRICT
    task: str
    version: str = Field(description="the model_version of every answer")
    model_sha256: str | None = Field(
        description="sha256 of the served weights (model.safetensors), as in every answer"
    )
    runtime: CardRuntime
    input: CardInput
    in_distribution_check: bool = Field(
        description="the model has in-distribution statistics: images unlike its training "
        "images are answered uncertain"
    )


class GreyZone(BaseModel):
    """P(fake) strictly between ``low`` and ``high`` is answered ``uncertain``."""

    model_config = _STRICT
    low: Probability
    high: Probability


class Synthesis8Card(ModelCard):
    """``GET /detect/synthesis8``: the classes and the calibrated decision of the classifier."""

    task: Literal["synthesis8"]
    labels: list[Literal[CLASS_NAMES]]  # type: ignore[valid-type]
    organs: list[Literal[ORGANS]]  # type: ignore[valid-type]
    temperature: float = Field(gt=0, description="softmax temperature (calibration)")
    decision: str = Field(description="how is_fake and the verdict follow from the probabilities")
    grey_zone: GreyZone
    explanations: bool = Field(description="POST /explanations/synthesis8 gives Grad-CAM")


class FloatSetting(BaseModel):
    """A request parameter: the calibrated value used when it is left out, and its range."""

    model_config = _STRICT
    default: float
    min: float
    max: float


class IntSetting(BaseModel):
    model_config = _STRICT
    default: int
    min: int
    max: int


class DensityCard(ModelCard):
    """``GET /detect/manipulation_density``: the calibrated defaults of thr and min_area."""

    task: Literal["manipulation_density"]
    threshold: FloatSetting = Field(
        description="form field thr: box level on the raw density map (calibrated default)"
    )
    min_area: IntSetting = Field(
        description="form field min_area: smallest box in pixels of the model grid (calibrated)"
    )
    presence_threshold: Probability = Field(
        description="is_manipulated when the presence score reaches it (calibrated)"
    )
    region_scoring: Literal["peak", "fitted"] = Field(
        description="a region's score (and presence_score, the highest): 'peak', the region's "
        "maximum of the density map; 'fitted', a logistic fit on validation regions of the "
        "region's peak, mean, area, fill, mass and aspect"
    )
    grid: ImageSize = Field(description="the model's input grid (min_area is counted on it)")


#: The card model of each endpoint.
CARD_MODELS: dict[str, type[ModelCard]] = {
    "synthesis8": Synthesis8Card,
    "manipulation_density": DensityCard,
}


def card_requests(context: Any, n: int) -> list[bool]:
    """Per request of a batch: True where the request asks for the card (header
    :data:`CARD_HEADER`, in any case; TorchServe keeps the names as sent)."""
    wanted = CARD_HEADER.lower()
    flags = []
    for idx in range(n):
        try:
            headers = context.get_all_request_header(idx)
            value = next((v for k, v in headers.items() if str(k).lower() == wanted), None)
        except AttributeError:  # a context without it (made by hand): the exact name only
            value = context.get_request_header(idx, CARD_HEADER)
        except (IndexError, KeyError, TypeError):
            value = None
        text = str(value or "").strip().lower()
        flags.append(text not in ("", "0", "false", "no", "off"))
    return flags


def _input(limits: DecodeLimits | None, fields: tuple[str, ...]) -> dict:
    limits = limits or DEFAULT_LIMITS
    return {
        "formats": list(ACCEPTED_FORMATS),
        "max_bytes": limits.max_bytes,
        "max_pixels": limits.max_pixels,
        "max_decode_seconds": limits.max_seconds,
        "fields": list(fields),
    }


def model_card(predictor: Any) -> dict:
    """The card of a loaded predictor (:mod:`medfakedet.predictors`), JSON-ready; the same
    dict for every request, built once at load."""
    task = predictor.task
    fields = SYNTHESIS8_FIELDS if task == "synthesis8" else DENSITY_FIELDS
    card: dict[str, Any] = {
        "task": task,
        "version": predictor.model_version,
        "model_sha256": predictor.artifact.weights_sha256 or None,
        "runtime": {k: str(predictor.runtime[k]) for k in ("device", "cpu_path")},
        "input": _input(predictor.limits, fields),
        "in_distribution_check": predictor.ood is not None,
    }
    if task == "synthesis8":
        low, high = predictor.grey_zone
        card.update(
            labels=list(CLASS_NAMES),
            organs=list(ORGANS),
            temperature=predictor.temperature,
            decision="is_fake: the most probable of the 8 classes is a fake class; fake_"
            "probability sums the 4 fake classes; verdict uncertain when it lies strictly "
            "inside the grey zone or the image is out of distribution",
            grey_zone={"low": low, "high": high},
            explanations=True,
        )
    else:
        size = predictor.cfg.size
        card.update(
            threshold={"default": predictor.defaults.threshold, "min": 0.0, "max": 1.0},
            min_area={"default": predictor.defaults.min_area, "min": 0, "max": predictor.max_area},
            presence_threshold=predictor.presence_threshold,
            region_scoring="peak" if predictor.region_scorer is None else "fitted",
            grid={"width": size, "height": size},
        )
    return CARD_MODELS[task].model_validate(card).model_dump(mode="json")
