"""TorchServe handler of ``manipulation_density``: a thin adapter over
:mod:`medfakedet.predictors`.

Form fields ``thr``, ``min_area`` (pixels of the 128x128 model grid) and ``return_density`` are
parsed per request; a bad value is that request's 400, the rest of the batch still answers. The
archive's own copy of ``medfakedet`` (next to this file, on the worker's PYTHONPATH) is imported.
"""

from medfakedet.predictors import DensityPredictor
from medfakedet.requests import density_items
from medfakedet.serving import PredictorHandler


class ManipulationDensityHandler(PredictorHandler):
    """POST /predictions/manipulation_density."""

    predictor_class = DensityPredictor

    def answer(self, data, context):
        p = self.predictor
        items, params = density_items(data, p.defaults, p.max_area)
        return p.predict(items, params), {}
