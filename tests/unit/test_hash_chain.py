"""The hash chain in the API contract's exact canonical form, with golden vectors an outside
auditor can recompute with nothing but SHA-256 and JSON."""

from __future__ import annotations

import hashlib
import hmac
from datetime import UTC, datetime, timedelta, timezone
from uuid import UUID

from hypothesis import given
from hypothesis import strategies as st

from domain.account import Account
from domain.integrity import (
    GENESIS_HASH,
    Actor,
    Stamp,
    canonical,
    chain_hash,
    event_mac,
    format_timestamp,
    mac_matches,
)
from domain.money import Money
from tests.ceilings import BALANCE_MAX_MINOR, OVERDRAFT_MAX_MINOR

ACCOUNT_ID = UUID("6f1c2a0e-8a4b-4f5e-9a51-2f8d1c3b7e90")
MAC_KEY = b"test-mac-key"

# Golden vectors. These literals are the contract: changing them breaks every
# auditor's tooling, so a change here needs a reason in the release notes.
OPENED_CANONICAL = (
    '{"actor":{"role":"teller","subject":"alice"},'
    '"aggregate_id":"6f1c2a0e-8a4b-4f5e-9a51-2f8d1c3b7e90","correlation_id":"req-41",'
    '"event_type":"AccountOpened","payload":{"branch":"001","currency":"GBP",'
    '"overdraft_limit_minor":50000,"owner":"Zoë Åberg"},'
    '"previous_hash":"0000000000000000000000000000000000000000000000000000000000000000",'
    '"timestamp":"2026-03-01T09:00:00.000000Z","transaction_id":null,"version":1}'
)
OPENED_HASH = "06421eb3451ff5ccd6420b6afb687937d589cda910061a4657ad8c9b4f7fc082"
OPENED_MAC = "77a891cf65607e11060111bfee6ed9f29e83a279cdf8127ef5655a520323b26c"
DEPOSITED_CANONICAL = (
    '{"actor":{"role":"teller","subject":"alice"},'
    '"aggregate_id":"6f1c2a0e-8a4b-4f5e-9a51-2f8d1c3b7e90","correlation_id":"req-42",'
    '"event_type":"Deposited","payload":{"amount_minor":125000,"balance_after_minor":125000,'
    '"channel":"cash","currency":"GBP","reference":"Café rent"},'
    '"previous_hash":"06421eb3451ff5ccd6420b6afb687937d589cda910061a4657ad8c9b4f7fc082",'
    '"timestamp":"2026-03-01T09:30:00.123456Z",'
    '"transaction_id":"2b7e1f3c-4d5a-4e6b-8c9d-0e1f2a3b4c5d","version":2}'
)
DEPOSITED_HASH = "35f110dcd1b4cd82c43fedbcaefe9584b2d49a7bc562c8265205ad4c46b3976b"
DEPOSITED_MAC = "09858737c2cb606142c6364fac9255e9861d341ff3f2de30d436fc0988943260"


def _golden_account() -> Account:
    opened = Stamp(
        Actor("alice", "teller"),
        datetime(2026, 3, 1, 9, 0, tzinfo=UTC),
        "req-41",
        None,
        MAC_KEY,
    )
    account = Account.open(
        ACCOUNT_ID,
        "Zoë Åberg",
        "001",
        "GBP",
        50_000,
        opened,
        overdraft_max_minor=OVERDRAFT_MAX_MINOR,
    )
    deposited = Stamp(
        Actor("alice", "teller"),
        datetime(2026, 3, 1, 9, 30, 0, 123456, tzinfo=UTC),
        "req-42",
        "2b7e1f3c-4d5a-4e6b-8c9d-0e1f2a3b4c5d",
        MAC_KEY,
    )
    account.deposit(
        Money(125_000, "GBP"), "cash", "Café rent", deposited, balance_max_minor=BALANCE_MAX_MINOR
    )
    return account


def test_golden_vectors_are_plain_sha256_of_the_canonical_json() -> None:
    assert hashlib.sha256(OPENED_CANONICAL.encode()).hexdigest() == OPENED_HASH
    assert hashlib.sha256(DEPOSITED_CANONICAL.encode()).hexdigest() == DEPOSITED_HASH
    expected_mac = hmac.new(MAC_KEY, DEPOSITED_HASH.encode(), hashlib.sha256).hexdigest()
    assert expected_mac == DEPOSITED_MAC


def test_account_events_carry_the_golden_hashes_and_macs() -> None:
    opened, deposited = _golden_account().collect_events()
    assert canonical(opened.chain_record()).decode() == OPENED_CANONICAL
    assert (opened.hash, opened.mac, opened.previous_hash) == (
        OPENED_HASH,
        OPENED_MAC,
        GENESIS_HASH,
    )
    assert canonical(deposited.chain_record()).decode() == DEPOSITED_CANONICAL
    assert (deposited.hash, deposited.mac) == (DEPOSITED_HASH, DEPOSITED_MAC)
    assert deposited.previous_hash == opened.hash


def test_every_event_hash_is_recomputable_from_its_own_fields() -> None:
    for event in _golden_account().collect_events():
        assert chain_hash(event.chain_record()) == event.hash
        assert mac_matches(MAC_KEY, event.hash, event.mac)


def test_a_changed_field_breaks_the_hash() -> None:
    _, deposited = _golden_account().collect_events()
    record = deposited.chain_record()
    record["payload"]["amount_minor"] += 1
    assert chain_hash(record) != deposited.hash


def test_a_mac_made_with_another_key_does_not_verify() -> None:
    _, deposited = _golden_account().collect_events()
    assert not mac_matches(b"another-key", deposited.hash, deposited.mac)
    assert event_mac(MAC_KEY, deposited.hash) == deposited.mac


def test_timestamps_are_utc_with_microseconds_and_z() -> None:
    plus_two = timezone(timedelta(hours=2))
    moment = datetime(2026, 3, 1, 11, 0, 0, 5, tzinfo=plus_two)
    assert format_timestamp(moment) == "2026-03-01T09:00:00.000005Z"


@given(
    moment=st.datetimes(
        min_value=datetime(1, 1, 2),
        max_value=datetime(9999, 12, 30),
        # Fixed offsets (no time zone database: a unit test reads no file).
        timezones=st.builds(
            timezone, st.timedeltas(min_value=-timedelta(hours=23), max_value=timedelta(hours=23))
        ),
    )
)
def test_the_timestamp_text_is_the_strftime_definition_for_any_moment(moment: datetime) -> None:
    expected = moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    assert format_timestamp(moment) == expected
    # Asked again at once (the last text is remembered), and after another moment.
    assert format_timestamp(moment) == expected
    later = moment + timedelta(microseconds=1) if moment.year < 9999 else moment
    equal_but_other = moment.replace()  # equal, not the same object
    assert format_timestamp(later) == later.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    assert format_timestamp(equal_but_other) == expected
    assert format_timestamp(moment) == expected


def test_canonical_form_keeps_non_ascii_as_utf8() -> None:
    assert canonical({"b": "é", "a": 1}) == '{"a":1,"b":"é"}'.encode()
