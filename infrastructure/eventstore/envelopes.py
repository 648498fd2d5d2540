"""Stored events as the projections receive them: decrypted, decompressed, decoded
into envelopes, one at a time or the whole store a page at a time."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from datetime import datetime
from typing import Any, Final

import orjson
import structlog
from eventsourcing.persistence import StoredEvent
from eventsourcing.utils import resolve_topic

from application.envelope import envelope, envelope_of
from application.ledger import Ledger
from domain.chained import ChainedAggregate
from infrastructure.logging import describe
from projections.envelope import Envelope

log = structlog.get_logger("vigil.store")

# The store's topics whose events are decoded into envelopes (accounts, cases, watchlist).
ENVELOPE_TOPICS: Final = ("domain.account:", "domain.case:", "domain.watchlist:")


def stored_envelope(ledger: Ledger, notification_id: int, stored: StoredEvent) -> dict[str, Any]:
    """The envelope of a stored event (decrypted, decompressed, decoded). Read from the
    stored JSON without building the event, which is most of the cost where thousands a
    second are read (relay, replays); through the library's mapper when the fast reading
    does not apply (a class version to upcast, a time the library wrote otherwise)."""
    event_class = resolve_topic(stored.topic)
    fields = stored_fields(ledger, stored)
    timestamp = fields.get("timestamp")
    if (
        isinstance(timestamp, dict)
        and timestamp.get("_type_") == DATETIME_TRANSCODING
        and getattr(event_class, "class_version", 1) == 1
        and "class_version" not in fields
        and issubclass(event_class, ChainedAggregate.Event)
    ):
        # KeyError: a field the state lacks, that the event class would give its default.
        with contextlib.suppress(KeyError):
            return envelope_of(
                notification_id,
                event_class,
                stored.originator_id,
                stored.originator_version,
                datetime.fromisoformat(timestamp["_data_"]),
                fields,
            )
    event: Any = ledger.mapper.to_domain_event(stored)
    return envelope(notification_id, event)


# The library's transcoding of datetimes: {"_type_": "datetime_iso", "_data_": isoformat()}.
DATETIME_TRANSCODING: Final = "datetime_iso"


def stored_fields(ledger: Ledger, stored: StoredEvent) -> dict[str, Any]:
    """A stored event's state as the library's mapper reads it (decrypted, decompressed),
    parsed by orjson; values the library transcoded stay as their `_type_`/`_data_` dicts."""
    state = stored.state
    mapper = ledger.mapper
    if mapper.cipher is not None:
        state = mapper.cipher.decrypt(state)
    if mapper.compressor is not None:
        state = mapper.compressor.decompress(state)
    fields = orjson.loads(state)
    if not isinstance(fields, dict):
        raise TypeError(f"a stored state is an object, not {type(fields).__name__}")
    return fields


def envelope_pages(ledger: Ledger, page_events: int) -> Iterator[list[Envelope]]:
    """The whole store, in notification order, a page at a time, as the projections
    receive it: for replays and back-tests that read the store instead of Kafka."""
    position: int | None = None
    while True:
        notifications = ledger.recorder.select_notifications(
            position, page_events, inclusive_of_start=False
        )
        if not notifications:
            return
        page: list[Envelope] = []
        for notification in notifications:
            if not notification.topic.startswith(ENVELOPE_TOPICS):
                continue
            try:
                body = stored_envelope(ledger, notification.id, notification)
            except Exception as error:
                # The relay quarantines such an event and every projection steps over its
                # id; a replay does the same rather than stop on it.
                log.error(
                    "event_undecodable", notification_id=notification.id, error=describe(error)
                )
                continue
            page.append(Envelope.from_json(body))
        if page:
            yield page
        position = notifications[-1].id
