"""The event envelope clients see on Kafka (CONTRACT.md), built from a stored event."""

from __future__ import annotations

from typing import Any

from domain.account import Account
from domain.integrity import format_timestamp

AGGREGATE_TYPES: dict[type[Any], str] = {Account.Event: "account"}


def aggregate_type_of(event: object) -> str:
    for event_base, name in AGGREGATE_TYPES.items():
        if isinstance(event, event_base):
            return name
    raise ValueError(f"no aggregate type for {type(event).__qualname__}")


def envelope(notification_id: int, event: Account.Event) -> dict[str, Any]:
    aggregate_type = aggregate_type_of(event)
    aggregate_id = str(event.originator_id)
    return {
        "notification_id": notification_id,
        "aggregate_type": aggregate_type,
        "aggregate_id": aggregate_id,
        "account_id": aggregate_id if aggregate_type == "account" else None,
        "version": event.originator_version,
        "event_type": type(event).__name__,
        "timestamp": format_timestamp(event.timestamp),
        "actor": event.actor,
        "correlation_id": event.correlation_id,
        "transaction_id": event.transaction_id,
        "payload": event.payload(),
        "hash": event.hash,
        "previous_hash": event.previous_hash,
        "mac": event.mac,
    }
