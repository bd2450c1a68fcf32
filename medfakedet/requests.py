"""Parse one TorchServe request row into image bytes and parameters, with 400s that say why.

TorchServe hands a handler one dict ("row") per request:

* multipart/form-data: one key per form field (``row["image"]``, ``row["thr"]``, ...), values
  ``bytes``/``bytearray`` (``str`` when the part says ``text/*``, parsed JSON when it says
  ``application/json``);
* a raw body (``curl --data-binary @f``, ``curl -T f``): ``row["body"]`` (some clients:
  ``row["data"]``);
* a JSON body (``Content-Type: application/json``): TorchServe has already parsed it, so
  ``row["body"]`` is a dict like ``{"image": "<base64>", "thr": 0.3}``.

Query-string parameters never reach the handler (TorchServe drops them), so parameters travel as
form fields or JSON keys. Every problem raises :class:`RequestError` (HTTP 400 by default) with a
message naming what was wrong and what is accepted.
"""

from __future__ import annotations

import base64
import binascii
import math
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from medfakedet.schema import DENSITY_FIELDS, SYNTHESIS8_FIELDS, DensityParams, PredictionError

#: Keys that may carry the image: the paper's form field first, then raw-body keys.
IMAGE_FIELDS: tuple[str, ...] = ("image", "body", "data", "file")

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}
_DATA_URL = re.compile(r"^data:[\w.+/-]*;base64,", re.IGNORECASE)
_HOW_TO_SEND = (
    "send the image as multipart field 'image' (curl -F image=@scan.png), as the raw request body "
    '(curl --data-binary @scan.png) or as JSON {"image": "<base64>"}'
)


class RequestError(ValueError):
    """A request the handler cannot use; ``status`` is the HTTP code to answer with."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


@dataclass(frozen=True)
class ParsedRequest:
    """The image bytes of one request and its other fields as sent (str, number or bool)."""

    image: bytes
    fields: dict[str, Any] = field(default_factory=dict)


def _as_text(value: Any, name: str) -> Any:
    """Form values arrive as bytes; parameters are text. JSON numbers/bools pass through."""
    if isinstance(value, bytes | bytearray):
        try:
            return bytes(value).decode("utf-8").strip()
        except UnicodeDecodeError:
            raise RequestError(f"field '{name}' is not UTF-8 text") from None
    if isinstance(value, str):
        return value.strip()
    return value


def _image_bytes(value: Any, name: str, *, from_json: bool) -> bytes:
    if isinstance(value, bytes | bytearray):
        return bytes(value)
    if isinstance(value, str):
        if not from_json:
            # A text part (e.g. a .txt upload): keep the bytes so decoding says "not an image".
            return value.encode("utf-8")
        text = _DATA_URL.sub("", value.strip(), count=1)
        text = "".join(text.split())  # base64 wrapped over several lines is still base64
        try:
            return base64.b64decode(text, validate=True)
        except (binascii.Error, ValueError):
            raise RequestError(
                f"JSON field '{name}' is not valid base64; send the file's bytes base64-encoded "
                "(a data: URL prefix is accepted)"
            ) from None
    if value is None:
        raise RequestError(f"field '{name}' is empty; {_HOW_TO_SEND}")
    kind = "JSON" if isinstance(value, dict | list) else type(value).__name__
    raise RequestError(f"field '{name}' holds {kind}, not an image file; {_HOW_TO_SEND}")


def parse_row(row: Any, allowed_fields: Sequence[str] = ()) -> ParsedRequest:
    """Find the image and the parameters of one TorchServe request row.

    Args:
        row: the dict TorchServe passes for one request.
        allowed_fields: parameter names this endpoint accepts besides the image; any other
            field is a 400 (a misspelt ``thr`` must not be silently ignored).

    Returns:
        The image bytes (not yet decoded) and the parameter fields.

    Raises:
        RequestError: no image, two images, bad base64, unknown fields.
    """
    if not isinstance(row, Mapping):
        raise RequestError(f"could not read the request; {_HOW_TO_SEND}")
    row = dict(row)
    for key in ("body", "data"):
        if isinstance(row.get(key), Mapping) and len(row) == 1:
            return _parse_fields(dict(row[key]), allowed_fields, from_json=True)
        if isinstance(row.get(key), list):
            raise RequestError(
                'the JSON body must be an object like {"image": "<base64>"}, not a list'
            )
    return _parse_fields(row, allowed_fields, from_json=False)


def _parse_fields(
    fields: dict[str, Any], allowed_fields: Sequence[str], *, from_json: bool
) -> ParsedRequest:
    image_keys = [k for k in IMAGE_FIELDS if k in fields]
    if not image_keys:
        if not fields:
            raise RequestError(f"empty request: no image was received; {_HOW_TO_SEND}")
        raise RequestError(
            f"no image in the request (got fields {_names(sorted(map(str, fields)))}); "
            + _HOW_TO_SEND
        )
    if len(image_keys) > 1:
        raise RequestError(
            f"the request has several image fields ({', '.join(image_keys)}); send exactly one"
        )
    key = image_keys[0]
    image = _image_bytes(fields.pop(key), key, from_json=from_json)
    unknown = sorted(str(k) for k in fields if k not in allowed_fields)
    if unknown:
        accepted = ", ".join(("image", *allowed_fields))
        raise RequestError(
            f"unknown field(s) {_names([repr(u) for u in unknown])}; this endpoint accepts: "
            f"{accepted}"
        )
    return ParsedRequest(image, {k: _as_text(v, k) for k, v in fields.items()})


def _names(names: Sequence[str], most: int = 10) -> str:
    """The first ``most`` names, and how many more: a request with 20,000 fields gets a short
    message (a long answer made TorchServe drop the connection mid-response)."""
    shown = ", ".join(str(n)[:64] for n in names[:most])
    return shown + (f" and {len(names) - most} more" if len(names) > most else "")


def _finite_number(value: Any, problem: str) -> float:
    """A form string or JSON number as a finite float; anything else is ``problem`` as a 400.

    A JSON integer too large for a float (``10**400``) is a 400 too, not an OverflowError that
    would fail the whole batch.
    """
    if isinstance(value, bool) or not isinstance(value, str | int | float):
        raise RequestError(problem)
    try:
        number = float(value)
    except (ValueError, OverflowError):
        raise RequestError(problem) from None
    if not math.isfinite(number):
        raise RequestError(problem)
    return number


def parse_threshold(value: Any, name: str = "thr") -> float:
    """A threshold in [0, 1] from a form string or JSON number; NaN, inf, text are 400s."""
    value = _as_text(value, name)
    problem = f"{name} must be a number between 0 and 1 (e.g. 0.28); got {value!r}"
    number = _finite_number(value, problem)
    if not 0.0 <= number <= 1.0:
        raise RequestError(problem)
    return number


def parse_min_area(value: Any, max_area: int, name: str = "min_area") -> int:
    """A whole number of pixels in 0..``max_area``; fractions, negatives and text are 400s."""
    value = _as_text(value, name)
    problem = (
        f"{name} must be a whole number of pixels between 0 and {max_area} "
        f"(counted on the model's input grid); got {value!r}"
    )
    number = _finite_number(value, problem)
    if number != int(number) or not 0 <= number <= max_area:
        raise RequestError(problem)
    return int(number)


def parse_bool(value: Any, name: str) -> bool:
    """true/false, 1/0, yes/no, on/off (any case) or a JSON boolean."""
    value = _as_text(value, name)
    if isinstance(value, bool):
        return value
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    if isinstance(value, str) and value.lower() in _TRUE | _FALSE:
        return value.lower() in _TRUE
    raise RequestError(f"{name} must be true or false (also 1/0, yes/no, on/off); got {value!r}")


def parse_density_params(
    fields: Mapping[str, Any], defaults: DensityParams, max_area: int
) -> DensityParams:
    """``thr``, ``min_area``, ``return_density`` and ``preview`` over the artifact's calibrated
    defaults.

    An empty form field (a cleared input box) means "use the default".
    """
    given = {k: v for k, v in fields.items() if v != ""}
    return DensityParams(
        threshold=parse_threshold(given["thr"]) if "thr" in given else defaults.threshold,
        min_area=(
            parse_min_area(given["min_area"], max_area)
            if "min_area" in given
            else defaults.min_area
        ),
        return_density=(
            parse_bool(given["return_density"], "return_density")
            if "return_density" in given
            else defaults.return_density
        ),
        preview=parse_bool(given["preview"], "preview") if "preview" in given else False,
    )


# ------------------------------------------------------------------------------ whole batches
def image_items(rows: Sequence[Any]) -> list[bytes | PredictionError]:
    """The image bytes of each row of an image-only endpoint, or that row's 400."""
    return synthesis8_items(rows)[0]


