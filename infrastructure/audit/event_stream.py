"""The event store read in notification order for the audit API: one page streamed from a
server-side cursor in one read-only snapshot, fetched a few rows at a time, so a page never
sits whole in memory (the bytes of up to 500 events, decoded and maybe decrypted); and an
account's events in version order.

The cursor is opened, and its first rows fetched, before the caller starts its reply: a
failure to start is still a problem reply (503), never a truncated 200. Positions are plain
notification ids; how a client's cursor carries them is the API's business.
"""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import AsyncGenerator, AsyncIterator, Mapping, Sequence
from typing import Any, Final
from uuid import UUID

import structlog
from eventsourcing.persistence import StoredEvent
from psycopg import AsyncServerCursor, sql
from psycopg.rows import DictRow

from application.ledger import Ledger
from infrastructure.eventstore.envelopes import stored_envelope
from infrastructure.eventstore.schema import EVENTS_TABLE
from infrastructure.logging import describe
from infrastructure.readmodels.readstore import ReadStore

log = structlog.get_logger("vigil.audit")

# Rows per FETCH of a streamed page.
STREAM_FETCH_ROWS: Final = 100
SERVER_CURSOR_NAME: Final = "audit_events"
# Only the filters given: a generic plan of `(%s IS NULL OR ...)` ignores the indexes.
INDEX_CONDITIONS: Final = {
    "from": sql.SQL("i.occurred_at >= %(from)s"),
    "to": sql.SQL("i.occurred_at < %(to)s"),
    "type": sql.SQL("i.event_type = %(type)s"),
    "actor": sql.SQL("i.actor_subject = %(actor)s"),
    # Through the stored events' (originator_id, originator_version) index.
    "account_id": sql.SQL("e.originator_id = %(account_id)s"),
}
INDEX_TABLE: Final = "public.event_index"
INDEX_PRESENT: Final = "SELECT to_regclass(%(index)s) IS NOT NULL AS present"
ACCOUNT_EVENTS: Final = sql.SQL(
    "SELECT notification_id, originator_id, originator_version, topic, state FROM {events} "
    "WHERE originator_id = %(account_id)s AND originator_version > %(after)s "
    "ORDER BY originator_version LIMIT %(limit)s"
).format(events=sql.Identifier(EVENTS_TABLE))


# The aggregate type a stored topic names, known even when the event's state is not.
TOPIC_AGGREGATE_TYPES: Final = (
    ("domain.account:", "account"),
    ("domain.case:", "case"),
    ("domain.watchlist:", "watchlist"),
)


def decoded(ledger: Ledger, row: Mapping[str, Any]) -> dict[str, Any]:
    """A stored-events row as its envelope, decoded (and decrypted) by the ledger's mapper.

    An event this server cannot decode (a type it does not know, state it cannot decrypt
    or parse) is given as its row says it is, every field the row cannot tell null, and
    `unreadable` saying why: an auditor sees where it is and pages past it, where an error
    would hide every event after it (and cut a streamed page short)."""
    notification_id = int(row["notification_id"])
    stored = StoredEvent(
        originator_id=row["originator_id"],
        originator_version=row["originator_version"],
        topic=row["topic"],
        state=bytes(row["state"]),
    )
    try:
        return stored_envelope(ledger, notification_id, stored)
    except Exception as error:  # whatever decoding raises: the event is what is wrong
        reason = describe(error)
        log.warning("audit_event_unreadable", notification_id=notification_id, error=reason)
        return unreadable_item(notification_id, stored, reason)


def unreadable_item(notification_id: int, stored: StoredEvent, reason: str) -> dict[str, Any]:
    """The envelope's keys for an event that cannot be decoded: what its row tells."""
    topic = str(stored.topic)
    aggregate_type = next(
        (name for prefix, name in TOPIC_AGGREGATE_TYPES if topic.startswith(prefix)), None
    )
    aggregate_id = str(uuid.UUID(str(stored.originator_id)))
    return {
        "notification_id": notification_id,
        "aggregate_type": aggregate_type,
        "aggregate_id": aggregate_id,
        "account_id": aggregate_id if aggregate_type == "account" else None,
        "version": int(stored.originator_version),
        # The class the topic names, as the row says (it may name one that does not exist).
        "event_type": (topic.rpartition(".")[2] or None) if aggregate_type else None,
        "timestamp": None,
        "actor": None,
        "correlation_id": None,
        "transaction_id": None,
        "payload": None,
        "hash": None,
        "previous_hash": None,
        "mac": None,
        "mac_kid": None,
        "unreadable": reason,
    }


