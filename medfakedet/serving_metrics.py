"""Per-batch metrics through TorchServe's metrics API (``context.metrics``), for Prometheus.

Two histograms per model (the frontend adds the ``ModelName`` and ``Level`` labels and serves
them on the metrics port, ``/metrics``, with ``model_metrics_auto_detect=true`` in
config.properties):

- ``MedFakeDetBatchSize``: requests per batch TorchServe handed to the handler (is batching
  working, and how full are the batches);
- ``MedFakeDetStageSeconds{Stage=decode|preprocess|forward|postprocess}``: where a batch's time
  goes (the predictor's own clock, :attr:`medfakedet.predictors._Predictor.timings`).

This is the only module that touches TorchServe's Python package (its metric-type enum and
``Dimension``), imported lazily: outside a TorchServe worker (tests, scripts) nothing is
recorded and the model logic never imports ``ts``.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

logger = logging.getLogger(__name__)

BATCH_SIZE = "MedFakeDetBatchSize"
STAGE_SECONDS = "MedFakeDetStageSeconds"
STAGES = ("decode", "preprocess", "forward", "postprocess")


def record(context: Any, batch_size: int, timings: Mapping[str, float]) -> None:
    """Add the batch size and the stage timings (seconds) of one batch to ``context.metrics``."""
    metrics = getattr(context, "metrics", None)
    if metrics is None:
        return
    try:
        from ts.metrics.dimension import Dimension
        from ts.metrics.metric_type_enum import MetricTypes
    except ImportError:  # not inside a TorchServe worker
        return
    try:
        metrics.add_metric(BATCH_SIZE, batch_size, "count", metric_type=MetricTypes.HISTOGRAM)
        for stage in STAGES:
            metrics.add_metric(
                STAGE_SECONDS,
                float(timings.get(stage, 0.0)),
                "seconds",
                dimensions=[Dimension("Stage", stage)],
                metric_type=MetricTypes.HISTOGRAM,
            )
    except Exception:  # metrics must never fail a request
        logger.exception("could not record the batch metrics")
