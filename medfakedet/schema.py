"""The one declaration of the served contract: request parameters, errors, results, postprocessing.

Both endpoints' JSON is declared here once, as pydantic models, and built here once, by one
postprocessing function per model (:func:`synthesis8_result`, :func:`density_result`) that
serving (the predictors) and evaluation both call. The result dicts are built directly, without
validating each one through pydantic (the hot path); the models document and check them: tests,
the CLI, locust and the benchmark validate what they receive, and :mod:`medfakedet.openapi`
turns them into the OpenAPI 3.1 document ``docs/openapi.json``.

Torch-free (numpy, scipy via :mod:`medfakedet.density`, pydantic), so request parsing, the CLI
and the load tests import it without loading torch.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Annotated, Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError, create_model, model_validator

from medfakedet import density as maps
from medfakedet.labels import CLASS_NAMES, ORGANS, fake_probability, organ_of, organ_probabilities
from medfakedet.verdict import (
    DENSITY_VERDICTS,
    NO_GREY_ZONE,
    SYNTHESIS8_VERDICTS,
    UNKNOWN,
    InDistribution,
    density_verdict,
    synthesis8_verdict,
)

#: Parameter fields of the manipulation_density endpoint (names of the paper's form).
DENSITY_FIELDS: tuple[str, ...] = ("thr", "min_area", "return_density", "preview")
#: Parameter fields of synthesis8: ``preview`` asks for ``preview_png`` (any accepted format).
SYNTHESIS8_FIELDS: tuple[str, ...] = ("preview",)
#: Decimal places of the probabilities and the presence score in a result.
ROUND = 6


# ------------------------------------------------------------------------------------ errors
class PredictionError(Exception):
    """One item could not be predicted: ``status`` is its HTTP code, ``message`` says why."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = int(status)
        self.message = message

    def to_dict(self) -> dict:
        """The per-item error body (:class:`ErrorBody`)."""
        return {"error": self.message, "status": self.status}

    def __repr__(self) -> str:
        return f"PredictionError({self.status}, {self.message!r})"


# ------------------------------------------------------------------------ request parameters
@dataclass(frozen=True)
class DensityParams:
    """Per-request settings of the localizer (form fields ``thr``, ``min_area``,
    ``return_density``).

    Attributes:
        threshold: level of the RAW density map that a box region must reach, in [0, 1].
        min_area: smallest region kept, in pixels of the model's input grid (128 x 128, as the
            paper's ``min_area``), so one value means the same on every upload size.
        return_density: add the density map (gray PNG) and a colour overlay to the result.
        preview: add ``preview_png``, the decoded image as a small PNG (form field ``preview``).
    """

    threshold: float = maps.DENSITY_BOX_LEVEL
    min_area: int = 20
    return_density: bool = False
    preview: bool = False

    def __post_init__(self) -> None:
        t = self.threshold
        if isinstance(t, bool) or not isinstance(t, int | float) or not math.isfinite(t):
            raise ValueError(f"threshold must be a number in [0, 1], got {t!r}")
        if not 0.0 <= t <= 1.0:
            raise ValueError(f"threshold must be a number in [0, 1], got {t!r}")
        a = self.min_area
        if isinstance(a, bool) or not isinstance(a, int) or a < 0:
            raise ValueError(f"min_area must be a whole number of pixels >= 0, got {a!r}")


# ------------------------------------------------------------------------- the region rule
@dataclass(frozen=True)
class Findings:
    """What a density map says, at the map's own resolution.

    Attributes:
        manipulated: ``presence_score >= presence_threshold``.
        presence_score: the maximum of the raw map; with a region scorer, the highest score of
            a region (0 when no region reaches the box threshold with ``min_area`` pixels).
        boxes: regions reaching ``threshold`` with at least ``min_area`` pixels whose own score
            (peak, or the scorer's) reaches the presence threshold, highest score first.
    """

    manipulated: bool
    presence_score: float
    boxes: list[maps.Box] = field(default_factory=list)


