"""A page of `GET /v1/audit/events`, streamed: a server-side cursor in one read-only
snapshot, fetched a few rows at a time and written item by item, so a page never sits
whole in memory (the bytes of up to 500 events, decoded and maybe decrypted).

The cursor is opened, and its first rows fetched, before the reply starts: a failure to
start is still a problem reply (503), never a truncated 200.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Mapping, Sequence
from typing import Any, Final

import orjson
from eventsourcing.persistence import StoredEvent
from psycopg import AsyncServerCursor, sql
from psycopg.rows import DictRow

from application.ledger import Ledger
from infrastructure.eventstore.ledger import EVENTS_TABLE, stored_envelope
from infrastructure.readmodels.readstore import ReadStore
from interfaces.api.query.pagination import encode_cursor

# Rows per FETCH of a streamed page.
STREAM_FETCH_ROWS: Final = 100
SERVER_CURSOR_NAME: Final = "audit_events"
# Only the filters given: a generic plan of `(%s IS NULL OR ...)` ignores the indexes.
INDEX_CONDITIONS: Final = {
    "from": sql.SQL("i.occurred_at >= %(from)s"),
    "to": sql.SQL("i.occurred_at < %(to)s"),
    "type": sql.SQL("i.event_type = %(type)s"),
    "actor": sql.SQL("i.actor_subject = %(actor)s"),
    "account_id": sql.SQL("i.aggregate_id = %(account_id)s"),
}


def decoded(ledger: Ledger, row: Mapping[str, Any]) -> dict[str, Any]:
    """A stored-events row as its envelope, decoded (and decrypted) by the ledger's mapper."""
    stored = StoredEvent(
        originator_id=row["originator_id"],
        originator_version=row["originator_version"],
        topic=row["topic"],
        state=bytes(row["state"]),
    )
    return stored_envelope(ledger, int(row["notification_id"]), stored)


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


class StorePage:
    """One page of the store, `{"items": [...], "next_cursor", "index"}`."""

    def __init__(self, store: ReadStore, ledger: Ledger, indexed: bool, cursor_kind: str) -> None:
        self.store = store
        self.ledger = ledger
        self.indexed = indexed
        self.cursor_kind = cursor_kind

    async def open(
        self, filters: Mapping[str, Any], after: int, limit: int
    ) -> AsyncIterator[bytes]:
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
        return self._write(stack, server_cursor, first, limit)

    async def _write(
        self,
        stack: contextlib.AsyncExitStack,
        server_cursor: AsyncServerCursor[DictRow],
        first: Sequence[DictRow],
        limit: int,
    ) -> AsyncIterator[bytes]:
        shown = 0
        last: int | None = None
        more = False
        try:
            yield b'{"items":['
            async for row in _rows(server_cursor, first):
                if shown == limit:
                    more = True
                    break
                item = decoded(self.ledger, row)
                yield (b"," if shown else b"") + orjson.dumps(item)
                shown += 1
                last = item["notification_id"]
        finally:
            await stack.aclose()
        next_cursor = encode_cursor(self.cursor_kind, [last]) if more and last is not None else None
        yield b'],"next_cursor":' + orjson.dumps(next_cursor)
        yield b',"index":' + (b"true" if self.indexed else b"false") + b"}"


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
