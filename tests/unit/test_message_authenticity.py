"""Which Kafka messages the consumers accept: exactly those whose fields give their hash,
whose `mac` and `relay_mac` hold under the MAC key, and alerts with their `mac`."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest

from domain.integrity import chain_hash, chain_record, event_mac, relay_mac
from infrastructure.kafka.authenticity import (
    Unauthenticated,
    check_alert_message,
    check_event_message,
    seal_alert,
)

KEY = b"k" * 48
OTHER_KEY = b"o" * 48


KEYS = {"default": KEY, "2027": OTHER_KEY}


def _message(key: bytes = KEY, notification_id: int = 7, kid: str = "default") -> dict[str, Any]:
    fields: dict[str, Any] = {
        "aggregate_id": "2b5b3f4e-8a44-4c49-9d61-5d7b1d1c0f00",
        "version": 3,
        "event_type": "Deposited",
        "timestamp": datetime(2026, 6, 1, 9, 0, tzinfo=UTC),
        "transaction_id": "9f0c2f9e-7a2f-4b1e-9d7e-1d7a4b8f9a11",
        "actor": {"subject": "alice", "role": "teller"},
        "correlation_id": "c-1",
        "payload": {"amount_minor": 1000, "currency": "GBP", "balance_after_minor": 1000},
        "previous_hash": "a" * 64,
    }
    record = chain_record(**fields)
    event_hash = chain_hash(record)
    return {
        **record,
        "notification_id": notification_id,
        "aggregate_type": "account",
        "account_id": fields["aggregate_id"],
        "hash": event_hash,
        "mac": event_mac(key, event_hash),
        "mac_kid": kid,
        "relay_mac": relay_mac(key, notification_id, event_hash),
    }


def test_a_message_the_relay_published_is_accepted() -> None:
    check_event_message(_message(), KEYS)


def test_each_message_is_checked_with_the_key_its_mac_kid_names() -> None:
    check_event_message(_message(OTHER_KEY, kid="2027"), KEYS)
    without_kid = _message()
    del without_kid["mac_kid"]  # sealed before keys had ids: the default key
    check_event_message(without_kid, KEYS)
    with pytest.raises(Unauthenticated, match="mac"):
        check_event_message(_message(OTHER_KEY, kid="default"), KEYS)
    with pytest.raises(Unauthenticated, match="mac"):
        check_event_message(_message(OTHER_KEY, kid="2027"), {"default": KEY})


@pytest.mark.parametrize(
    ("change", "words"),
    [
        (
            {"payload": {"amount_minor": 10**12, "currency": "GBP", "balance_after_minor": 1}},
            "hash",
        ),
        ({"hash": "0" * 64}, "hash"),
        ({"version": 4}, "hash"),
        ({"actor": {"subject": "system:rules", "role": "system"}}, "hash"),
        ({"timestamp": "2026-06-01T09:00:00+00:00"}, "form"),
        ({"notification_id": 8}, "relay_mac"),
        ({"relay_mac": "0" * 64}, "relay_mac"),
        ({"mac": "0" * 64}, "mac"),
        ({"mac": None}, "lacks"),
        ({"notification_id": "7"}, "integer"),
        ({"payload": "x"}, "object"),
    ],
)
def test_a_changed_message_is_refused(change: dict[str, Any], words: str) -> None:
    with pytest.raises(Unauthenticated, match=words):
        check_event_message({**_message(), **change}, KEYS)


def test_a_message_with_its_hash_and_mac_recomputed_without_the_key_is_refused() -> None:
    forged = {**_message(), "payload": {"amount_minor": 10**12, "currency": "GBP"}}
    forged["hash"] = chain_hash(chain_record(**{
        name: forged[name] if name != "timestamp" else datetime(2026, 6, 1, 9, 0, tzinfo=UTC)
        for name in ("aggregate_id", "version", "event_type", "timestamp", "transaction_id",
                     "actor", "correlation_id", "payload", "previous_hash")
    }))  # fmt: skip
    forged["mac"] = event_mac(b"guessed", forged["hash"])
    with pytest.raises(Unauthenticated, match="mac"):
        check_event_message(forged, KEYS)


def test_an_alert_sealed_by_the_relay_is_accepted_and_any_change_refused() -> None:
    alert = {"alert_id": "a-1", "rule": "velocity", "account_id": "x", "positions": [1, 2]}
    sealed = seal_alert(alert, KEY)
    check_alert_message(sealed, KEYS)
    check_alert_message(seal_alert(alert, OTHER_KEY, "2027"), KEYS)
    with pytest.raises(Unauthenticated, match="no mac"):
        check_alert_message(alert, KEYS)
    with pytest.raises(Unauthenticated, match="does not match"):
        check_alert_message({**sealed, "rule": "watchlist"}, KEYS)
    with pytest.raises(Unauthenticated, match="does not match"):
        check_alert_message(seal_alert(alert, OTHER_KEY), KEYS)
    with pytest.raises(Unauthenticated, match="does not match"):
        check_alert_message({**sealed, "mac_kid": "2027"}, KEYS)
