"""TorchServe handler of ``synthesis8``: a thin adapter over :mod:`medfakedet.predictors`.

The archive carries its own copy of the ``medfakedet`` package next to this file; TorchServe puts
the unpacked model folder on the worker's PYTHONPATH, so that copy is the one imported (the log
line at start says which folder it came from).
"""

from medfakedet.predictors import Synthesis8Predictor
from medfakedet.requests import explain_flags, synthesis8_items
from medfakedet.serving import PredictorHandler


class Synthesis8Handler(PredictorHandler):
    """POST /predictions/synthesis8 (and /explanations/synthesis8 for Grad-CAM)."""

    predictor_class = Synthesis8Predictor

    def answer(self, data, context):
        items, previews = synthesis8_items(data)
        explain = explain_flags(context, len(items))
        return self.predictor.answer(items, explain, previews), {"explained": sum(explain)}
