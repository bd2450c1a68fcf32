"""TorchServe handler of ``synthesis8``: a thin adapter over :mod:`medfakedet.predictors`.

The archive carries its own copy of the ``medfakedet`` package next to this file; TorchServe puts
the unpacked model folder on the worker's PYTHONPATH, so that copy is the one imported (the log
line at start says which file was loaded).
"""

import logging
import time

from medfakedet.predictors import Synthesis8Predictor, package_dirs
from medfakedet.requests import explain_flags, image_items, responses
from medfakedet.runtime import select_device

logger = logging.getLogger(__name__)


class Synthesis8Handler:
    """POST /predictions/synthesis8 (and /explanations/synthesis8 for Grad-CAM)."""

    def __init__(self) -> None:
        self.predictor: Synthesis8Predictor | None = None

    def initialize(self, context) -> None:
        props = context.system_properties
        device = select_device(props.get("gpu_id"))
        self.predictor = Synthesis8Predictor.from_artifact(props["model_dir"], device)
        self.predictor.warmup()  # the worker is READY only once it can answer
        logger.info(
            "synthesis8 ready: version=%s device=%s medfakedet_dirs=%s",
            self.predictor.model_version,
            device,
            package_dirs(),
        )

    def handle(self, data, context) -> list[dict]:
        start = time.perf_counter()
        items = image_items(data)
        explain = explain_flags(context, len(items))
        results = self.predictor.answer(items, explain)
        logger.info(
            "synthesis8 batch_size=%d explained=%d ms=%.1f",
            len(data),
            sum(explain),
            (time.perf_counter() - start) * 1000,
        )
        return responses(results, context.set_response_status)
