"""The per-aggregate hash chain, in exactly the contract's canonical form.

An outside auditor recomputes `hash` from the stored fields with nothing but
SHA-256 and JSON; `mac` adds a key the database does not hold, so an event
forged with database access alone fails verification.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Final

GENESIS_HASH = "0" * 64
# The kid of events sealed before keys had ids, and of the one key VIGIL_AUDIT_MAC_KEY gives.
DEFAULT_MAC_KID: Final = "default"


@dataclass(frozen=True, slots=True)
class Actor:
    subject: str
    role: str

    def as_dict(self) -> dict[str, str]:
        return {"subject": self.subject, "role": self.role}


# The role of Vigil's own actors, which no token may claim, and the one actor that has it
# (the API contract): the case opener opens every alert's case as `system:rules`.
SYSTEM_ROLE: Final = "system"
SYSTEM_ACTOR: Final = Actor("system:rules", SYSTEM_ROLE)


@dataclass(frozen=True, slots=True)
class Stamp:
    """Who, when and why, given to every command: the domain has no clock of its own."""

    actor: Actor
    timestamp: datetime
    correlation_id: str
    transaction_id: str | None = None
    mac_key: bytes = field(default=b"", repr=False)
    mac_kid: str = DEFAULT_MAC_KID

    def __post_init__(self) -> None:
        assert self.timestamp.tzinfo is not None, "event times are timezone-aware UTC"


# The last moment formatted and its text: the events of one command share their moment
# (both sides of a transfer, and each event's index row), so it is asked for again at once.
# One tuple, replaced whole: a reader in another thread sees a pair that belongs together.
_last_formatted: list[tuple[datetime | None, str]] = [(None, "")]


def format_timestamp(moment: datetime) -> str:
    """`YYYY-MM-DDTHH:MM:SS.ffffffZ`, always UTC, always microseconds."""
    last, text = _last_formatted[0]
    if moment is last:  # the same object: immutable, so the same text
        return text
    utc = moment if moment.tzinfo is UTC else moment.astimezone(UTC)
    # The text of strftime("%Y-%m-%dT%H:%M:%S.%fZ") (its %Y unpadded too), in a third of
    # its time: every event's hash has one, and every check of it.
    text = (
        f"{utc.year}-{utc.month:02d}-{utc.day:02d}T{utc.hour:02d}:{utc.minute:02d}:"
        f"{utc.second:02d}.{utc.microsecond:06d}Z"
    )
    _last_formatted[0] = (moment, text)
    return text


CanonicalEncoder = Callable[[dict[str, Any]], bytes]


def stdlib_canonical(record: dict[str, Any]) -> bytes:
    """The definition: sorted keys, no spaces, UTF-8, non-ASCII unescaped."""
    return json.dumps(record, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


# Records that tell encoders apart: nesting, key order, escapes, non-ASCII, big integers.
_AGREEMENT_SAMPLES: tuple[dict[str, Any], ...] = (
    {"b": 1, "a": {"z": None, "y": [True, False]}, "é": "naïve ✓ 😀", "A": ""},
    {"q": 'quote " backslash \\ slash /', "c": "\x00\x01\x1f\x7f\n\r\t\b\f", "u": "\u2028\u2029"},
    {"n": -(2**63), "m": 2**63 - 1, "z": 0, "k": {"nested": {"deeper": "x"}}},
)
# The encoder in use: the definition unless a faster one that agrees was installed.
_ENCODER: list[CanonicalEncoder] = [stdlib_canonical]


def canonical(record: dict[str, Any]) -> bytes:
    return _ENCODER[0](record)


def use_canonical_encoder(encoder: CanonicalEncoder) -> None:
    """Install a faster encoder of the very same bytes (infrastructure's, on orjson).
    Refused unless it agrees with the definition on records chosen to tell them apart."""
    for sample in _AGREEMENT_SAMPLES:
        if encoder(sample) != stdlib_canonical(sample):
            raise ValueError(f"{encoder!r} does not write the canonical form of {sample!r}")
    _ENCODER[0] = encoder


def chain_record(
    *,
    aggregate_id: str,
    version: int,
    event_type: str,
    timestamp: datetime | str,
    transaction_id: str | None,
    actor: dict[str, str],
    correlation_id: str | None,
    payload: dict[str, Any],
    previous_hash: str,
) -> dict[str, Any]:
    """The fields the hash covers; `timestamp` a moment, or its canonical text already
    (`format_timestamp`'s, checked by `is_canonical_timestamp`)."""
    return {
        "aggregate_id": aggregate_id,
        "version": version,
        "event_type": event_type,
        "timestamp": timestamp if isinstance(timestamp, str) else format_timestamp(timestamp),
        "transaction_id": transaction_id,
        "actor": actor,
        "correlation_id": correlation_id,
        "payload": payload,
        "previous_hash": previous_hash,
    }


# `format_timestamp`'s text of a year from 1000 on: the form, without the parse that checks
# the date and time exist.
_CANONICAL_TIMESTAMP: Final = re.compile(
    r"[1-9]\d{3}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z",
    re.ASCII,  # ASCII digits only
)


def is_canonical_timestamp(text: str) -> bool:
    """Whether `text` is `format_timestamp`'s text of some moment: the same answer as
    `format_timestamp(parse(text)) == text`, mostly without the parse and the format."""
    if _CANONICAL_TIMESTAMP.fullmatch(text) is not None:
        try:
            datetime.fromisoformat(text[:-1] + "+00:00")  # a day and time that exist
        except ValueError:
            return False
        return True
    try:
        moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return False
    return moment.tzinfo is not None and format_timestamp(moment) == text


def chain_hash(record: dict[str, Any]) -> str:
    return hashlib.sha256(canonical(record)).hexdigest()


# Each key's HMAC with the key already absorbed, copied for every MAC: a third less time
# than starting from the key each time (thousands a second in the relay and the workers).
# Keyed by the key bytes, which come from configuration: a handful at most.
_KEYED: dict[bytes, hmac.HMAC] = {}


def _hmac_hex(key: bytes, message: bytes) -> str:
    keyed = _KEYED.get(key)
    if keyed is None:
        keyed = _KEYED[key] = hmac.new(key, digestmod=hashlib.sha256)
    mac = keyed.copy()
    mac.update(message)
    return mac.hexdigest()


def event_mac(key: bytes, event_hash: str) -> str:
    return _hmac_hex(key, event_hash.encode())


def mac_matches(key: bytes, event_hash: str, mac: str) -> bool:
    return hmac.compare_digest(event_mac(key, event_hash), mac)


def relay_mac(key: bytes, notification_id: int, event_hash: str) -> str:
    """What ties a published event to its place in the log: `mac` covers the event's hash
    but not its notification id, so a genuine message sent again under another id would
    still pass without this."""
    return _hmac_hex(key, f"{notification_id}:{event_hash}".encode())


def alert_mac(key: bytes, alert_hash: str) -> str:
    """An alert message's seal: the alerts relay signs the sha256 of its canonical form."""
    return _hmac_hex(key, f"alert:{alert_hash}".encode())
