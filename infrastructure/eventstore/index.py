"""Rebuilding the event index from the store (`vigil audit reindex`).

The index (`infrastructure/eventstore/schema.py`) is written by the recorder in the same
transaction as the events. A store from before it existed, or rows lost, leave it behind:
this fills every missing row from the store, idempotently, safe beside live writers.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

import psycopg
import structlog
from eventsourcing.persistence import StoredEvent
from psycopg.sql import SQL, Identifier

from application.envelope import IndexRow, index_row
from domain.errors import EventUnreadable
from infrastructure.eventstore.ledger import open_ledger
from infrastructure.eventstore.schema import (
    COLUMN_TYPES,
    COLUMNS,
    INDEX_TABLE,
    events_head,
    index_columns,
    index_heads,
    store_names,
)
from infrastructure.postgres.connect import connect

if TYPE_CHECKING:
    from application.ledger import Ledger
    from infrastructure.settings import Settings

log = structlog.get_logger("vigil.event_index")

REINDEX_PAGE_EVENTS = 2_000
PROGRESS_EVERY_S = 2.0


@dataclass(frozen=True)
class ReindexProgress:
    """Where a rebuild of the index is: started, running (every few seconds), finished."""

    stage: Literal["started", "running", "finished"]
    head: int  # the store's last notification id when the rebuild began
    indexed_up_to: int  # the last notification id looked at so far
    events_read: int  # stored events without an index row, so far
    rows_added: int
    elapsed_s: float


def reindex(
    ledger: Ledger,
    conn: psycopg.Connection[Any],
    *,
    page_events: int = REINDEX_PAGE_EVENTS,
    progress: Callable[[ReindexProgress], None] | None = None,
) -> int:
    """Add the index row of every stored event that has none; returns the rows added.

    Streams the store in notification order, one page per transaction, decoding each
    event with the ledger's mapper (so encrypted stores work). Rows already there are
    left alone (the index is append-only too). Safe beside live writers.
    """
    schema, events_table = store_names(ledger)
    head = events_head(conn, schema, events_table)
    insert = SQL(
        "INSERT INTO {index} (notification_id, {columns}) "
        "SELECT * FROM unnest(%s::bigint[], {unnest}) ON CONFLICT DO NOTHING"
    ).format(
        index=Identifier(schema, INDEX_TABLE),
        columns=SQL(", ").join(Identifier(c) for c in COLUMNS),
        unnest=SQL(", ").join(SQL("%s::{}[]").format(SQL(t)) for t in COLUMN_TYPES),
    )
    if progress is not None:
        progress(ReindexProgress("started", head, 0, 0, 0, 0.0))
    started = last_said = time.monotonic()
    read = added = last_id = 0
    for page in _missing_pages(conn, schema, events_table, page_events):
        ids = [notification_id for notification_id, _ in page]
        rows = [_decoded_row(ledger, n, stored) for n, stored in page]
        with conn.transaction():
            cursor = conn.execute(insert, [ids, *index_columns(rows)])
            added += max(cursor.rowcount, 0)
        read += len(page)
        last_id = ids[-1]
        now = time.monotonic()
        if progress is not None and now - last_said >= PROGRESS_EVERY_S:
            last_said = now
            progress(ReindexProgress("running", head, last_id, read, added, now - started))
    if progress is not None:
        elapsed_s = time.monotonic() - started
        progress(ReindexProgress("finished", head, last_id, read, added, elapsed_s))
    return added


def _decoded_row(ledger: Ledger, notification_id: int, stored: StoredEvent) -> IndexRow:
    try:
        return index_row(ledger.mapper.to_domain_event(stored))
    except Exception as error:
        # Not ours (a forged topic, a wrong cipher key): stop and name it, index nothing
        # more. Skipping it would leave a wrong key's whole store silently unindexed.
        raise EventUnreadable.of(
            f"notification id {notification_id} ({stored.topic})",
            error,
            "so it cannot be indexed (rows were added up to the page before it)",
        ) from error


def _missing_pages(
    conn: psycopg.Connection[Any], schema: str, events_table: str, page_events: int
) -> Iterator[list[tuple[int, StoredEvent]]]:
    select = SQL(
        "SELECT e.notification_id, e.originator_id, e.originator_version, e.topic, e.state "
        "FROM {events} e WHERE e.notification_id > %s AND NOT EXISTS "
        "(SELECT 1 FROM {index} i WHERE i.notification_id = e.notification_id) "
        "ORDER BY e.notification_id LIMIT %s"
    ).format(events=Identifier(schema, events_table), index=Identifier(schema, INDEX_TABLE))
    after = 0
    while True:
        rows = conn.execute(select, (after, page_events)).fetchall()
        if not rows:
            return
        yield [
            (int(n), StoredEvent(originator_id=o, originator_version=v, topic=t, state=bytes(s)))
            for n, o, v, t, s in rows
        ]
        after = int(rows[-1][0])


@dataclass(frozen=True)
class IndexRebuild:
    """What `rebuild_index` did: the rows added, and both heads afterwards."""

    rows_added: int
    store_head: int
    index_head: int | None


def rebuild_index(
    settings: Settings, progress: Callable[[ReindexProgress], None] | None = None
) -> IndexRebuild:
    """`vigil audit reindex`: fill the event index from the store, with a ledger and a
    connection of its own."""
    ledger = open_ledger(settings)
    try:
        with connect(settings, "reindex", autocommit=True) as conn:
            added = reindex(ledger, conn, progress=progress)
            store_head, index_head = index_heads(conn, *store_names(ledger))
    finally:
        ledger.close()
    return IndexRebuild(added, store_head, index_head)