def detect_regions(
    density: np.ndarray,
    threshold: float,
    min_area: int,
    presence_threshold: float,
    scorer: maps.RegionScorer | None = None,
) -> Findings:
    """The served rule, used by serving and evaluation alike.

    A region counts only when its own peak reaches the presence threshold (hysteresis), so every
    box is a region the model calls manipulated, and faint blobs give no box. With a ``scorer``
    (fitted on validation, in the artifact's calibration) a region's score is the scorer's
    probability instead of its peak, and the image is manipulated when a region's score
    reaches the presence threshold.
    """
    if scorer is not None:
        regions = maps.scored_boxes(density, threshold, min_area, scorer)
        top = regions[0].score if regions else 0.0
        boxes = [b for b in regions if b.score >= presence_threshold]
        return Findings(bool(top >= presence_threshold), top, boxes)
    score = maps.presence_score(density)
    boxes = maps.density_to_boxes(density, threshold, min_area, min_peak=presence_threshold)
    return Findings(bool(score >= presence_threshold), score, boxes)


# ---------------------------------------------------------------------- the response models
Probability = Annotated[float, Field(ge=0.0, le=1.0)]
_STRICT = ConfigDict(extra="forbid")


def _absent_when_unset(schema: dict[str, Any]) -> None:
    schema.pop("default", None)  # the key is left out of the answer, never sent as null


def _optional(description: str) -> Any:
    """A string field that is present only on request (never ``null``)."""
    return Field(None, description=description, json_schema_extra=_absent_when_unset)


ClassProbabilities = create_model(
    "ClassProbabilities",
    __config__=_STRICT,
    __doc__="Calibrated probability of each of the 8 classes, in the paper's order.",
    **{name: (Probability, ...) for name in CLASS_NAMES},
)
OrganProbabilities = create_model(
    "OrganProbabilities",
    __config__=_STRICT,
    __doc__="Probability of each organ (its real + fake classes).",
    **{organ: (Probability, ...) for organ in ORGANS},
)


class Box(BaseModel):
    """A box in pixels of the uploaded image; ``x2``/``y2`` are exclusive edges."""

    model_config = _STRICT
    x1: float = Field(ge=0)
    y1: float = Field(ge=0)
    x2: float = Field(ge=0)
    y2: float = Field(ge=0)
    score: Probability = Field(description="peak of the density map inside the box")


class ImageSize(BaseModel):
    model_config = _STRICT
    width: int = Field(ge=1)
    height: int = Field(ge=1)


class InDistributionFields(BaseModel):
    """Common to both results: the in-distribution check (null: the model has no statistics),
    the served weights' sha256 and, on request, a preview of the decoded image."""

    in_distribution: bool | None = Field(
        description="the image is like the model's training images (the calibrated cut-off "
        "keeps 95% of the validation images in); null when the model has no such statistics"
    )
    in_distribution_score: Probability | None = Field(
        description="share of the validation images at least as far from the training images "
        "(1: typical, 0: further than all of them); null when the model has no such statistics"
    )
    model_sha256: str = _optional("sha256 of the served weights file (model.safetensors)")
    preview_png: str = _optional("base64 PNG of the decoded image, longest side <= 256 (preview)")


class Explanation(BaseModel):
    model_config = _STRICT
    method: Literal["grad-cam"]
    layer: str
    target_class: Literal[CLASS_NAMES]  # type: ignore[valid-type]


class Synthesis8Result(InDistributionFields):
    """``POST /detect/synthesis8``: organ, real/fake, calibrated probabilities, and the verdict
    (``uncertain`` when the image is out of distribution or P(fake) is in the grey zone)."""

    model_config = _STRICT
    verdict: Literal[SYNTHESIS8_VERDICTS] = Field(  # type: ignore[valid-type]
        description="what to take from the answer: the model's call, or uncertain"
    )
    reason: str = Field(description="one sentence saying why this verdict")
    class_id: int = Field(ge=0, lt=len(CLASS_NAMES))
    class_name: Literal[CLASS_NAMES]  # type: ignore[valid-type]
    organ: Literal[ORGANS]  # type: ignore[valid-type]
    is_fake: bool
    fake_probability: Probability
    organ_probabilities: OrganProbabilities  # type: ignore[valid-type]
    probabilities: ClassProbabilities  # type: ignore[valid-type]
    model_version: str

    @model_validator(mode="after")
    def _consistent(self) -> Synthesis8Result:
        if self.class_name != CLASS_NAMES[self.class_id]:
            raise ValueError(f"class_name {self.class_name} is not class {self.class_id}")
        if abs(sum(self.probabilities.model_dump().values()) - 1.0) > 1e-3:
            raise ValueError("probabilities do not sum to 1")
        return self


