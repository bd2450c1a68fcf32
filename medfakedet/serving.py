"""What both TorchServe handlers share: load the predictor on the worker's device, answer a batch
with one response per request (errors with their own status), and log each batch.

TorchServe needs a plain class with ``initialize(context)`` and ``handle(data, context)`` in the
handler file; each file in ``handlers/`` subclasses :class:`PredictorHandler` and supplies only
how its requests become predictions (:meth:`PredictorHandler.answer`). No TorchServe import: the
``context`` is used through its documented attributes, so this is testable without a server.
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
from typing import Any

from medfakedet import serving_metrics
from medfakedet.decoding import SERVING_LIMITS
from medfakedet.model_card import card_requests, model_card
from medfakedet.predictors import package_dirs
from medfakedet.requests import responses
from medfakedet.runtime import select_device
from medfakedet.schema import PredictionError

logger = logging.getLogger(__name__)

#: Test hook, for TorchServe's responseTimeout (tests/integration/test_hostile.py): with this
#: variable set in the worker's environment, a request whose image starts with HANG_MARKER makes
#: the worker sleep that many seconds. Nothing in deploy or the container sets it.
HANG_ENV = "MEDFAKEDET_TEST_HANG_SECONDS"
HANG_MARKER = b"MEDFAKEDET-TEST-HANG"
#: Set on a request answered with our own 5xx (config/nginx.conf passes those on as 500).
INTERNAL_ERROR_HEADER = "X-MedFakeDet-Error"


class PredictorHandler:
    """Base of the handlers: ``predictor_class`` is a predictor with ``from_artifact``."""

    predictor_class: Any = None

    def __init__(self) -> None:
        self.predictor: Any = None
        self.card: dict = {}  # the public model card, built once the predictor is loaded

    def initialize(self, context: Any) -> None:
        props = context.system_properties
        device = select_device(props.get("gpu_id"))
        self.predictor = self.predictor_class.from_artifact(
            props["model_dir"], device, limits=SERVING_LIMITS, cpu_path=cpu_path_setting(context)
        )
        self.predictor.warmup()  # the worker is READY only once it can answer
        self.card = model_card(self.predictor)
        logger.info(
            "%s ready: version=%s device=%s runtime=%s medfakedet_dirs=%s",
            self.predictor.task,
            self.predictor.model_version,
            device,
            json.dumps(self.predictor.runtime),
            package_dirs(),
        )

    def describe(self) -> dict:
        """The model's metadata (``GET /models/<name>?customized=true`` on the management API):
        version, weights' sha256 and how it runs (device, CPU path and why)."""
        p = self.predictor
        return {
            "task": p.task,
            "version": p.model_version,
            "model_sha256": p.artifact.weights_sha256,
            "runtime": p.runtime,
        }

    def answer(self, data: list, context: Any) -> tuple[list, dict[str, int]]:
        """One result (dict or PredictionError) per request row, and counts to log."""
        raise NotImplementedError

    def handle(self, data: list, context: Any) -> list[bytes]:
        if _is_describe(context):
            return [strict_json(self.describe())]
        # The public model card (GET /detect/<model>, see medfakedet.model_card) for card rows;
        # the other rows of the same batch are predicted as usual, each answer in its place.
        results: list = [self.card] * len(data)
        cards = card_requests(context, len(data))
        images = [i for i in range(len(data)) if not cards[i]]
        if images:
            answers = self._predict_rows([data[i] for i in images], RowContext(context, images))
            serving_metrics.record(context, len(images), self.predictor.timings)
            for idx, answer in zip(images, answers, strict=True):
                results[idx] = answer
        bodies = [strict_json(b) for b in responses(results, context.set_response_status)]
        for idx, result in enumerate(results):
            context.set_response_content_type(idx, "application/json")
            if isinstance(result, PredictionError) and result.status >= 500:
                # nginx reads TorchServe's own 500 as a body its decoder refused: this says ours
                context.set_response_header(idx, INTERNAL_ERROR_HEADER, "internal")
        return bodies

    def _predict_rows(self, data: list, context: Any) -> list:
        """The answer of each image row (a dict, or a PredictionError), with the batch logged."""
        start = time.perf_counter()
        _test_hang(data)
        results, counts = self._answer_each(data, context)
        extra = "".join(f" {k}={v}" for k, v in counts.items())
        logger.info(
            "%s batch_size=%d%s ms=%.1f",
            self.predictor.task,
            len(data),
            extra,
            (time.perf_counter() - start) * 1000,
        )
        return [strict_or_error(r) for r in results]

    def _answer_each(self, data: list, context: Any) -> tuple[list, dict[str, int]]:
        """:meth:`answer` for the batch; should it raise, each request alone, so that an
        exception (a bug that some input reaches) fails only its own request: an exception out
        of ``handle`` would fail the whole batch with TorchServe's 503."""
        try:
            return self.answer(data, context)
        except Exception:
            logger.exception("batch of %d failed; answering its requests one by one", len(data))
        results: list = []
        for idx, row in enumerate(data):
            try:
                (result,), _ = self.answer([row], RowContext(context, [idx]))
            except Exception:
                logger.exception("request %d of the batch failed on its own", idx)
                result = PredictionError(500, "internal error while answering this request")
            results.append(result)
        return results, {"isolated": len(data)}


