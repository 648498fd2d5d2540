"""orjson writes the stored events' JSON byte for byte as the library's transcoder does,
and leaves to the library whatever it would write otherwise."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal
from enum import Enum
from typing import Any
from uuid import UUID

import pytest
from eventsourcing.persistence import (
    DatetimeAsISO,
    DecimalAsStr,
    JSONTranscoder,
    TranscodingNotRegisteredError,
    UUIDAsHex,
)
from hypothesis import given
from hypothesis import strategies as st

from infrastructure.eventstore.transcoder import OrjsonTranscoder


def with_transcodings(transcoder: JSONTranscoder) -> JSONTranscoder:
    for transcoding in (UUIDAsHex(), DecimalAsStr(), DatetimeAsISO()):  # the library's own
        transcoder.register(transcoding)
    return transcoder


LIBRARY = with_transcodings(JSONTranscoder())
ORJSON = with_transcodings(OrjsonTranscoder())

times = st.datetimes(
    timezones=st.sampled_from([UTC, timezone(timedelta(hours=5, minutes=30))]) | st.none()
)
scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.text()
    | st.floats(allow_nan=True)
    | st.uuids()
    | st.decimals(allow_nan=False, allow_infinity=False)
    | times
)
values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
    max_leaves=12,
)
states = st.dictionaries(st.text(), values, max_size=10)


@given(states)
def test_orjson_writes_the_librarys_bytes(state: dict[str, Any]) -> None:
    try:
        expected = LIBRARY.encode(state)
    except UnicodeEncodeError:  # a lone surrogate: the library cannot write it either
        with pytest.raises(UnicodeEncodeError):
            ORJSON.encode(state)
        return
    assert ORJSON.encode(state) == expected
    assert ORJSON.decode(expected) == LIBRARY.decode(expected)


def test_a_stored_event_state_is_written_by_orjson_and_reads_back() -> None:
    state = {
        "timestamp": datetime(2026, 3, 1, 9, 0, 0, 5, tzinfo=UTC),
        "amount_minor": 1234,
        "reference": "Zoë's “invoice” \\ 7",
        "actor": {"subject": "alice", "role": "teller"},
        "previous_hash": "0" * 64,
    }
    encoded = ORJSON.encode(state)
    assert encoded == LIBRARY.encode(state)
    assert LIBRARY.decode(encoded) == state


def test_types_orjson_would_write_its_own_way_go_to_the_library() -> None:
    class Colour(Enum):
        RED = "red"

    for state in ({"id": UUID(int=7)}, {"x": 1e16}, {"n": [Decimal("1.10")]}, {"big": 2**64}):
        assert ORJSON.encode(state) == LIBRARY.encode(state)
    with pytest.raises(TranscodingNotRegisteredError):
        ORJSON.encode({"colour": Colour.RED})  # the library refuses it; orjson would not
