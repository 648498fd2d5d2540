"""The strict JSON reader of request bodies: what it refuses, and that it still reads the
numbers it can hold exactly as the standard library does."""

from __future__ import annotations

import json
import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from domain.errors import ValidationFailed
from interfaces.api.http.json_body import parse_json_bytes


@pytest.mark.parametrize(
    "number",
    ["9" * 4_301, "-" + "9" * 10_000, "1e309", "-1e309", "123.4e999", "1E+400"],
)
def test_a_number_the_interpreter_cannot_hold_is_a_validation_error(number: str) -> None:
    with pytest.raises(ValidationFailed, match="a number too big to read"):
        parse_json_bytes(f'{{"a": [1, {number}]}}'.encode())


@given(st.one_of(st.integers(), st.floats(allow_nan=False, allow_infinity=False)))
def test_numbers_that_fit_are_read_as_the_standard_library_reads_them(
    number: int | float,
) -> None:
    text = json.dumps({"n": number})
    assert parse_json_bytes(text.encode()) == json.loads(text)


def test_the_longest_integer_the_interpreter_converts_is_read() -> None:
    digits = "9" * 4_300
    assert parse_json_bytes(f"[{digits}]".encode()) == [int(digits)]


def test_the_largest_double_is_read_and_stays_finite() -> None:
    (value,) = parse_json_bytes(b"[1.7976931348623157e308]")
    assert math.isfinite(value)
    assert value == 1.7976931348623157e308
