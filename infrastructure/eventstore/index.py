"""The event index and the event tables' append-only guards.

The stored-events table holds only ids, a topic and (maybe encrypted) bytes, so
filtering by time, type or actor needs an index: `public.event_index`, one row per
stored event, written by the recorder in the same transaction as the events (its rows
take their notification ids from the events just inserted). It is derived data: if it is
missing or behind (a store from before it existed, rows lost), the services only warn
at start; `vigil audit reindex` fills it from the store, idempotently.

Stored events, their command replies and the index are append-only: triggers refuse
UPDATE, DELETE and TRUNCATE, for every role, owner and superuser included. Grants alone
cannot do it (the library's `LOCK TABLE ... IN EXCLUSIVE MODE` needs UPDATE privilege);
in production a migration role owns the tables, so the service role cannot drop or
disable the triggers (`infrastructure/ops/migrate.py`).

No module-level import of the store or the recorder: the recorder imports this module.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING, Any, cast

import psycopg
import structlog
from eventsourcing.persistence import StoredEvent
from psycopg.sql import SQL, Composed, Identifier, Literal

from application.envelope import IndexRow, index_row
from infrastructure.postgres.arrays import column_arrays

if TYPE_CHECKING:
    from application.ledger import Ledger
    from infrastructure.eventstore.recorder import VigilRecorder
    from infrastructure.settings import Settings

log = structlog.get_logger("vigil.event_index")

INDEX_TABLE = "event_index"
APPEND_ONLY_FUNCTION = "vigil_refuse_change"
REINDEX_PAGE_EVENTS = 2_000
PROGRESS_EVERY_S = 2.0

COLUMNS = (
    "aggregate_id",
    "aggregate_type",
    "version",
    "event_type",
    "occurred_at",
    "actor_subject",
    "actor_role",
    "transaction_id",
    "correlation_id",
)
COLUMN_TYPES = ("uuid", "text", "bigint", "text", "timestamptz", "text", "text", "text", "text")


def index_create_statements(schema: str) -> list[Composed]:
    table = Identifier(schema, INDEX_TABLE)
    # UNIQUE (aggregate_id, version) is also the per-aggregate lookup index.
    statements = [
        SQL(
            "CREATE TABLE IF NOT EXISTS {table} ("
            "notification_id bigint PRIMARY KEY, "
            "aggregate_id uuid NOT NULL, "
            "aggregate_type text NOT NULL, "
            "version bigint NOT NULL, "
            "event_type text NOT NULL, "
            "occurred_at timestamptz NOT NULL, "
            "actor_subject text, "
            "actor_role text, "
            "transaction_id text, "
            "correlation_id text, "
            "UNIQUE (aggregate_id, version))"
        ).format(table=table)
    ]
    for suffix, column in (
        ("time", "occurred_at"),
        ("type", "event_type"),
        ("actor", "actor_subject"),
    ):
        statements.append(
            SQL("CREATE INDEX IF NOT EXISTS {name} ON {table} ({column}, notification_id)").format(
                name=Identifier(f"{INDEX_TABLE}_{suffix}_idx"),
                table=table,
                column=Identifier(column),
            )
        )
    return statements


def append_only_statements(schema: str, tables: Sequence[str]) -> list[Composed]:
    """Idempotent: the function is replaced, each trigger created only if missing (so a
    process starting on a live store takes no lock on the busy table)."""
    function = Identifier(schema, APPEND_ONLY_FUNCTION)
    statements = [
        SQL(
            "CREATE OR REPLACE FUNCTION {function}() RETURNS trigger LANGUAGE plpgsql AS $body$ "
            "BEGIN "
            "RAISE EXCEPTION '% is append-only', TG_TABLE_NAME "
            "USING ERRCODE = 'raise_exception', "
            "DETAIL = TG_OP || ' refused: stored events are never changed or removed'; "
            "RETURN NULL; "
            "END $body$"
        ).format(function=function)
    ]
    for table in tables:
        triggers = (
            (f"{table}_append_only", SQL("BEFORE UPDATE OR DELETE"), SQL("ROW")),
            (f"{table}_append_only_truncate", SQL("BEFORE TRUNCATE"), SQL("STATEMENT")),
        )
        for name, when, level in triggers:
            statements.append(
                SQL(
                    "DO $do$ BEGIN "
                    "IF NOT EXISTS (SELECT 1 FROM pg_trigger t "
                    "JOIN pg_class c ON c.oid = t.tgrelid "
                    "JOIN pg_namespace n ON n.oid = c.relnamespace "
                    "WHERE n.nspname = {schema_name} AND c.relname = {table_name} "
                    "AND t.tgname = {trigger_name}) THEN "
                    "CREATE TRIGGER {trigger} {when} ON {table} "
                    "FOR EACH {level} EXECUTE FUNCTION {function}(); "
                    "END IF; END $do$"
                ).format(
                    schema_name=Literal(schema),
                    table_name=Literal(table),
                    trigger_name=Literal(name),
                    trigger=Identifier(name),
                    when=when,
                    table=Identifier(schema, table),
                    level=level,
                    function=function,
                )
            )
    return statements


def index_columns(rows: Sequence[IndexRow]) -> list[list[Any]]:
    """Column-wise, in COLUMNS order, for the unnest of the insert statements."""
    return column_arrays(rows, COLUMNS)


# Rebuilding ---------------------------------------------------------------------------


def reindex(
    ledger: Ledger,
    conn: psycopg.Connection[Any],
    *,
    page_events: int = REINDEX_PAGE_EVENTS,
    say: Callable[[str], None] = print,
) -> int:
    """Add the index row of every stored event that has none; returns the rows added.

    Streams the store in notification order, one page per transaction, decoding each
    event with the ledger's mapper (so encrypted stores work). Rows already there are
    left alone (the index is append-only too). Safe beside live writers.
    """
    schema, events_table = store_names(ledger)
    head = _store_head(conn, schema, events_table)
    insert = SQL(
        "INSERT INTO {index} (notification_id, {columns}) "
        "SELECT * FROM unnest(%s::bigint[], {unnest}) ON CONFLICT DO NOTHING"
    ).format(
        index=Identifier(schema, INDEX_TABLE),
        columns=SQL(", ").join(Identifier(c) for c in COLUMNS),
        unnest=SQL(", ").join(SQL("%s::{}[]").format(SQL(t)) for t in COLUMN_TYPES),
    )
    started = last_said = time.monotonic()
    read = added = 0
    for page in _missing_pages(conn, schema, events_table, page_events):
        ids = [notification_id for notification_id, _ in page]
        rows = [_decoded_row(ledger, n, stored) for n, stored in page]
        with conn.transaction():
            cursor = conn.execute(insert, [ids, *index_columns(rows)])
            added += max(cursor.rowcount, 0)
        read += len(page)
        now = time.monotonic()
        if now - last_said >= PROGRESS_EVERY_S:
            last_said = now
            rate = read / max(now - started, 1e-9)
            say(f"  indexed up to {ids[-1]:,} of {head:,} ({rate:,.0f} events/s)")
    elapsed_s = time.monotonic() - started
    say(
        f"reindex: {read:,} events without a row, {added:,} rows added in {elapsed_s:.1f} s "
        f"({read / max(elapsed_s, 1e-9):,.0f} events/s)"
    )
    return added


def store_names(ledger: Ledger) -> tuple[str, str]:
    """(schema, stored-events table) of the ledger's recorder."""
    recorder = cast("VigilRecorder", ledger.recorder)
    return recorder.datastore.schema, recorder.events_table_name


