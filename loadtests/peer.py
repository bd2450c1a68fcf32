"""The peer of the benchmark: the simplest server a user would write first (issue #12).

One Flask process, the model loaded once, one image per request, no batching, plain fp32:

    python -m loadtests.peer --artifact artifacts/synthesis8 --port 8090

``POST /detect/synthesis8`` (multipart field ``image``) answers what the service answers.
"""

from __future__ import annotations

import argparse
import threading
from collections.abc import Sequence

from flask import Flask, jsonify, request

from medfakedet.predictors import Synthesis8Predictor
from medfakedet.schema import PredictionError


def make_app(artifact: str) -> Flask:
    app = Flask("medfakedet-peer")
    predictor = Synthesis8Predictor.from_artifact(artifact, "cpu", cpu_path="fp32")
    lock = threading.Lock()  # one forward at a time: torch already uses every core

    @app.get("/ping")
    def ping():
        return jsonify(status="Healthy")

    @app.post("/detect/synthesis8")
    def detect():
        upload = request.files.get("image")
        if upload is None:
            return jsonify(status=400, message="send the image as multipart field 'image'"), 400
        with lock:
            (result,) = predictor.predict([upload.read()])
        if isinstance(result, PredictionError):
            return jsonify(status=result.status, message=result.message), result.status
        return jsonify(result)

    return app


def main(argv: Sequence[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m loadtests.peer", description=__doc__.split("\n")[0])
    p.add_argument("--artifact", required=True, help="a synthesis8 artifact folder")
    p.add_argument("--port", type=int, default=8090)
    args = p.parse_args(argv)
    make_app(args.artifact).run("127.0.0.1", args.port, threaded=True)


if __name__ == "__main__":
    main()
