"""The event store's names and schema: its tables, the event index's DDL, the
append-only guards, and whether the index has kept up with the store.

The stored-events table holds only ids, a topic and (maybe encrypted) bytes, so
filtering by time, type or actor needs an index: `public.event_index`, one row per
stored event, written by the recorder in the same transaction as the events. It is
derived data: if it is missing or behind, the services only warn at start
(`warn_if_behind`); `vigil audit reindex` fills it.

Stored events, their command replies and the index are append-only: triggers refuse
UPDATE, DELETE and TRUNCATE, for every role, owner and superuser included. Grants alone
cannot do it (the library's `LOCK TABLE ... IN EXCLUSIVE MODE` needs UPDATE privilege);
in production a migration role owns the tables, so the service role cannot drop or
disable the triggers (`infrastructure/ops/migrate.py`).

Imports nothing of the store: the recorder, the ledger and the reindex all build on it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Final, cast

import psycopg
import structlog
from eventsourcing.postgres import PostgresApplicationRecorder
from psycopg.sql import SQL, Composed, Identifier, Literal

from application.envelope import IndexRow

if TYPE_CHECKING:
    from application.ledger import Ledger

log = structlog.get_logger("vigil.event_index")

# The library names the table after the application ("Ledger").
EVENTS_TABLE: Final = "ledger_events"
INDEX_TABLE: Final = "event_index"
APPEND_ONLY_FUNCTION: Final = "vigil_refuse_change"

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
# What PostgreSQL named the index's former UNIQUE (aggregate_id, version).
DROPPED_UNIQUE: Final = f"{INDEX_TABLE}_aggregate_id_version_key"
# The index rows' fields are its columns, in order (index_columns transposes the rows).
if IndexRow._fields != COLUMNS:
    raise TypeError(f"IndexRow's fields {IndexRow._fields} are not the columns {COLUMNS}")
COLUMN_TYPES = ("uuid", "text", "bigint", "text", "timestamptz", "text", "text", "text", "text")


def index_create_statements(schema: str) -> list[Composed]:
    """The index table and its indexes. No (aggregate_id, version) index: the stored-events
    table has one (its unique constraint), and an aggregate's rows are found through it
    and joined by notification id. A store made when the index had one loses it here."""
    table = Identifier(schema, INDEX_TABLE)
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
            "correlation_id text)"
        ).format(table=table),
        # Only if it is there (a store made by an earlier version): ALTER TABLE would take
        # an exclusive lock on the busy table at every start otherwise.
        SQL(
            "DO $do$ BEGIN "
            "IF EXISTS (SELECT 1 FROM pg_constraint WHERE conrelid = to_regclass({qualified}) "
            "AND conname = {constraint}) THEN "
            "ALTER TABLE {table} DROP CONSTRAINT {constraint_name}; "
            "END IF; END $do$"
        ).format(
            qualified=Literal(f"{schema}.{INDEX_TABLE}"),
            constraint=Literal(DROPPED_UNIQUE),
            table=table,
            constraint_name=Identifier(DROPPED_UNIQUE),
        ),
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
    """Column-wise, in COLUMNS order, for the unnest of the insert statements: the rows'
    fields are in that order, so the columns are the rows transposed."""
    if not rows:
        return [[] for _ in COLUMNS]
    return [list(column) for column in zip(*rows, strict=True)]


def store_names(ledger: Ledger) -> tuple[str, str]:
    """(schema, stored-events table) of the ledger's recorder."""
    recorder = cast(PostgresApplicationRecorder, ledger.recorder)
    return recorder.datastore.schema, recorder.events_table_name


def events_head(conn: psycopg.Connection[Any], schema: str, events_table: str) -> int:
    """The highest notification id in the store, 0 when it is empty."""
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
    store_head = events_head(conn, schema, events_table)
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