def _decoded_row(ledger: Ledger, notification_id: int, stored: StoredEvent) -> IndexRow:
    try:
        return index_row(ledger.mapper.to_domain_event(stored))
    except Exception as error:
        # Not ours (a forged topic, a wrong cipher key): stop and name it, index nothing.
        raise RuntimeError(
            f"notification {notification_id} ({stored.topic}) cannot be indexed: {error!r}"
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


def _store_head(conn: psycopg.Connection[Any], schema: str, events_table: str) -> int:
    query = SQL("SELECT max(notification_id) FROM {}").format(Identifier(schema, events_table))
    row = conn.execute(query).fetchone()
    return int(row[0]) if row and row[0] is not None else 0


def index_heads(
    conn: psycopg.Connection[Any], schema: str, events_table: str
) -> tuple[int, int | None]:
    """(store head, index head); the index head is None when the table is absent.

    Heads, not counts: two index lookups at any size. A hole below the head (rows lost
    from the middle) is not seen here; `vigil audit reindex` finds and fills those too.
    """
    exists = conn.execute(
        "SELECT to_regclass(%s) IS NOT NULL", (f"{schema}.{INDEX_TABLE}",)
    ).fetchone()
    store_head = _store_head(conn, schema, events_table)
    if not exists or not exists[0]:
        return store_head, None
    query = SQL("SELECT max(notification_id) FROM {}").format(Identifier(schema, INDEX_TABLE))
    row = conn.execute(query).fetchone()
    return store_head, int(row[0]) if row and row[0] is not None else 0


def warn_if_behind(conn: psycopg.Connection[Any], schema: str, events_table: str) -> bool:
    """Log (never repair) an index that is absent or behind the store; True if it is."""
    try:
        store_head, index_head = index_heads(conn, schema, events_table)
    except psycopg.Error as error:
        # A check, not a precondition: the process starts, the log says why it could not.
        log.warning("event_index_check_failed", error=type(error).__name__, detail=str(error))
        return False
    if index_head is not None and index_head >= store_head:
        return False
    log.warning(
        "event_index_behind",
        store_head=store_head,
        index_head=index_head,
        hint="run `vigil audit reindex`; audit filters miss the events after index_head",
    )
    return True


def run_reindex_cli(args: argparse.Namespace, settings: Settings) -> int:
    """`vigil audit reindex`: fill the event index from the store; prints the rows added."""
    from infrastructure.eventstore.ledger import open_ledger

    ledger = open_ledger(settings)
    try:
        with psycopg.connect(
            settings.resolved_database_url(),
            autocommit=True,
            connect_timeout=settings.db_connect_timeout_s,
        ) as conn:
            print("rebuilding the event index from the event store…", flush=True)
            added = reindex(ledger, conn, say=lambda line: print(line, flush=True))
            store_head, index_head = index_heads(conn, *store_names(ledger))
    finally:
        ledger.close()
    print(f"added {added:,} rows; store head {store_head:,}, index head {index_head or 0:,}")
    return 0
