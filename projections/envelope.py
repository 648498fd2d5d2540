"""The event envelope as projections see it: parsed once from the Kafka value."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any
from uuid import UUID


@dataclass(frozen=True, slots=True)
class Envelope:
    notification_id: int
    aggregate_type: str
    aggregate_id: UUID
    version: int
    event_type: str
    timestamp: datetime
    actor: dict[str, str]
    correlation_id: str | None
    transaction_id: str | None
    payload: dict[str, Any]
    hash: str | None = None

    @classmethod
    def from_json(cls, value: dict[str, Any]) -> Envelope:
        return cls(
            notification_id=int(value["notification_id"]),
            aggregate_type=value["aggregate_type"],
            aggregate_id=UUID(value["aggregate_id"]),
            version=int(value["version"]),
            event_type=value["event_type"],
            timestamp=datetime.fromisoformat(value["timestamp"].replace("Z", "+00:00")),
            actor=value["actor"],
            correlation_id=value.get("correlation_id"),
            transaction_id=value.get("transaction_id"),
            payload=value["payload"],
            hash=value.get("hash"),
        )

    @property
    def is_account_event(self) -> bool:
        return self.aggregate_type == "account"
