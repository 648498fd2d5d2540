"""The chain hash's canonical JSON: orjson writes exactly the standard library's bytes."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from domain.integrity import canonical, stdlib_canonical, use_canonical_encoder
from infrastructure.canonical import orjson_canonical

scalars = (
    st.none() | st.booleans() | st.integers(min_value=-(2**63), max_value=2**64 - 1) | st.text()
)
values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
    max_leaves=12,
)
records = st.dictionaries(st.text(), values, max_size=8)


@given(records)
def test_orjson_writes_the_canonical_bytes(record: dict[str, Any]) -> None:
    try:
        expected = stdlib_canonical(record)
    except UnicodeEncodeError:  # a lone surrogate: neither encoder can write it
        with pytest.raises((UnicodeEncodeError, TypeError, ValueError)):
            orjson_canonical(record)
        return
    assert orjson_canonical(record) == expected


def test_integers_beyond_64_bits_fall_back_to_the_definition() -> None:
    record = {"big": 2**70, "small": -(2**70)}
    assert orjson_canonical(record) == stdlib_canonical(record)


def test_an_encoder_that_disagrees_with_the_definition_is_refused() -> None:
    def spaced(record: dict[str, Any]) -> bytes:
        return stdlib_canonical(record).replace(b":", b": ")

    with pytest.raises(ValueError, match="canonical form"):
        use_canonical_encoder(spaced)
    assert canonical({"a": 1}) == b'{"a":1}'
