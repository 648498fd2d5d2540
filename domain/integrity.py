"""The per-aggregate hash chain, in exactly CONTRACT.md's canonical form.

An outside auditor recomputes `hash` from the stored fields with nothing but
SHA-256 and JSON; `mac` adds a key the database does not hold, so an event
forged with database access alone fails verification.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

GENESIS_HASH = "0" * 64


@dataclass(frozen=True, slots=True)
class Actor:
    subject: str
    role: str

    def as_dict(self) -> dict[str, str]:
        return {"subject": self.subject, "role": self.role}


@dataclass(frozen=True, slots=True)
class Stamp:
    """Who, when and why, given to every command: the domain has no clock of its own."""

    actor: Actor
    timestamp: datetime
    correlation_id: str
    transaction_id: str | None = None
    mac_key: bytes = field(default=b"", repr=False)

    def __post_init__(self) -> None:
        assert self.timestamp.tzinfo is not None, "event times are timezone-aware UTC"


def format_timestamp(moment: datetime) -> str:
    """`YYYY-MM-DDTHH:MM:SS.ffffffZ`, always UTC, always microseconds."""
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def canonical(record: dict[str, Any]) -> bytes:
    return json.dumps(record, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def chain_record(
    *,
    aggregate_id: str,
    version: int,
    event_type: str,
    timestamp: datetime,
    transaction_id: str | None,
    actor: dict[str, str],
    correlation_id: str | None,
    payload: dict[str, Any],
    previous_hash: str,
) -> dict[str, Any]:
    return {
        "aggregate_id": aggregate_id,
        "version": version,
        "event_type": event_type,
        "timestamp": format_timestamp(timestamp),
        "transaction_id": transaction_id,
        "actor": actor,
        "correlation_id": correlation_id,
        "payload": payload,
        "previous_hash": previous_hash,
    }


def chain_hash(record: dict[str, Any]) -> str:
    return hashlib.sha256(canonical(record)).hexdigest()


def event_mac(key: bytes, event_hash: str) -> str:
    return hmac.new(key, event_hash.encode(), hashlib.sha256).hexdigest()


def mac_matches(key: bytes, event_hash: str, mac: str) -> bool:
    return hmac.compare_digest(event_mac(key, event_hash), mac)
