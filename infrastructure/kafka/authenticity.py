"""Whether a message on Vigil's topics is one Vigil published: consumers trust the broker
with delivery, never with content.

A ledger event message carries the event's `hash`, its `mac` (HMAC of the hash with the
audit MAC key, written with the event) and `relay_mac` (HMAC of
`"{notification_id}:{hash}"`, added by the relay). The consumer recomputes the hash from
the fields it will apply, so an edited amount, a zeroed hash or a genuine event re-sent
under another notification id all fail. An alert message carries `mac` over the sha256
of its canonical form (without `mac`).

Cost per message: one canonical encoding, one SHA-256 and two HMAC-SHA256 of 64 bytes
(a few microseconds, next to the projection's milliseconds per batch).
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Mapping
from typing import Any, Final

from domain.integrity import (
    DEFAULT_MAC_KID,
    alert_mac,
    canonical,
    chain_hash,
    chain_record,
    event_mac,
    is_canonical_timestamp,
    relay_mac,
)

HASH_CHARS: Final = 64


class Unauthenticated(ValueError):
    """A message that Vigil did not publish, or that changed on the way."""


def check_event_message(value: Mapping[str, Any], keys: Mapping[str, bytes]) -> None:
    """Raise Unauthenticated unless the event message's hash, `mac` and `relay_mac` hold
    under the key its `mac_kid` names (`keys`: kid -> MAC key, retired ones included)."""
    claimed = value.get("hash")
    mac = value.get("mac")
    seal = value.get("relay_mac")
    notification_id = value.get("notification_id")
    if not (isinstance(claimed, str) and isinstance(mac, str) and isinstance(seal, str)):
        raise Unauthenticated("the message lacks its hash, mac or relay_mac")
    if type(notification_id) is not int:
        raise Unauthenticated("the message's notification id is not an integer")
    timestamp, version = value.get("timestamp"), value.get("version")
    actor, payload = value.get("actor"), value.get("payload")
    if not isinstance(timestamp, str) or type(version) is not int:
        raise Unauthenticated("the message's timestamp or version is of the wrong type")
    if not isinstance(actor, dict) or not isinstance(payload, dict):
        raise Unauthenticated("the message's actor or payload is not an object")
    if not is_canonical_timestamp(timestamp):
        raise Unauthenticated("the message's timestamp is not in the chain's form")
    record = chain_record(
        aggregate_id=str(value.get("aggregate_id")),
        version=version,
        event_type=str(value.get("event_type")),
        timestamp=timestamp,
        transaction_id=value.get("transaction_id"),
        actor=actor,
        correlation_id=value.get("correlation_id"),
        payload=payload,
        previous_hash=str(value.get("previous_hash")),
    )
    recomputed = chain_hash(record)
    if not hmac.compare_digest(recomputed, claimed):
        raise Unauthenticated("the message's fields do not give its hash")
    key = keys.get(str(value.get("mac_kid") or DEFAULT_MAC_KID))
    if key is None or not hmac.compare_digest(event_mac(key, recomputed), mac):
        raise Unauthenticated("the message's mac does not match")
    if not hmac.compare_digest(relay_mac(key, notification_id, recomputed), seal):
        raise Unauthenticated("the message's relay_mac does not match its notification id")


def alert_hash(alert: Mapping[str, Any]) -> str:
    body = {name: field for name, field in alert.items() if name not in ("mac", "mac_kid")}
    return hashlib.sha256(canonical(body)).hexdigest()


def seal_alert(alert: Mapping[str, Any], key: bytes, kid: str = DEFAULT_MAC_KID) -> dict[str, Any]:
    """The alert as the alerts relay publishes it: with its `mac` and the key's id."""
    return {**alert, "mac": alert_mac(key, alert_hash(alert)), "mac_kid": kid}


def check_alert_message(alert: Mapping[str, Any], keys: Mapping[str, bytes]) -> None:
    mac = alert.get("mac")
    if not isinstance(mac, str):
        raise Unauthenticated("the alert message has no mac")
    key = keys.get(str(alert.get("mac_kid") or DEFAULT_MAC_KID))
    if key is None or not hmac.compare_digest(alert_mac(key, alert_hash(alert)), mac):
        raise Unauthenticated("the alert message's mac does not match")
