"""The response contract: the region rule, both postprocessing functions (exact numbers on crafted
maps and probabilities), the models that check them, and the committed OpenAPI document."""

from __future__ import annotations

import json
from pathlib import Path

import jsonschema
import numpy as np
import pytest
from openapi_spec_validator import validate

from medfakedet.density import Box as MapBox
from medfakedet.density import density_to_boxes
from medfakedet.labels import CLASS_NAMES
from medfakedet.openapi import openapi_document, openapi_text
from medfakedet.schema import (
    DensityParams,
    DensityResult,
    ErrorBody,
    PredictionError,
    Synthesis8Explained,
    Synthesis8Result,
    density_result,
    detect_regions,
    error_message,
    explanation,
    result_problem,
    synthesis8_result,
)
from medfakedet.verdict import InDistribution

REPO = Path(__file__).resolve().parents[1]


def two_blobs() -> np.ndarray:
    """A 32x32 map: a strong 4x6 blob (peak 0.9) and a faint 3x3 one (peak 0.4)."""
    d = np.zeros((32, 32), np.float32)
    d[4:10, 2:6] = 0.6
    d[6, 3] = 0.9
    d[20:23, 20:23] = 0.4
    return d


def test_detect_regions_keeps_only_regions_whose_peak_reaches_the_presence_threshold():
    found = detect_regions(two_blobs(), threshold=0.3, min_area=1, presence_threshold=0.5)
    assert found.manipulated is True
    assert found.presence_score == pytest.approx(0.9)
    assert found.boxes == [MapBox(2, 4, 6, 10, pytest.approx(0.9))]
    # the faint blob is a region of the plain rule, not of the served one
    assert len(density_to_boxes(two_blobs(), 0.3, 1)) == 2
    faint = detect_regions(two_blobs() * 0.5, 0.3, 1, presence_threshold=0.5)
    assert (faint.manipulated, faint.boxes) == (False, [])
    assert detect_regions(two_blobs(), 0.3, 25, 0.5).boxes == []  # 24 pixels < min_area


def test_density_result_scales_boxes_to_the_upload_and_says_why():
    params = DensityParams(threshold=0.3, min_area=1)
    body = density_result(two_blobs(), (64, 96), params, 0.5, "v1")
    assert body == {
        "verdict": "manipulated",
        "in_distribution": None,  # no statistics: unknown, never uncertain
        "in_distribution_score": None,
        "is_manipulated": True,
        "presence_score": 0.9,
        "presence_threshold": 0.5,
        "threshold": 0.3,
        "min_area": 1,
        "count": 1,
        "boxes": [{"x1": 4.0, "y1": 12.0, "x2": 12.0, "y2": 30.0, "score": 0.9}],
        "image_size": {"width": 64, "height": 96},
        "density_size": {"width": 32, "height": 32},
        "model_version": "v1",
        "message": "Manipulation likely: 1 suspicious region found (presence score 0.90 >= 0.50).",
    }
    DensityResult.model_validate(body)
    hidden = density_result(two_blobs(), (32, 32), DensityParams(0.95, 1), 0.5, "v1")
    assert hidden["count"] == 0 and hidden["is_manipulated"] is True
    assert hidden["message"] == (
        "Manipulation likely (presence score 0.90 >= 0.50), but no region reaches thr=0.95 "
        "with at least 1 pixels; lower thr or min_area to see boxes."
    )
    clean = density_result(np.full((8, 8), 0.1), (8, 8), params, 0.5, "v1")
    assert clean["message"] == "No manipulation detected (presence score 0.10 < 0.50)."