def _is_describe(context: Any) -> bool:
    """TorchServe's describe call (``GET /models/<name>?customized=true``): header ``describe``
    of request 0 is ``"True"``."""
    try:
        return context.get_request_header(0, "describe") == "True"
    except (IndexError, KeyError):  # a batch without headers (a context made by hand)
        return False


def cpu_path_setting(context: Any) -> str:
    """``handler: cpu_path:`` of the archive's model-config.yaml (the shipped ones say ``auto``:
    measured at load; an archive without it runs fp32; ``MEDFAKEDET_CPU_PATH`` overrides both,
    see :mod:`medfakedet.fastpath`)."""
    config = getattr(context, "model_yaml_config", None) or {}
    return str((config.get("handler") or {}).get("cpu_path") or "fp32")


def _test_hang(data: list) -> None:
    seconds = float(os.environ.get(HANG_ENV) or 0)
    images = [row.get("image") for row in data if isinstance(row, dict)]
    if seconds > 0 and any(
        isinstance(im, bytes | bytearray) and im.startswith(HANG_MARKER) for im in images
    ):
        logger.warning("%s is set: sleeping %.0f s on a marked request", HANG_ENV, seconds)
        time.sleep(seconds)


class RowContext:
    """TorchServe's context seen from some requests of a batch: index ``i`` is request
    ``rows[i]`` (the image rows of a batch that also holds card rows, or one row alone)."""

    def __init__(self, context: Any, rows: list[int]) -> None:
        self.context, self.rows = context, rows

    def get_request_header(self, idx: int, key: str) -> Any:
        return self.context.get_request_header(self.rows[idx], key)


def _finite(value: Any) -> bool:
    if isinstance(value, float):
        return math.isfinite(value)
    if isinstance(value, dict):
        return all(_finite(v) for v in value.values())
    if isinstance(value, list | tuple):
        return all(_finite(v) for v in value)
    return True


def strict_or_error(result: Any) -> Any:
    """A result holding NaN or infinity (not JSON) becomes that request's 422."""
    if isinstance(result, PredictionError) or _finite(result):
        return result
    logger.warning("a result held a non-finite number; answered 422")
    return PredictionError(
        422, "the image gave a non-finite score (NaN or infinity); check its pixel values"
    )


def strict_json(body: Any) -> bytes:
    """Standard JSON (no NaN / Infinity literals) as UTF-8; TorchServe sends bytes as they are."""
    return json.dumps(body, allow_nan=False, separators=(",", ":")).encode("utf-8")
