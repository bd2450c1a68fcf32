"""Command-line values that begin with a dash, such as TorchServe's generated keys.

TorchServe's keys are URL-safe base64, so about one in 64 begins with ``-``. argparse reads
``--token -Xy3...`` as a second option and stops with "expected one argument", though the user
typed it right. :func:`glue_dash_values` rewrites such a pair into ``--token=-Xy3...`` before
parsing, unless the value is itself one of the parser's options (a forgotten value still errs).
:func:`parse_args` does that and parses.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterable, Sequence


def option_strings(parser: argparse.ArgumentParser) -> set[str]:
    """Every option string of ``parser`` and of its sub-commands."""
    found: set[str] = set()
    for action in parser._actions:
        found.update(action.option_strings)
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                found |= option_strings(sub)
    return found


def glue_dash_values(
    argv: Sequence[str], options: Iterable[str], parser: argparse.ArgumentParser
) -> list[str]:
    """``argv`` with each ``OPTION -VALUE`` of ``options`` joined into ``OPTION=-VALUE``."""
    options, known = set(options), option_strings(parser)
    out: list[str] = []
    i = 0
    while i < len(argv):
        arg = argv[i]
        if arg == "--":  # what follows is positional: leave it as it is
            out.extend(argv[i:])
            break
        value = argv[i + 1] if i + 1 < len(argv) else None
        if (
            arg in options
            and value is not None
            and value.startswith("-")
            and value.split("=", 1)[0] not in known
        ):
            out.append(f"{arg}={value}")
            i += 2
            continue
        out.append(arg)
        i += 1
    return out


def parse_args(
    parser: argparse.ArgumentParser,
    argv: Iterable[str] | None = None,
    options: Iterable[str] = ("--token",),
) -> argparse.Namespace:
    """``parser.parse_args`` of ``argv`` (None: the command line), dash values of ``options``
    glued first (:func:`glue_dash_values`)."""
    argv = sys.argv[1:] if argv is None else list(argv)
    return parser.parse_args(glue_dash_values(argv, options, parser))