def synthesis8_items(rows: Sequence[Any]) -> tuple[list[bytes | PredictionError], list[bool]]:
    """Image bytes (or that row's 400) and the ``preview`` flag of each row of synthesis8."""
    items: list[bytes | PredictionError] = []
    previews: list[bool] = []
    for row in rows:
        try:
            parsed = parse_row(row, SYNTHESIS8_FIELDS)
            given = parsed.fields.get("preview", "")
            previews.append(given != "" and parse_bool(given, "preview"))
            items.append(parsed.image)
        except RequestError as e:
            items.append(PredictionError(e.status, e.message))
            previews.append(False)
    return items, previews


def density_items(
    rows: Sequence[Any], defaults: DensityParams, max_area: int
) -> tuple[list[bytes | PredictionError], list[DensityParams | None]]:
    """Image bytes and :class:`DensityParams` of each row (a bad row: its 400 and None)."""
    items: list[bytes | PredictionError] = []
    params: list[DensityParams | None] = []
    for row in rows:
        try:
            parsed = parse_row(row, DENSITY_FIELDS)
            params.append(parse_density_params(parsed.fields, defaults, max_area))
            items.append(parsed.image)
        except RequestError as e:
            items.append(PredictionError(e.status, e.message))
            params.append(None)
    return items, params


def _reason_phrase(message: str) -> str:
    """HTTP reason phrases are one Latin-1 line; keep messages readable within that."""
    line = " ".join(message.split())
    return line.encode("latin-1", "replace").decode("latin-1")[:500]


def responses(
    results: Sequence[dict | PredictionError], set_status: Callable[[int, str, int], Any]
) -> list[dict]:
    """JSON bodies for a batch; each error gets its own HTTP status via ``set_status``.

    ``set_status`` is TorchServe's ``context.set_response_status(code, phrase, idx)``; the frontend
    answers an error item with ``{"code", "type", "message"}`` built from that phrase.
    """
    out = []
    for idx, result in enumerate(results):
        if isinstance(result, PredictionError):
            set_status(result.status, _reason_phrase(result.message), idx)
            out.append(result.to_dict())
        else:
            out.append(result)
    return out


def explain_flags(context: Any, n: int) -> list[bool]:
    """Per request of a batch: True for ``/explanations/<model>`` calls (TorchServe sets the
    request header ``explain: True`` on those; one batch can mix both kinds)."""
    flags = []
    for idx in range(n):
        try:
            flags.append(context.get_request_header(idx, "explain") == "True")
        except (AttributeError, IndexError, KeyError, TypeError):
            flags.append(False)
    return flags
