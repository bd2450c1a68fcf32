"""The TorchServe handlers without a server: a context stub with TorchServe's documented
attributes, real encoded images, one response per request, per-item statuses, batch log lines."""

from __future__ import annotations

import json
import logging

import numpy as np
import pytest

from handlers.manipulation_density_handler import ManipulationDensityHandler
from handlers.synthesis8_handler import Synthesis8Handler
from medfakedet.imaging import encode_png
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
