"""The OpenAPI 3.1 document of the paper's endpoints, generated from :mod:`medfakedet.schema`.

    python -m medfakedet.openapi --out docs/openapi.json --out web/openapi.json

Both files are committed (a test checks they are current); nginx serves the web copy at
``/openapi.json`` next to the page.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from medfakedet import __version__
from medfakedet.model_card import DensityCard, Synthesis8Card
from medfakedet.schema import (
    DensityForm,
    DensityJson,
    DensityResult,
    ErrorBody,
    ImageForm,
    ImageJson,
    Ping,
    Synthesis8Explained,
    Synthesis8Result,
    TorchServeError,
)

_COMPONENT = "#/components/schemas/{model}"


def _ref(model: type[BaseModel], used: dict[str, type[BaseModel]]) -> dict:
    """A reference to ``model``'s schema, which the document's components will hold."""
    used[model.__name__] = model
    return {"$ref": _COMPONENT.format(model=model.__name__)}


def _json(model: type[BaseModel], description: str, used: dict) -> dict:
    return {
        "description": description,
        "content": {"application/json": {"schema": _ref(model, used)}},
    }


def _upload(form, body, result, summary: str, doc: str, used: dict) -> dict:
    """One POST endpoint taking an image as a form field, as raw bytes or as base64 JSON."""
    raw = {"schema": {"type": "string", "format": "binary"}}
    errors = {
        "400": "bad request: no image, not an image, a bad parameter",
        "413": "the image has too many pixels or takes over 3 s to decode (a body over 50 MiB: "
        "nginx's 413 in the TorchServeError shape)",
        "415": "an image format that cannot be read (e.g. deflated DICOM)",
        "422": "the image gave a non-finite score (NaN or infinity)",
    }
    return {
        "post": {
            "summary": summary,
            "description": doc,
            "requestBody": {
                "required": True,
                "content": {
                    "multipart/form-data": {"schema": _ref(form, used)},
                    "image/*": raw,
                    "application/octet-stream": raw,
                    "application/json": {"schema": _ref(body, used)},
                },
            },
            "responses": {
                "200": _json(result, "the result", used),
                **{code: _json(ErrorBody, text, used) for code, text in errors.items()},
                "default": _json(
                    TorchServeError,
                    "TorchServe or nginx: too many requests (429), a worker that died or hung "
                    "(503, 507), no answer (502, 504)",
                    used,
                ),
            },
        }
    }


def _card(card: type[BaseModel], used: dict) -> dict:
    """The GET of a model's endpoint: its public model card."""
    return {
        "get": {
            "summary": "The model card: version, weights' sha256, runtime, calibrated defaults",
            "description": "Read-only; answers without running the model, so a client can show "
            "the calibrated defaults before any upload. With token authorization on, it needs "
            "the token like every API call.",
            "responses": {
                "200": _json(card, "the model card", used),
                "default": _json(TorchServeError, "TorchServe or nginx: no such model, no "
                                 "token, too many requests", used),
            },
        }
    }  # fmt: skip


def openapi_document() -> dict:
    """The OpenAPI 3.1 document of the paper's endpoints (served by nginx in front of
    TorchServe), with every schema generated from the models above."""
    used: dict[str, type[BaseModel]] = {}
    paths = {
        "/detect/synthesis8": _card(Synthesis8Card, used) | _upload(
            ImageForm, ImageJson, Synthesis8Result, "Organ and real/fake of one image",
            "The 8 classes (brain/chest/kidney/lung x real/fake), calibrated.", used,
        ),
        "/detect/manipulation_density": _card(DensityCard, used) | _upload(
            DensityForm, DensityJson, DensityResult, "Locally manipulated regions of one image",
            "Form fields or JSON keys thr, min_area, return_density; a raw body takes the "
            "calibrated defaults.", used,
        ),
        "/explanations/synthesis8": _upload(
            ImageForm, ImageJson, Synthesis8Explained, "Grad-CAM of the predicted class",
            "The synthesis8 result plus a heatmap of what the prediction rests on.", used,
        ),
        "/ping": {"get": {"summary": "Health of the service",
                          "responses": {"200": _json(Ping, "healthy", used)}}},
    }  # fmt: skip
    schemas: dict[str, Any] = {}
    for name, model in used.items():
        schema = model.model_json_schema(ref_template=_COMPONENT)
        schemas.update(schema.pop("$defs", {}))
        schemas[name] = schema
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "MedFakeDet",
            "version": __version__,
            "description": "Detect synthetic and locally manipulated medical images. Models "
            "trained on synthetic data are NOT for clinical use.",
        },
        "paths": paths,
        "components": {"schemas": dict(sorted(schemas.items()))},
    }


def openapi_text() -> str:
    """:func:`openapi_document` as the committed file's text."""
    return json.dumps(openapi_document(), indent=2) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Write the OpenAPI document of the endpoints.")
    parser.add_argument("--out", action="append", required=True, help="file to write (repeat)")
    args = parser.parse_args(argv)
    text = openapi_text()
    for out in args.out:
        Path(out).write_text(text)
        print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