def test_synthesis8_result_rounds_and_sums_by_organ():
    probs = np.array([0.05, 0.6, 0.1, 0.05, 0.05, 0.05, 0.0512345678, 0.0487654322])
    body = synthesis8_result(probs, "v2")
    assert (body["class_id"], body["class_name"], body["organ"]) == (1, "brain_fake", "brain")
    assert body["is_fake"] is True
    assert body["fake_probability"] == round(0.6 + 0.05 + 0.05 + 0.0487654322, 6)
    assert body["organ_probabilities"] == {
        "brain": 0.65,
        "chest": 0.15,
        "kidney": 0.1,
        "lung": 0.1,
    }
    assert body["probabilities"]["lung_real"] == 0.051235  # 6 decimals
    assert list(body["probabilities"]) == list(CLASS_NAMES)
    Synthesis8Result.model_validate(body)
    explained = {**body, "explanation": explanation(1), "heatmap_png": "iVBOR"}
    Synthesis8Explained.model_validate(explained)
    assert (
        result_problem("synthesis8", explained)
        == "synthesis8: explanation: Extra inputs are not permitted"
    )


def test_synthesis8_verdict_abstains_out_of_distribution_and_in_the_grey_zone():
    fake = np.array([0.02, 0.86, 0.02, 0.02, 0.02, 0.02, 0.02, 0.02])  # P(fake) 0.92
    inside, outside = InDistribution(True, 0.41), InDistribution(False, 0.01)
    plain = synthesis8_result(fake, "v")
    assert (plain["verdict"], plain["in_distribution"], plain["in_distribution_score"]) == (
        "fake",
        None,
        None,
    )
    assert "no in-distribution check" in plain["reason"]
    body = synthesis8_result(fake, "v", inside, (0.4, 0.6))
    assert (body["verdict"], body["in_distribution"], body["in_distribution_score"]) == (
        "fake",
        True,
        0.41,
    )
    away = synthesis8_result(fake, "v", outside, (0.4, 0.6))
    assert away["verdict"] == "uncertain" and away["is_fake"] is True  # the paper's field stays
    assert away["reason"].startswith("The image is unlike every image the model was trained on")
    assert "would say fake (P(fake) 0.92)" in away["reason"]
    grey = synthesis8_result(fake, "v", inside, (0.3, 0.95))
    assert grey["verdict"] == "uncertain" and "grey zone 0.30-0.95" in grey["reason"]
    real = synthesis8_result(np.roll(fake, -1), "v", inside, (0.5, 0.5))  # an empty zone
    assert real["verdict"] == "real"
    for b in (plain, body, away, grey, real):
        Synthesis8Result.model_validate(b)


def test_density_verdict_out_of_distribution_is_uncertain_without_boxes():
    params = DensityParams(threshold=0.3, min_area=1)
    body = density_result(two_blobs(), (64, 96), params, 0.5, "v1", InDistribution(False, 0.0))
    assert body["verdict"] == "uncertain" and body["is_manipulated"] is True
    assert (body["count"], body["boxes"]) == (0, [])
    assert body["message"].startswith("Uncertain, no boxes: The image is unlike")
    assert body["message"].endswith(
        "The model alone: Manipulation likely: 1 suspicious region found (presence score 0.90 "
        ">= 0.50)."
    )
    inside = density_result(two_blobs(), (64, 96), params, 0.5, "v1", InDistribution(True, 0.5))
    assert (inside["verdict"], inside["count"], inside["in_distribution_score"]) == (
        "manipulated",
        1,
        0.5,
    )
    clean = density_result(np.full((8, 8), 0.1), (8, 8), params, 0.5, "v", InDistribution(True, 1))
    assert clean["verdict"] == "untouched"
    for b in (body, inside, clean):
        DensityResult.model_validate(b)


@pytest.mark.parametrize(
    ("change", "problem"),
    [
        ({"class_name": "lung_fake"}, "is not class 1"),
        ({"probabilities": {n: 0.5 for n in CLASS_NAMES}}, "do not sum to 1"),
        ({"fake_probability": 1.5}, "fake_probability: Input should be less than or equal to 1"),
        ({"organ": "liver"}, "organ: Input should be"),
    ],
)
def test_synthesis8_model_rejects_inconsistent_results(change, problem):
    body = {**synthesis8_result(np.eye(8)[1] * 0.93 + 0.01, "v"), **change}
    assert problem in result_problem("synthesis8", body)


