"""Aggregates whose events form a hash chain (the API contract): accounts, cases, watchlist.

Every event carries who (actor), why (transaction and correlation ids), when, and the
SHA-256 link to the event before it, sealed with a MAC. Commands check, then trigger;
`_trigger` computes the seal before the event exists, so events only assign.
"""

from __future__ import annotations

from dataclasses import field
from typing import Any, ClassVar, Self
from uuid import UUID

from eventsourcing.domain import Aggregate

from domain.integrity import GENESIS_HASH, Stamp, chain_hash, chain_record, event_mac


class ChainedAggregate(Aggregate):
    last_hash: str

    class Event(Aggregate.Event):
        PAYLOAD: ClassVar[tuple[str, ...]] = ()

        transaction_id: str | None
        actor: dict[str, str]
        correlation_id: str
        previous_hash: str
        hash: str
        mac: str
        # The key that made `mac` (events written before keys rotated have none: the key
        # called `default`). Outside the hash record, as the mac itself.
        mac_kid: str | None = field(default=None, kw_only=True)

        def payload(self) -> dict[str, Any]:
            return {name: getattr(self, name) for name in self.PAYLOAD}

        def chain_record(self) -> dict[str, Any]:
            return chain_record(
                aggregate_id=str(self.originator_id),
                version=self.originator_version,
                event_type=type(self).__name__,
                timestamp=self.timestamp,
                transaction_id=self.transaction_id,
                actor=self.actor,
                correlation_id=self.correlation_id,
                payload=self.payload(),
                previous_hash=self.previous_hash,
            )

        def apply(self, aggregate: Any) -> None:
            aggregate.last_hash = self.hash

    @classmethod
    def _start(
        cls,
        event_class: type[ChainedAggregate.Event],
        aggregate_id: UUID,
        fields: dict[str, Any],
        stamp: Stamp,
    ) -> Self:
        """Create the aggregate with its first, genesis-linked event."""
        sealed = seal(event_class, aggregate_id, 1, GENESIS_HASH, fields, stamp)
        # The first event class is also an `Aggregate.Created`; mypy cannot see both.
        created: Any = event_class
        return cls._create(created, id=aggregate_id, **fields, **sealed)

    def _trigger(
        self, event_class: type[ChainedAggregate.Event], stamp: Stamp, **fields: Any
    ) -> None:
        sealed = seal(event_class, self.id, self.version + 1, self.last_hash, fields, stamp)
        self.trigger_event(event_class, **fields, **sealed)


def seal(
    event_class: type[ChainedAggregate.Event],
    aggregate_id: UUID,
    version: int,
    previous_hash: str,
    fields: dict[str, Any],
    stamp: Stamp,
) -> dict[str, Any]:
    """The event's metadata and its link in the chain, computed before the event exists."""
    actor = stamp.actor.as_dict()
    record = chain_record(
        aggregate_id=str(aggregate_id),
        version=version,
        event_type=event_class.__name__,
        timestamp=stamp.timestamp,
        transaction_id=stamp.transaction_id,
        actor=actor,
        correlation_id=stamp.correlation_id,
        payload={name: fields[name] for name in event_class.PAYLOAD},
        previous_hash=previous_hash,
    )
    event_hash = chain_hash(record)
    return {
        "timestamp": stamp.timestamp,
        "transaction_id": stamp.transaction_id,
        "actor": actor,
        "correlation_id": stamp.correlation_id,
        "previous_hash": previous_hash,
        "hash": event_hash,
        "mac": event_mac(stamp.mac_key, event_hash),
        "mac_kid": stamp.mac_kid,
    }
