"""Parsing TorchServe request rows: multipart fields, raw bodies, JSON base64; 400 messages."""

from __future__ import annotations

import base64
import subprocess
import sys

import pytest

from medfakedet.requests import (
    RequestError,
    density_items,
    explain_flags,
    image_items,
    parse_bool,
    parse_density_params,
    parse_min_area,
    parse_row,
    parse_threshold,
    responses,
    synthesis8_items,
)
from medfakedet.schema import DENSITY_FIELDS, DensityParams, PredictionError

PNG = b"\x89PNG\r\n\x1a\n fake"
DEFAULTS = DensityParams(0.28, 20, False)


def test_multipart_fields_arrive_as_bytearrays():
    row = {"image": bytearray(PNG), "thr": bytearray(b" 0.3 "), "min_area": bytearray(b"12")}
    parsed = parse_row(row, DENSITY_FIELDS)
    assert parsed.image == PNG
    assert parsed.fields == {"thr": "0.3", "min_area": "12"}
    assert parse_density_params(parsed.fields, DEFAULTS, 16384) == DensityParams(0.3, 12, False)


@pytest.mark.parametrize("key", ["body", "data"])
def test_raw_body(key):
    assert parse_row({key: bytearray(PNG)}).image == PNG


def test_json_body_with_base64_and_data_url():
    b64 = base64.b64encode(PNG).decode()
    row = {"body": {"image": f"data:image/png;base64,{b64[:8]}\n{b64[8:]}", "thr": 0.5}}
    parsed = parse_row(row, DENSITY_FIELDS)
    assert parsed.image == PNG
    assert parse_density_params(parsed.fields, DEFAULTS, 16384).threshold == 0.5


def test_text_part_keeps_its_bytes_so_decoding_says_not_an_image():
    assert parse_row({"image": "hello"}).image == b"hello"


@pytest.mark.parametrize(
    ("row", "message"),
    [
        ({}, "empty request"),
        ({"thr": b"0.3"}, "no image in the request"),
        ({"image": PNG, "file": PNG}, "several image fields"),
        ({"body": {"image": "***not base64***"}}, "not valid base64"),
        ({"body": [1, 2]}, "not a list"),
        ({"image": {"a": 1}}, "holds JSON"),
        ({"image": PNG, "treshold": b"0.3"}, "unknown field(s) 'treshold'"),
        ("not a dict", "could not read the request"),
    ],
)
def test_bad_rows_are_400_with_a_reason(row, message):
    with pytest.raises(RequestError) as err:
        parse_row(row, DENSITY_FIELDS)
    assert err.value.status == 400
    assert message in err.value.message


HUGE_JSON_INT = 10**400  # a JSON number too large for a float: an OverflowError, once a 503


@pytest.mark.parametrize(
    "value", ["nan", "NaN", "inf", "-0.1", "1.5", "abc", True, None, [0.3], HUGE_JSON_INT]
)
def test_bad_thresholds(value):
    with pytest.raises(RequestError, match="thr must be a number between 0 and 1"):
        parse_threshold(value)


@pytest.mark.parametrize(("value", "expected"), [("0", 0.0), (b"1", 1.0), (0.28, 0.28)])
def test_good_thresholds(value, expected):
    assert parse_threshold(value) == expected


@pytest.mark.parametrize(
    "value", ["2.5", "-1", "16385", "lots", "nan", False, HUGE_JSON_INT, -HUGE_JSON_INT, "1e400"]
)
def test_bad_min_area(value):
    with pytest.raises(RequestError, match="min_area must be a whole number of pixels between 0"):
        parse_min_area(value, 16384)


def test_good_min_area():
    assert [parse_min_area(v, 16384) for v in ("0", "20", "20.0", 16384)] == [0, 20, 20, 16384]


def test_bools():
    assert [parse_bool(v, "b") for v in ("true", "ON", "1", b"no", False, 1)] == [
        True,
        True,
        True,
        False,
        False,
        True,
    ]
    with pytest.raises(RequestError, match="return_density must be true or false"):
        parse_bool("maybe", "return_density")


def test_empty_form_fields_use_the_defaults():
    assert parse_density_params({"thr": "", "min_area": ""}, DEFAULTS, 100) == DEFAULTS


def test_batch_helpers_keep_errors_in_place():
    rows = [{"body": PNG}, {}, {"image": PNG, "thr": b"2"}]
    items = image_items(rows[:2])
    assert items[0] == PNG and isinstance(items[1], PredictionError)
    items, params = density_items(rows, DEFAULTS, 16384)
    assert items[0] == PNG and params[0] == DEFAULTS
    assert isinstance(items[2], PredictionError) and params[2] is None
    assert "thr must be" in items[2].message

    calls = []
    bodies = responses(
        [{"ok": 1}, PredictionError(415, "compressed\nDICOM é")], lambda *a: calls.append(a)
    )
    assert bodies == [{"ok": 1}, {"error": "compressed\nDICOM é", "status": 415}]
    assert calls == [(415, "compressed DICOM é", 1)]  # one line, Latin-1 safe


class _Ctx:
    def __init__(self, headers):
        self.headers = headers

    def get_request_header(self, idx, key):
        return self.headers[idx].get(key)


def test_preview_flag_per_row_of_both_endpoints():
    rows = [{"image": PNG, "preview": b"true"}, {"image": PNG}, {"image": PNG, "preview": b"x"}]
    items, previews = synthesis8_items(rows)
    assert previews == [True, False, False] and items[:2] == [PNG, PNG]
    assert isinstance(items[2], PredictionError) and "preview must be true or false" in (
        items[2].message
    )
    _, params = density_items(rows[:2], DEFAULTS, 16384)
    assert [p.preview for p in params] == [True, False]
    assert params[0].threshold == DEFAULTS.threshold  # preview alone changes nothing else


def test_explain_flags_are_per_request():
    assert explain_flags(_Ctx([{}, {"explain": "True"}]), 2) == [False, True]
    assert explain_flags(object(), 2) == [False, False]


def test_parsing_and_the_schema_import_without_torch():
    """Request parsing is cheap: it never loads torch (nor the predictors)."""
    code = "import medfakedet.requests, medfakedet.schema, sys; assert 'torch' not in sys.modules"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
