"""The event envelope clients see on Kafka (the API contract), built from a stored event."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any, NamedTuple
from uuid import UUID

from domain.account import Account
from domain.case import AlertCase
from domain.chained import ChainedAggregate
from domain.integrity import DEFAULT_MAC_KID, format_timestamp
from domain.routing import AlertRouting, Suppression
from domain.watchlist import WatchlistEntry

AGGREGATE_TYPES: dict[type[Any], str] = {
    Account.Event: "account",
    AlertCase.Event: "case",
    WatchlistEntry.Event: "watchlist",
    AlertRouting.Event: "routing",
    Suppression.Event: "suppression",
}


def aggregate_type_of(event: object) -> str:
    return aggregate_type_of_class(type(event))


def aggregate_type_of_class(event_class: type) -> str:
    name = _AGGREGATE_TYPE_OF_CLASS.get(event_class)
    if name is None:
        name = next((n for b, n in AGGREGATE_TYPES.items() if issubclass(event_class, b)), None)
        if name is None:
            raise ValueError(f"no aggregate type for {event_class.__qualname__}")
        _AGGREGATE_TYPE_OF_CLASS[event_class] = name
    return name


# Answered once per event class: the isinstance walk showed in the command path's profile.
_AGGREGATE_TYPE_OF_CLASS: dict[type, str] = {}


def envelope(notification_id: int, event: Account.Event) -> dict[str, Any]:
    return envelope_of(
        notification_id,
        type(event),
        event.originator_id,
        event.originator_version,
        event.timestamp,
        vars(event),
    )


def envelope_of(
    notification_id: int,
    event_class: type[ChainedAggregate.Event],
    aggregate_id: UUID | str,
    version: int,
    timestamp: datetime,
    fields: Mapping[str, Any],
) -> dict[str, Any]:
    """The envelope of an event given by its class and fields: from the event itself, or
    from its stored state without building the event (infrastructure/eventstore/envelopes.py)."""
    aggregate_type = aggregate_type_of_class(event_class)
    payload = {name: fields[name] for name in event_class.PAYLOAD}
    return {
        "notification_id": notification_id,
        "aggregate_type": aggregate_type,
        "aggregate_id": str(aggregate_id),
        "account_id": _account_id(aggregate_type, aggregate_id, payload),
        "version": version,
        "event_type": event_class.__name__,
        "timestamp": format_timestamp(timestamp),
        "actor": fields["actor"],
        "correlation_id": fields["correlation_id"],
        "transaction_id": fields["transaction_id"],
        "payload": payload,
        "hash": fields["hash"],
        "previous_hash": fields["previous_hash"],
        "mac": fields["mac"],
        # None before keys had ids: the key called `default`.
        "mac_kid": fields.get("mac_kid") or DEFAULT_MAC_KID,
    }


def _account_id(
    aggregate_type: str, aggregate_id: UUID | str, payload: dict[str, Any]
) -> str | None:
    if aggregate_type == "account":
        return str(aggregate_id)
    # Case and watchlist events name their account in every payload.
    account_id = payload.get("account_id")
    return None if account_id is None else str(account_id)


class IndexRow(NamedTuple):
    """One stored event's row in the event index: what auditors filter by, without
    decoding (or decrypting) the stored event. The notification id comes from the store.
    A tuple (its fields in the index table's column order): one is made for every event
    written, and a tuple is made in half the time of a frozen dataclass."""

    aggregate_id: UUID
    aggregate_type: str
    version: int
    event_type: str
    occurred_at: datetime
    actor_subject: str | None
    actor_role: str | None
    transaction_id: str | None
    correlation_id: str | None


def index_row(event: object) -> IndexRow:
    if not isinstance(event, ChainedAggregate.Event):
        raise ValueError(f"not a chained event: {type(event).__qualname__}")
    actor = event.actor or {}
    return IndexRow(
        aggregate_id=event.originator_id,
        aggregate_type=aggregate_type_of(event),
        version=event.originator_version,
        event_type=type(event).__name__,
        occurred_at=event.timestamp,
        actor_subject=actor.get("subject"),
        actor_role=actor.get("role"),
        transaction_id=event.transaction_id,
        correlation_id=event.correlation_id,
    )