def test_density_model_rejects_a_wrong_count_and_a_missing_field():
    body = density_result(two_blobs(), (32, 32), DensityParams(0.3, 1), 0.5, "v")
    assert "count is 2 but there are 1 boxes" in result_problem(
        "manipulation_density", {**body, "count": 2}
    )
    del body["message"]
    assert result_problem("manipulation_density", body) == (
        "manipulation_density: message: Field required"
    )


def test_density_params_validate_with_the_documented_messages():
    assert DensityParams() == DensityParams(0.28, 20, False)
    for bad, message in (
        ({"threshold": float("nan")}, "threshold must be a number in [0, 1], got nan"),
        ({"threshold": 1.2}, "threshold must be a number in [0, 1], got 1.2"),
        ({"threshold": True}, "threshold must be a number in [0, 1], got True"),
        ({"min_area": -1}, "min_area must be a whole number of pixels >= 0, got -1"),
        ({"min_area": 2.5}, "min_area must be a whole number of pixels >= 0, got 2.5"),
    ):
        with pytest.raises(ValueError) as err:
            DensityParams(**bad)
        assert str(err.value) == message


def test_prediction_error_body_is_the_documented_error():
    body = PredictionError(415, "compressed DICOM").to_dict()
    assert body == {"error": "compressed DICOM", "status": 415}
    ErrorBody.model_validate(body)
    assert error_message(body) == "compressed DICOM"
    torchserve = {"code": 503, "type": "ServiceUnavailableException", "message": "no worker"}
    assert error_message(torchserve) == "no worker"
    assert error_message({"detail": "?"}) is None and error_message(None) is None


def test_committed_openapi_documents_are_current_and_valid():
    text = openapi_text()
    for path in (REPO / "docs" / "openapi.json", REPO / "web" / "openapi.json"):
        assert path.read_text() == text, f"{path} is stale: python -m medfakedet.openapi --out ..."
    doc = json.loads(text)
    validate(doc)
    assert set(doc["paths"]) == {
        "/detect/synthesis8",
        "/detect/manipulation_density",
        "/explanations/synthesis8",
        "/ping",
    }
    for model, card in (("synthesis8", "Synthesis8Card"), ("manipulation_density", "DensityCard")):
        get = doc["paths"][f"/detect/{model}"]["get"]  # the public model card
        assert get["responses"]["200"]["content"]["application/json"]["schema"] == {
            "$ref": f"#/components/schemas/{card}"
        }
    density = doc["paths"]["/detect/manipulation_density"]["post"]
    assert set(density["requestBody"]["content"]) == {
        "multipart/form-data",
        "image/*",
        "application/octet-stream",
        "application/json",
    }
    form = doc["components"]["schemas"]["DensityForm"]
    assert form["required"] == ["image"]
    assert list(form["properties"]) == ["image", "preview", "thr", "min_area", "return_density"]


def component_validator(doc: dict, name: str) -> jsonschema.Draft202012Validator:
    """A validator of ``#/components/schemas/<name>`` of ``doc`` (its $refs resolve in doc)."""
    return jsonschema.Draft202012Validator({"$ref": f"#/components/schemas/{name}", **doc})


def test_document_schemas_accept_real_results_and_reject_wrong_ones():
    doc = openapi_document()
    body = density_result(two_blobs(), (64, 96), DensityParams(0.3, 1, True), 0.5, "v1")
    body |= {"density_png": "iVBOR", "heatmap_png": "iVBOR"}
    component_validator(doc, "DensityResult").validate(body)
    with pytest.raises(jsonschema.ValidationError, match="None is not of type 'string'"):
        component_validator(doc, "DensityResult").validate({**body, "density_png": None})
    body.pop("message")
    with pytest.raises(jsonschema.ValidationError, match="'message' is a required property"):
        component_validator(doc, "DensityResult").validate(body)
    s8 = synthesis8_result(np.full(8, 0.125), "v")
    component_validator(doc, "Synthesis8Result").validate(s8)
    with pytest.raises(jsonschema.ValidationError, match="Additional properties"):
        component_validator(doc, "Synthesis8Result").validate({**s8, "heatmap_png": "x"})
    component_validator(doc, "ErrorBody").validate({"error": "empty", "status": 400})
