"""The TorchServe handlers without a server: a context stub with TorchServe's documented
attributes, real encoded images, one response per request, per-item statuses, batch log lines."""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path

import numpy as np
import pytest

from handlers.manipulation_density_handler import ManipulationDensityHandler
from handlers.synthesis8_handler import Synthesis8Handler
from medfakedet.imaging import encode_png
from medfakedet.labels import CLASS_NAMES
from medfakedet.model_card import DensityCard, Synthesis8Card, card_requests
from tests.test_predictors import density_dir, rect_png, s8_dir  # noqa: F401  (fixtures)


class Context:
    """What TorchServe's ``Context`` offers a handler: properties, headers, per-item status."""

    def __init__(self, model_dir, headers: list[dict] | None = None) -> None:
        self.system_properties = {"model_dir": str(model_dir), "gpu_id": None}
        self.headers = headers or []
        self.statuses: dict[int, tuple[int, str]] = {}
        self.content_types: dict[int, str] = {}
        self.response_headers: dict[int, dict[str, str]] = {}

    def get_request_header(self, idx: int, key: str):
        return self.headers[idx].get(key)

    def get_all_request_header(self, idx: int) -> dict:
        return self.headers[idx]

    def set_response_status(self, code: int, phrase: str, idx: int) -> None:
        self.statuses[idx] = (code, phrase)

    def set_response_content_type(self, idx: int, value: str) -> None:
        self.content_types[idx] = value

    def set_response_header(self, idx: int, key: str, value: str) -> None:
        self.response_headers.setdefault(idx, {})[key] = value


def handled(handler, rows: list, ctx: Context) -> list[dict]:
    """``handler.handle`` answers strict JSON bytes, each typed application/json: parsed."""
    out = handler.handle(rows, ctx)
    assert all(isinstance(b, bytes) for b in out)
    assert ctx.content_types == dict.fromkeys(range(len(rows)), "application/json")
    return [json.loads(b, parse_constant=pytest.fail) for b in out]


def _png(seed: int) -> bytes:
    rng = np.random.default_rng(seed)
    return encode_png(rng.random((96, 80), dtype=np.float32))


def test_synthesis8_handler_answers_each_row_and_logs_the_batch(s8_dir, caplog):  # noqa: F811
    handler = Synthesis8Handler()
    handler.initialize(Context(s8_dir))
    rows = [{"image": _png(1)}, {"body": b"not an image"}, {"data": _png(2)}]
    ctx = Context(s8_dir, headers=[{}, {}, {"explain": "True"}])
    with caplog.at_level(logging.INFO):
        out = handled(handler, rows, ctx)
    assert len(out) == 3
    assert out[0]["class_name"] and "heatmap_png" not in out[0]
    assert out[1]["status"] == 400 and ctx.statuses.keys() == {1}
    assert ctx.statuses[1][0] == 400 and "image" in ctx.statuses[1][1].lower()
    assert out[2]["explanation"]["method"] == "grad-cam" and out[2]["heatmap_png"]
    assert "synthesis8 batch_size=3 explained=1 ms=" in caplog.text
    # same answer as the predictor in process
    direct = handler.predictor.predict([_png(1)])[0]
    assert out[0]["probabilities"] == direct["probabilities"]


def test_density_handler_applies_per_row_params(density_dir, caplog):  # noqa: F811
    handler = ManipulationDensityHandler()
    handler.initialize(Context(density_dir))
    image = rect_png(128, (30, 40, 70, 90))
    rows = [{"image": image}, {"image": image, "thr": "0.99"}, {"image": image, "thr": "2"}]
    ctx = Context(density_dir)
    with caplog.at_level(logging.INFO):
        out = handled(handler, rows, ctx)
    assert out[0]["count"] == 1 and out[0]["is_manipulated"] is True
    assert out[1]["threshold"] == 0.99
    assert out[2]["status"] == 400 and ctx.statuses[2][0] == 400
    assert "manipulation_density batch_size=3 ms=" in caplog.text


def test_initialize_refuses_the_other_models_artifact(s8_dir):  # noqa: F811
    with pytest.raises(Exception, match="manipulation_density artifact"):
        ManipulationDensityHandler().initialize(Context(s8_dir))


def test_an_exception_in_a_batch_fails_only_the_request_that_raises_it(s8_dir, monkeypatch):  # noqa: F811
    """A bug that one input reaches (simulated: the predictor raises on that input) must not
    fail the batch: TorchServe would answer 503 to every request in it."""
    handler = Synthesis8Handler()
    handler.initialize(Context(s8_dir))
    answer = handler.predictor.answer

    def raising(items, *args, **kwargs):
        if any(item == b"BOOM" for item in items):
            raise RuntimeError("a bug")
        return answer(items, *args, **kwargs)

    monkeypatch.setattr(handler.predictor, "answer", raising)
    ctx = Context(s8_dir, headers=[{}, {}, {"explain": "True"}])
    out = handled(handler, [{"image": _png(1)}, {"image": b"BOOM"}, {"image": _png(2)}], ctx)
    assert out[0]["probabilities"] and "heatmap_png" not in out[0]
    assert out[1] == {"error": "internal error while answering this request", "status": 500}
    assert out[2]["explanation"]["method"] == "grad-cam"  # its own explain flag, kept
    assert ctx.statuses.keys() == {1} and ctx.statuses[1][0] == 500
    assert ctx.response_headers == {1: {"X-MedFakeDet-Error": "internal"}}


