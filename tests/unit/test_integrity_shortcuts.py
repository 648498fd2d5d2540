"""The chain's shortcuts give the definitions' answers.

Consumers check a message's time is in the chain's text without parsing and formatting it
again, and every MAC starts from its key's HMAC made once. Both are checked here against
the plain definitions on inputs Hypothesis draws: texts near the canonical form and far
from it, moments of every year, and keys used in turn.
"""

from __future__ import annotations

import hashlib
import hmac
from datetime import UTC, datetime, timedelta, timezone

from hypothesis import given
from hypothesis import strategies as st

from domain.integrity import (
    alert_mac,
    event_mac,
    format_timestamp,
    is_canonical_timestamp,
    relay_mac,
)


def _by_definition(text: str) -> bool:
    """What consumers checked before: parse the text, format the moment, compare."""
    try:
        moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return False
    return moment.tzinfo is not None and format_timestamp(moment) == text


MOMENTS = st.datetimes(
    min_value=datetime(1, 1, 1), max_value=datetime(9999, 12, 30), timezones=st.just(UTC)
)
CANONICAL = MOMENTS.map(format_timestamp)


@st.composite
def _near_canonical(draw: st.DrawFn) -> str:
    """A canonical text with one character changed, dropped or added."""
    text = draw(CANONICAL)
    at = draw(st.integers(0, len(text)))
    change = draw(st.sampled_from(["replace", "drop", "add"]))
    char = draw(st.sampled_from("0123456789-:.TZ +z"))
    if change == "replace" and at < len(text):
        return text[:at] + char + text[at + 1 :]
    if change == "drop" and at < len(text):
        return text[:at] + text[at + 1 :]
    return text[:at] + char + text[at:]


OFFSETS = st.timedeltas(min_value=timedelta(hours=-23), max_value=timedelta(hours=23))


@given(
    st.one_of(
        CANONICAL,
        _near_canonical(),
        st.builds(lambda m, o: m.astimezone(timezone(o)).isoformat(), MOMENTS, OFFSETS),
        MOMENTS.map(lambda m: m.isoformat()),
        st.text(max_size=40),
    )
)
def test_a_canonical_time_is_told_as_the_definition_tells_it(text: str) -> None:
    assert is_canonical_timestamp(text) == _by_definition(text)


def test_the_shortcut_refuses_a_time_in_the_form_that_does_not_exist() -> None:
    for text in ("2026-02-30T10:00:00.000000Z", "2026-13-01T00:00:00.000000Z"):
        assert not is_canonical_timestamp(text)
    assert is_canonical_timestamp("2024-02-29T23:59:59.999999Z")
    assert not is_canonical_timestamp("0999-01-01T00:00:00.000000Z")  # written as 999-...
    assert not is_canonical_timestamp("2026-01-01T00:00:00.00000\u0663Z")  # not an ASCII digit


KEYS = st.lists(st.binary(min_size=1, max_size=80), min_size=1, max_size=4)
HASHES = st.text(alphabet="0123456789abcdef", min_size=0, max_size=64)


def _reference(key: bytes, message: bytes) -> str:
    return hmac.new(key, message, hashlib.sha256).hexdigest()


@given(KEYS, st.lists(st.tuples(st.integers(0, 3), HASHES, st.integers(0, 2**63)), max_size=8))
def test_each_mac_is_the_hmac_of_its_key_whatever_keys_came_before(
    keys: list[bytes], uses: list[tuple[int, str, int]]
) -> None:
    for index, event_hash, notification_id in uses:
        key = keys[index % len(keys)]
        assert event_mac(key, event_hash) == _reference(key, event_hash.encode())
        assert relay_mac(key, notification_id, event_hash) == _reference(
            key, f"{notification_id}:{event_hash}".encode()
        )
        assert alert_mac(key, event_hash) == _reference(key, f"alert:{event_hash}".encode())
