"""Rows as column arrays, for the `INSERT ... SELECT FROM unnest(%b::type[], ...)`
statements that write a whole batch at once."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from operator import attrgetter
from typing import Any


def column_arrays(rows: Sequence[object], names: Iterable[str]) -> list[list[Any]]:
    """One list per attribute name, in the order given, each in the rows' order."""
    return [list(map(attrgetter(name), rows)) for name in names]