def test_a_non_finite_result_is_that_requests_422_and_the_body_is_strict_json(
    s8_dir,  # noqa: F811
    monkeypatch,
):
    handler = Synthesis8Handler()
    handler.initialize(Context(s8_dir))
    answer = handler.predictor.answer

    def with_nan(items, *args, **kwargs):
        results = answer(items, *args, **kwargs)
        results[1]["probabilities"]["brain_real"] = float("nan")
        return results

    monkeypatch.setattr(handler.predictor, "answer", with_nan)
    ctx = Context(s8_dir, headers=[{}, {}])
    out = handled(handler, [{"image": _png(1)}, {"image": _png(2)}], ctx)  # parses strictly
    assert out[0]["probabilities"]
    assert out[1]["status"] == 422 and "non-finite" in out[1]["error"]
    assert ctx.statuses[1][0] == 422


# ------------------------------------------------------------------- the public model card
def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_card_requests_get_the_model_card_and_never_reach_the_model(s8_dir, monkeypatch, caplog):  # noqa: F811
    """GET /detect/synthesis8 arrives as an empty body with the header X-MedFakeDet-Card: 1
    (nginx sets it): it gets the card; the image rows of the same batch are answered as usual,
    each with its own explain header, and only they reach the model."""
    handler = Synthesis8Handler()
    handler.initialize(Context(s8_dir))
    answer, seen = handler.predictor.answer, []

    def recording(items, explain, *args, **kwargs):
        seen.append((list(items), list(explain)))
        return answer(items, explain, *args, **kwargs)

    monkeypatch.setattr(handler.predictor, "answer", recording)
    empty = {"body": bytearray(b"")}
    rows = [empty, {"image": _png(1)}, empty, {"image": _png(2)}]
    headers = [{"X-MedFakeDet-Card": "1"}, {}, {"x-medfakedet-card": "1"}, {"explain": "True"}]
    ctx = Context(s8_dir, headers=headers)
    with caplog.at_level(logging.INFO):
        out = handled(handler, rows, ctx)
    assert seen == [([_png(1), _png(2)], [False, True])]  # the card rows never reach the model
    assert "synthesis8 batch_size=2 explained=1 ms=" in caplog.text
    assert out[1]["class_name"] and "heatmap_png" not in out[1]
    assert out[3]["explanation"]["method"] == "grad-cam"
    assert out[0] == out[2] and ctx.statuses == {}
    card = Synthesis8Card.model_validate(out[0])
    assert card.version == "7.1" == out[1]["model_version"]
    assert card.model_sha256 == _sha256(Path(s8_dir) / "model.safetensors")
    assert card.model_sha256 == out[1]["model_sha256"] == handler.describe()["model_sha256"]
    assert card.runtime.device == "cpu" and card.runtime.cpu_path == "fp32"
    assert card.labels == list(CLASS_NAMES) and card.temperature == 2.0
    assert (card.grey_zone.low, card.grey_zone.high) == (0.5, 0.5)  # no grey zone calibrated
    assert card.input.max_bytes == 50 * 2**20 and card.input.max_decode_seconds == 3.0
    assert "DICOM" in card.input.formats and card.input.fields == ["preview"]
    assert card.in_distribution_check is False and card.explanations is True
    assert str(s8_dir) not in json.dumps(out[0]) and "/" not in json.dumps(out[0])  # no paths


def test_density_card_has_the_calibrated_defaults_and_a_card_batch_runs_no_model(
    density_dir,  # noqa: F811
    monkeypatch,
):
    handler = ManipulationDensityHandler()
    handler.initialize(Context(density_dir))
    monkeypatch.setattr(handler.predictor, "predict", pytest.fail)  # must not be called
    ctx = Context(density_dir, headers=[{"X-MedFakeDet-Card": "1"}])
    (body,) = handled(handler, [{"body": bytearray(b"")}], ctx)
    card = DensityCard.model_validate(body)
    assert card.task == "manipulation_density" and card.version == "3.0"
    assert card.threshold.model_dump() == {"default": 0.28, "min": 0.0, "max": 1.0}
    assert card.min_area.model_dump() == {"default": 20, "min": 0, "max": 128 * 128}
    assert card.presence_threshold == 0.5 and card.grid.width == card.grid.height == 128
    assert card.region_scoring == "peak"  # no region scorer in this artifact's calibration
    assert card.input.fields == ["thr", "min_area", "return_density", "preview"]
    assert card.model_sha256 == _sha256(Path(density_dir) / "model.safetensors")


def test_a_request_without_an_image_or_card_header_is_still_a_400(density_dir):  # noqa: F811
    handler = ManipulationDensityHandler()
    handler.initialize(Context(density_dir))
    rows = [{"body": bytearray(b"")}, {"thr": b"0.3"}, {"body": bytearray(b"")}]
    headers = [{}, {"X-MedFakeDet-Card": "0"}, {"X-MedFakeDet-Card": ""}]
    ctx = Context(density_dir, headers=headers)
    assert card_requests(ctx, 3) == [False, False, False]
    out = handled(handler, rows, ctx)
    assert [o["status"] for o in out] == [400, 400, 400]
    assert "empty body" in out[0]["error"] and "no image" in out[1]["error"]
