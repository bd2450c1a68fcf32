"""TorchServe handler of ``manipulation_density``: a thin adapter over
:mod:`medfakedet.predictors`.

Form fields ``thr``, ``min_area`` (pixels of the 128x128 model grid) and ``return_density`` are
parsed per request; a bad value is that request's 400, the rest of the batch still answers. The
archive's own copy of ``medfakedet`` (next to this file, on the worker's PYTHONPATH) is imported.
"""

import logging
import time

from medfakedet.predictors import DensityPredictor, package_dirs
from medfakedet.requests import density_items, responses
from medfakedet.runtime import select_device

logger = logging.getLogger(__name__)


class ManipulationDensityHandler:
    """POST /predictions/manipulation_density."""

    def __init__(self) -> None:
        self.predictor: DensityPredictor | None = None

    def initialize(self, context) -> None:
        props = context.system_properties
        device = select_device(props.get("gpu_id"))
        self.predictor = DensityPredictor.from_artifact(props["model_dir"], device)
        self.predictor.warmup()  # the worker is READY only once it can answer
        logger.info(
            "manipulation_density ready: version=%s device=%s medfakedet_dirs=%s",
            self.predictor.model_version,
            device,
            package_dirs(),
        )

    def handle(self, data, context) -> list[dict]:
        start = time.perf_counter()
        p = self.predictor
        items, params = density_items(data, p.defaults, p.max_area)
        results = p.predict(items, params)
        logger.info(
            "manipulation_density batch_size=%d ms=%.1f",
            len(data),
            (time.perf_counter() - start) * 1000,
        )
        return responses(results, context.set_response_status)
