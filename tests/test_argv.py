"""Option values that begin with a dash (TorchServe keys do, one in 64) reach the option."""

from __future__ import annotations

import pytest

from loadtests.benchmark import build_parser as bench_parser
from medfakedet.argv import glue_dash_values
from medfakedet.cli import build_parser, main

KEY = "-Xy3_kq9Z"  # the shape of a TorchServe key that begins with a dash


def test_a_dash_value_is_glued_to_its_option():
    argv = ["scan", "a.png", "--token", KEY, "--format", "json"]
    glued = glue_dash_values(argv, ["--token"], build_parser())
    assert glued == ["scan", "a.png", f"--token={KEY}", "--format", "json"]
    assert build_parser().parse_args(glued).token == KEY


def test_a_forgotten_value_and_positionals_after_dashdash_stay_as_typed():
    parser = build_parser()
    forgotten = ["scan", "a.png", "--token", "--format", "json"]
    assert glue_dash_values(forgotten, ["--token"], parser) == forgotten
    with pytest.raises(SystemExit):  # argparse still says the value is missing
        parser.parse_args(glue_dash_values(forgotten, ["--token"], parser))
    after = ["scan", "--", "--token", KEY]
    assert glue_dash_values(after, ["--token"], parser) == after
    plain = ["scan", "a.png", "--token", "abc"]
    assert glue_dash_values(plain, ["--token"], parser) == plain


def test_scan_accepts_a_dash_token_and_reports_the_server(tmp_path, capsys):
    image = tmp_path / "a.png"
    image.write_bytes(b"not read: the server is unreachable")
    code = main(["scan", str(image), "--server", "http://127.0.0.1:9", "--token", KEY,
                 "--retries", "0", "--timeout", "2"])  # fmt: skip
    err = capsys.readouterr().err
    assert code == 2
    assert "cannot reach the server at http://127.0.0.1:9" in err


def test_the_benchmark_accepts_a_dash_token():
    parser = bench_parser()
    assert parser.parse_args(glue_dash_values(["--token", KEY], ["--token"], parser)).token == KEY
