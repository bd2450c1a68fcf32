"""What both TorchServe handlers share: load the predictor on the worker's device, answer a batch
with one response per request (errors with their own status), and log each batch.

TorchServe needs a plain class with ``initialize(context)`` and ``handle(data, context)`` in the
handler file; each file in ``handlers/`` subclasses :class:`PredictorHandler` and supplies only
how its requests become predictions (:meth:`PredictorHandler.answer`). No TorchServe import: the
``context`` is used through its documented attributes, so this is testable without a server.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from medfakedet.predictors import package_dirs
from medfakedet.requests import responses
from medfakedet.runtime import select_device

logger = logging.getLogger(__name__)


class PredictorHandler:
    """Base of the handlers: ``predictor_class`` is a predictor with ``from_artifact``."""

    predictor_class: Any = None

    def __init__(self) -> None:
        self.predictor: Any = None

    def initialize(self, context: Any) -> None:
        props = context.system_properties
        device = select_device(props.get("gpu_id"))
        self.predictor = self.predictor_class.from_artifact(props["model_dir"], device)
        self.predictor.warmup()  # the worker is READY only once it can answer
        logger.info(
            "%s ready: version=%s device=%s medfakedet_dirs=%s",
            self.predictor.task,
            self.predictor.model_version,
            device,
            package_dirs(),
        )

    def answer(self, data: list, context: Any) -> tuple[list, dict[str, int]]:
        """One result (dict or PredictionError) per request row, and counts to log."""
        raise NotImplementedError

    def handle(self, data: list, context: Any) -> list[dict]:
        start = time.perf_counter()
        results, counts = self.answer(data, context)
        extra = "".join(f" {k}={v}" for k, v in counts.items())
        logger.info(
            "%s batch_size=%d%s ms=%.1f",
            self.predictor.task,
            len(data),
            extra,
            (time.perf_counter() - start) * 1000,
        )
        return responses(results, context.set_response_status)