class Synthesis8Explained(Synthesis8Result):
    """``POST /explanations/synthesis8``: the prediction plus a Grad-CAM heatmap."""

    explanation: Explanation
    heatmap_png: str = Field(description="base64 PNG: colour heatmap over the image")


class DensityResult(InDistributionFields):
    """``POST /detect/manipulation_density``: presence of a manipulation and its boxes, and the
    verdict (``uncertain``, with no boxes, when the image is unlike the training brains)."""

    model_config = _STRICT
    verdict: Literal[DENSITY_VERDICTS] = Field(  # type: ignore[valid-type]
        description="manipulated / untouched, or uncertain (then boxes is empty)"
    )
    is_manipulated: bool = Field(description="the model's raw call (presence threshold)")
    presence_score: float = Field(
        description="maximum of the raw density map, or the highest region score where the "
        "model card says region_scoring 'fitted'"
    )
    presence_threshold: Probability
    threshold: Probability = Field(description="the box level used (form field thr)")
    min_area: int = Field(ge=0, description="smallest box, in pixels of the model grid")
    count: int = Field(ge=0)
    boxes: list[Box]
    image_size: ImageSize
    density_size: ImageSize
    model_version: str
    message: str
    density_png: str = _optional("base64 gray PNG of the density map (return_density=true)")
    heatmap_png: str = _optional("base64 PNG: density over the image (return_density=true)")

    @model_validator(mode="after")
    def _consistent(self) -> DensityResult:
        if self.count != len(self.boxes):
            raise ValueError(f"count is {self.count} but there are {len(self.boxes)} boxes")
        return self


class ErrorBody(BaseModel):
    """A request this endpoint cannot use (bad image, bad parameter): its own 4xx."""

    model_config = _STRICT
    error: str = Field(description="what was wrong and what is accepted")
    status: int = Field(ge=400, le=599)


class TorchServeError(BaseModel):
    """An error of TorchServe itself (unknown model, no worker, timeout)."""

    code: int
    type: str
    message: str


class Ping(BaseModel):
    status: str = Field(description='"Healthy" when every model has a ready worker')


# ----------------------------------------------------------------------- the request models
_BASE64 = {"contentEncoding": "base64"}
ImageField = Annotated[bytes, Field(description="the image file: PNG, JPEG, TIFF, BMP or DICOM")]
ImageBase64 = Annotated[
    str,
    Field(description="the file's bytes in base64 (a data: URL is accepted)"),
    Field(json_schema_extra=_BASE64),
]


class _DensityFields(BaseModel):
    thr: Probability = Field(
        None,
        description="box level on the raw density map; the calibrated value when left out",
        json_schema_extra=_absent_when_unset,
    )
    min_area: int = Field(
        None,
        ge=0,
        description="smallest box in pixels of the model grid (128x128 = 16384 pixels); the "
        "calibrated value when left out",
        json_schema_extra=_absent_when_unset,
    )
    return_density: bool = Field(False, description="add density_png and heatmap_png")


class ImageForm(BaseModel):
    model_config = _STRICT
    image: ImageField
    preview: bool = Field(False, description="add preview_png (the decoded image, small)")


class ImageJson(ImageForm):
    image: ImageBase64


class DensityForm(_DensityFields, ImageForm):
    pass


class DensityJson(_DensityFields, ImageJson):
    pass


#: The result model of each endpoint.
RESULT_MODELS: dict[str, type[BaseModel]] = {
    "synthesis8": Synthesis8Result,
    "manipulation_density": DensityResult,
}


class ResultError(ValueError):
    """An answer that is not the documented result of its endpoint."""


def read_result(endpoint: str, body: Any) -> BaseModel:
    """``body`` (parsed JSON) as the result model of ``endpoint``.

    Raises:
        ResultError: the first problem, in one line, e.g. ``"synthesis8: organ: Field required"``.
    """
    try:
        return RESULT_MODELS[endpoint].model_validate(body)
    except ValidationError as e:
        first = e.errors()[0]
        where = ".".join(map(str, first["loc"])) or "body"
        raise ResultError(f"{endpoint}: {where}: {first['msg']}") from None


def result_problem(endpoint: str, body: Any) -> str | None:
    """None when ``body`` is a valid result of ``endpoint``, else its first problem."""
    try:
        read_result(endpoint, body)
    except ResultError as e:
        return str(e)
    return None


