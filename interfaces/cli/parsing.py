"""How `vigil` reads its command line: one-line errors with exit 2, and time ranges."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from datetime import datetime
from typing import NoReturn

from interfaces.api.http.instants import RANGE_RULE, within_range

TIMESTAMP_EXAMPLE = "2026-11-01T00:00:00Z"


def _timestamp(text: str) -> datetime:
    try:
        moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not an ISO 8601 timestamp (expected e.g. {TIMESTAMP_EXAMPLE})"
        ) from None
    if moment.tzinfo is None:
        raise argparse.ArgumentTypeError(f"{text!r} needs a time zone (e.g. a trailing Z)")
    if not within_range(moment):
        raise argparse.ArgumentTypeError(f"{text!r} {RANGE_RULE}")
    return moment


def add_range(parser: argparse.ArgumentParser, *, required: bool = False) -> None:
    parser.add_argument(
        "--from",
        dest="since",
        type=_timestamp,
        required=required,
        default=None,
        metavar="TIME",
        help=f"ISO 8601 timestamp with a time zone, e.g. {TIMESTAMP_EXAMPLE} (inclusive)",
    )
    parser.add_argument(
        "--to",
        dest="until",
        type=_timestamp,
        required=required,
        default=None,
        metavar="TIME",
        help=f"ISO 8601 timestamp with a time zone, e.g. {TIMESTAMP_EXAMPLE} (exclusive)",
    )


class UsageError(Exception):
    """A mistake on the command line: one line on stderr, exit 2, as argparse's own."""


class Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        # argparse prints the whole usage first; one line says what is wrong and where to look.
        self.exit(2, f"{self.prog}: error: {message} (see `{self.prog} --help`)\n")


def one_line(error: Exception) -> str:
    # pydantic's messages span lines; the terminal gets one.
    return " ".join(str(error).split())


def bounded_int(low: int, high: int) -> Callable[[str], int]:
    """An argparse type: a whole number from `low` to `high`, or a one-line error."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f"{value} is not between {low} and {high}")
        return value

    return parse