def store_query(
    indexed: bool, filters: Mapping[str, Any], after: int, limit: int
) -> tuple[sql.Composed, dict[str, Any]]:
    """Events after notification `after`, in notification order, one beyond the page.
    Without the index only `account_id` can filter (the caller refuses the others)."""
    params: dict[str, Any] = {"after": after, "limit": limit + 1}
    events = sql.Identifier(EVENTS_TABLE)
    if not indexed:
        conditions = [sql.SQL("e.notification_id > %(after)s")]
        if filters["account_id"] is not None:
            conditions.append(sql.SQL("e.originator_id = %(account_id)s"))
            params["account_id"] = filters["account_id"]
        source = sql.SQL("{events} e").format(events=events)
        order = sql.SQL("e.notification_id")
    else:
        conditions = [sql.SQL("i.notification_id > %(after)s")]
        for name, condition in INDEX_CONDITIONS.items():
            if filters[name] is not None:
                conditions.append(condition)
                params[name] = filters[name]
        source = sql.SQL(
            "public.event_index i JOIN {events} e ON e.notification_id = i.notification_id"
        ).format(events=events)
        order = sql.SQL("i.notification_id")
    query = sql.SQL(
        "SELECT e.notification_id, e.originator_id, e.originator_version, e.topic, e.state "
        "FROM {source} WHERE {where} ORDER BY {order} LIMIT %(limit)s"
    ).format(source=source, where=sql.SQL(" AND ").join(conditions), order=order)
    return query, params


async def index_present(store: ReadStore) -> bool:
    """Whether the event index exists yet (`vigil audit reindex` builds it)."""
    row = await store.fetch_one(INDEX_PRESENT, {"index": INDEX_TABLE})
    return bool(row and row["present"])


async def account_events(
    store: ReadStore, ledger: Ledger, account_id: UUID, after: int, limit: int
) -> list[dict[str, Any]]:
    """Up to `limit + 1` decoded events of one aggregate after version `after`, in order."""
    params = {"account_id": account_id, "after": after, "limit": limit + 1}
    rows = await store.fetch_all(ACCOUNT_EVENTS, params)
    return [decoded(ledger, row) for row in rows]


class StorePage:
    """Opens one page of the store: `open` returns a `StreamedPage` to iterate."""

    def __init__(self, store: ReadStore, ledger: Ledger, indexed: bool) -> None:
        self.store = store
        self.ledger = ledger
        self.indexed = indexed

    async def open(self, filters: Mapping[str, Any], after: int, limit: int) -> StreamedPage:
        query, params = store_query(self.indexed, filters, after, limit)
        stack = contextlib.AsyncExitStack()
        try:
            conn = await stack.enter_async_context(self.store.connection())
            await stack.enter_async_context(conn.transaction())
            await conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ READ ONLY")
            server_cursor = await stack.enter_async_context(conn.cursor(name=SERVER_CURSOR_NAME))
            await server_cursor.execute(query, params)
            first = await server_cursor.fetchmany(STREAM_FETCH_ROWS)
        except BaseException as error:
            # The pool's context turns a driver failure into 503 `unavailable`.
            await stack.__aexit__(type(error), error, error.__traceback__)
            raise
        return StreamedPage(self.ledger, stack, server_cursor, first, limit)


class StreamedPage:
    """The events of an opened page, decoded one by one; once `items` is done, `more` says
    whether another page follows and `last_position` is the last notification id given."""

    def __init__(
        self,
        ledger: Ledger,
        stack: contextlib.AsyncExitStack,
        server_cursor: AsyncServerCursor[DictRow],
        first: Sequence[DictRow],
        limit: int,
    ) -> None:
        self.ledger = ledger
        self._stack = stack
        self._server_cursor = server_cursor
        self._first = first
        self.limit = limit
        self.more = False
        self.last_position: int | None = None

    async def items(self) -> AsyncGenerator[dict[str, Any], None]:
        """Up to `limit` decoded events; the snapshot closes when this ends or is closed."""
        shown = 0
        try:
            async for row in _rows(self._server_cursor, self._first):
                if shown == self.limit:
                    self.more = True
                    break
                item = decoded(self.ledger, row)
                yield item
                shown += 1
                self.last_position = item["notification_id"]
        finally:
            await self.close()

    async def close(self) -> None:
        """End the snapshot and give the connection back; again is a no-op. Call it even
        when `items` was never started (a client gone before the first event)."""
        await self._stack.aclose()


async def _rows(
    server_cursor: AsyncServerCursor[DictRow], first: Sequence[DictRow]
) -> AsyncIterator[DictRow]:
    rows = first
    while rows:
        for row in rows:
            yield row
        if len(rows) < STREAM_FETCH_ROWS:
            return
        rows = await server_cursor.fetchmany(STREAM_FETCH_ROWS)
