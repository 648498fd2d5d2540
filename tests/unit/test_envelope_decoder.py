"""The workers' shared decoder: one envelope per Kafka value, whichever projection asks."""

from __future__ import annotations

import orjson

from infrastructure.workers import EnvelopeDecoder
from projections.envelope import Envelope


def value(notification_id: int) -> bytes:
    return orjson.dumps(
        {
            "notification_id": notification_id,
            "aggregate_type": "account",
            "aggregate_id": "5b4f0a8e-0000-4000-8000-000000000000",
            "version": notification_id,
            "event_type": "Deposited",
            "timestamp": "2026-11-28T05:45:15.351178Z",
            "actor": {"subject": "ada", "role": "teller"},
            "correlation_id": "c",
            "transaction_id": None,
            "payload": {"amount_minor": 100, "currency": "GBP"},
            "hash": "0" * 64,
        }
    )


def test_equal_values_give_the_one_envelope_that_from_json_gives() -> None:
    decode = EnvelopeDecoder()
    first = decode(value(7))
    assert first == Envelope.from_json(orjson.loads(value(7)))
    assert decode(bytes(value(7))) is first  # another consumer's copy of the same record


def test_the_oldest_are_forgotten_past_the_bound() -> None:
    decode = EnvelopeDecoder(size_max=2)
    one = decode(value(1))
    decode(value(2))
    decode(value(3))
    assert decode(value(1)) is not one
    assert decode(value(1)) == one