def error_message(body: Any) -> str | None:
    """The message of an error answer: the handlers' :class:`ErrorBody` or TorchServe's own
    :class:`TorchServeError`; None when ``body`` is neither."""
    for model, key in ((ErrorBody, "error"), (TorchServeError, "message")):
        try:
            return getattr(model.model_validate(body), key)
        except ValidationError:
            continue
    return None


# ------------------------------------------------------------------------- postprocessing
def synthesis8_result(
    probs: np.ndarray,
    model_version: str,
    check: InDistribution = UNKNOWN,
    grey_zone: tuple[float, float] = NO_GREY_ZONE,
) -> dict:
    """The :class:`Synthesis8Result` of one image's calibrated 8-class probabilities, its
    in-distribution ``check`` and the artifact's P(fake) ``grey_zone``."""
    idx = int(np.argmax(probs))
    p_fake = round(float(fake_probability(probs)), ROUND)
    verdict, reason = synthesis8_verdict(idx % 2 == 1, p_fake, check, grey_zone)
    return {
        "verdict": verdict,
        "reason": reason,
        **check.fields(),
        "class_id": idx,
        "class_name": CLASS_NAMES[idx],
        "organ": organ_of(idx),
        "is_fake": idx % 2 == 1,
        "fake_probability": p_fake,
        "organ_probabilities": {
            o: round(float(p), ROUND)
            for o, p in zip(ORGANS, organ_probabilities(probs), strict=True)
        },
        "probabilities": {
            n: round(float(p), ROUND) for n, p in zip(CLASS_NAMES, probs, strict=True)
        },
        "model_version": model_version,
    }


def explanation(target: int, layer: str = "layer4") -> dict:
    """The :class:`Explanation` of a Grad-CAM on ``layer`` for class ``target``."""
    return {"method": "grad-cam", "layer": layer, "target_class": CLASS_NAMES[target]}


def density_result(
    density: np.ndarray,
    image_size: Sequence[int],
    params: DensityParams,
    presence_threshold: float,
    model_version: str,
    check: InDistribution = UNKNOWN,
    scorer: maps.RegionScorer | None = None,
) -> dict:
    """The :class:`DensityResult` of one raw density map (model resolution) for an upload of
    ``image_size`` = (width, height) and its in-distribution ``check``; PNGs
    (``return_density``) are added by the caller. An image out of distribution gets no boxes."""
    model_size = (density.shape[1], density.shape[0])
    # Boxes on the RAW map at model resolution (min_area is in model pixels), then scaled.
    found = detect_regions(density, params.threshold, params.min_area, presence_threshold, scorer)
    verdict = density_verdict(found.manipulated, check)
    boxes = [] if verdict == "uncertain" else maps.scale_boxes(found.boxes, model_size, image_size)
    width, height = (int(v) for v in image_size)
    message = density_message(found, len(found.boxes), params, presence_threshold)
    if verdict == "uncertain":
        message = f"Uncertain, no boxes: {check.sentence()} The model alone: {message}"
    return {
        "verdict": verdict,
        **check.fields(),
        "is_manipulated": found.manipulated,
        "presence_score": round(found.presence_score, ROUND),
        "presence_threshold": presence_threshold,
        "threshold": params.threshold,
        "min_area": params.min_area,
        "count": len(boxes),
        "boxes": [b.to_dict() for b in boxes],
        "image_size": {"width": width, "height": height},
        "density_size": {"width": model_size[0], "height": model_size[1]},
        "model_version": model_version,
        "message": message,
    }


def density_message(
    found: Findings, count: int, params: DensityParams, presence_threshold: float
) -> str:
    """One sentence for people: the verdict, the score against the threshold, what to try."""
    relation = ">=" if found.manipulated else "<"
    vs = f"presence score {found.presence_score:.2f} {relation} {presence_threshold:.2f}"
    regions = f"{count} suspicious region{'s' if count != 1 else ''}"
    if found.manipulated and count:
        return f"Manipulation likely: {regions} found ({vs})."
    if found.manipulated:
        return (
            f"Manipulation likely ({vs}), but no region reaches thr={params.threshold:g} with at "
            f"least {params.min_area} pixels; lower thr or min_area to see boxes."
        )
    # No box here: a region counts only when its peak reaches the presence threshold.
    return f"No manipulation detected ({vs})."
