"""`vigil migrate`: every table of every part, created by the role that will own them,
and (`--grant-to ROLE`) exactly the privileges the service role needs.

In production a migration role owns the tables and runs this (a Helm pre-upgrade Job);
the services run as a role that owns nothing, with `VIGIL_MIGRATE_ON_START=false` so
they run no DDL. Not owning the stored-events tables, the service role cannot drop or
disable the append-only triggers; it keeps UPDATE on `ledger_events` only because the
library's `LOCK TABLE ... IN EXCLUSIVE MODE` requires it, and the triggers refuse the
UPDATE statement itself.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg.sql import SQL, Composed, Identifier

from application.ledger import Ledger, LedgerOptions
from infrastructure.audit import checkpoints
from infrastructure.audit.access_log import ensure_audit_tables
from infrastructure.eventstore.ledger import event_store_env, money_ceilings
from infrastructure.eventstore.recorder import REPLIES_TABLE, WRITERS_TURN_TABLE
from infrastructure.eventstore.schema import EVENTS_TABLE, INDEX_TABLE, index_heads
from infrastructure.monitoring.backtest import SHADOW_DDL
from infrastructure.postgres.connect import connect
from infrastructure.postgres.locks import migrating
from infrastructure.readmodels.schema import RELAY_QUARANTINE_DDL, ensure_read_models
from infrastructure.readmodels.schema import SCHEMA as READMODEL
from infrastructure.relay.state import DDL as RELAY_DDL
from infrastructure.settings import ConfigurationError, Settings
from infrastructure.workers.case_opener_store import QUARANTINE_TABLE, ensure_quarantine_table

Connection = psycopg.Connection[Any]

# Tables in `public` the services write, and what each needs (by design: append-only).
PUBLIC_GRANTS: tuple[tuple[str, str], ...] = (
    # UPDATE only for the library's LOCK TABLE ... IN EXCLUSIVE MODE; triggers refuse UPDATEs.
    (EVENTS_TABLE, "SELECT, INSERT, UPDATE"),
    (REPLIES_TABLE, "SELECT, INSERT"),
    # UPDATE only to lock its one row FOR UPDATE, the command groups' turn to write.
    (WRITERS_TURN_TABLE, "SELECT, UPDATE"),
    (INDEX_TABLE, "SELECT, INSERT"),
    ("relay_state", "SELECT, INSERT, UPDATE, DELETE"),
    ("relay_partition_offsets", "SELECT, INSERT, UPDATE, DELETE"),
    ("relay_quarantine", "SELECT, INSERT, UPDATE"),
    ("rule_configs", "SELECT, INSERT"),
    # Append-only too (their own triggers): the query API and the relay only add rows.
    ("audit_access_log", "SELECT, INSERT"),
    ("audit_exports", "SELECT, INSERT"),
    ("audit_checkpoints", "SELECT, INSERT"),
    # The case opener records what it cannot handle; resolving a row is an operator's.
    (QUARANTINE_TABLE, "SELECT, INSERT"),
)
# (table, column) of the serial columns those inserts draw from.
PUBLIC_SEQUENCES: tuple[tuple[str, str], ...] = (
    (EVENTS_TABLE, "notification_id"),
    ("rule_configs", "version"),
    ("audit_access_log", "id"),
    (QUARANTINE_TABLE, "id"),
)
READMODEL_GRANT = "SELECT, INSERT, UPDATE, DELETE"


def _event_store(conn: Connection, settings: Settings) -> None:
    # The ledger's own migration: stored events, command replies, the event index and
    # the append-only triggers (all in the recorder's create statements). The caller
    # holds the advisory lock, so this must not go through `open_ledger` (which takes it).
    del conn
    ledger = Ledger(
        env=event_store_env(settings, create_table=True),
        # Writes no event, so signs nothing: no MAC key needed to migrate.
        options=LedgerOptions(mac_key=b"", ceilings=money_ceilings(settings)),
    )
    ledger.close()


def _read_models(conn: Connection, settings: Settings) -> None:
    del settings
    ensure_read_models(conn)
    conn.execute(SHADOW_DDL)


def _relay(conn: Connection, settings: Settings) -> None:
    del settings
    conn.execute(RELAY_DDL)
    conn.execute(RELAY_QUARANTINE_DDL)


def _audit(conn: Connection, settings: Settings) -> None:
    del settings
    ensure_audit_tables(conn)
    checkpoints.migrate(conn)  # takes the advisory lock again: it nests, per session


def _case_opener(conn: Connection, settings: Settings) -> None:
    del settings
    ensure_quarantine_table(conn)


# Every part's tables, in order. A part that adds tables adds its step here (and its
# grants below), so `vigil migrate` stays the one place that creates everything.
STEPS: tuple[tuple[str, Callable[[Connection, Settings], None]], ...] = (
    ("event store, command replies, event index, append-only triggers", _event_store),
    ("read models, alerts, rule configurations", _read_models),
    ("relay state", _relay),
    ("audit access log, exports register, checkpoints", _audit),
    ("case opener quarantine", _case_opener),
)


@dataclass(frozen=True)
class StepDone:
    """One part of `migrate` done: a step of STEPS (timed), or the grants (not timed)."""

    label: str
    elapsed_s: float | None = None


def migrate(
    settings: Settings,
    *,
    grant_to: str | None = None,
    progress: Callable[[StepDone], None] | None = None,
) -> None:
    """Create (or complete) every table under the migration advisory lock; then, with
    `grant_to`, make that role's privileges exactly what the services need."""
    with migrating(settings) as conn:
        for label, step in STEPS:
            started = time.monotonic()
            step(conn, settings)
            if progress is not None:
                progress(StepDone(label, elapsed_s=time.monotonic() - started))
        if grant_to is not None:
            grant(conn, grant_to)
            if progress is not None:
                progress(StepDone(f"grants to {grant_to}"))


def grant(conn: Connection, role: str) -> None:
    """Revoke, then grant, in one transaction: the role ends with exactly this set, and
    no session of it ever sees the tables without what it needs."""
    _check_service_role(conn, role)
    with conn.transaction():
        for statement in grant_statements(conn, role):
            conn.execute(statement)


def grant_statements(conn: Connection, role: str) -> list[Composed]:
    who = Identifier(role)
    public_tables = SQL(", ").join(Identifier("public", t) for t in dict(PUBLIC_GRANTS))
    statements = [
        SQL("REVOKE ALL ON {tables} FROM {who}").format(tables=public_tables, who=who),
        SQL("REVOKE ALL ON ALL TABLES IN SCHEMA {schema} FROM {who}").format(
            schema=Identifier(READMODEL), who=who
        ),
        SQL("GRANT USAGE ON SCHEMA public, {schema} TO {who}").format(
            schema=Identifier(READMODEL), who=who
        ),
    ]
    for table, privileges in PUBLIC_GRANTS:
        statements.append(
            SQL("GRANT {privileges} ON {table} TO {who}").format(
                privileges=SQL(privileges), table=Identifier("public", table), who=who
            )
        )
    statements.append(
        SQL("GRANT {privileges} ON ALL TABLES IN SCHEMA {schema} TO {who}").format(
            privileges=SQL(READMODEL_GRANT), schema=Identifier(READMODEL), who=who
        )
    )
    statements.append(
        SQL("GRANT USAGE ON ALL SEQUENCES IN SCHEMA {schema} TO {who}").format(
            schema=Identifier(READMODEL), who=who
        )
    )
    for table, column in PUBLIC_SEQUENCES:
        row = conn.execute(
            "SELECT pg_get_serial_sequence(%s, %s)", (f"public.{table}", column)
        ).fetchone()
        assert row is not None, "pg_get_serial_sequence returns a row"
        assert row[0], f"{table}.{column} has a sequence after migrating"
        # pg_get_serial_sequence returns the name already quoted where needed.
        statements.append(SQL("GRANT USAGE ON SEQUENCE {} TO {}").format(SQL(row[0]), who))
    return statements


def _check_service_role(conn: Connection, role: str) -> None:
    """Refuse roles for which the split would mean nothing: the owner itself, a member
    of the owner (it could act as owner and drop the triggers), a superuser."""
    row = conn.execute(
        "SELECT r.rolsuper, pg_has_role(r.oid, c.relowner, 'MEMBER') "
        "FROM pg_roles r, pg_class c "
        "WHERE r.rolname = %s AND c.oid = to_regclass(%s)",
        (role, f"public.{EVENTS_TABLE}"),
    ).fetchone()
    if row is None:
        raise ConfigurationError(f"--grant-to: role {role!r} does not exist; create it first")
    is_superuser, acts_as_owner = row
    if is_superuser:
        raise ConfigurationError(f"--grant-to: {role!r} is a superuser: it bypasses grants")
    if acts_as_owner:
        raise ConfigurationError(
            f"--grant-to: {role!r} owns {EVENTS_TABLE} (or is a member of its owner): "
            "it could drop the append-only triggers; use a role that owns nothing"
        )


def check_role_exists(settings: Settings, role: str) -> None:
    """ConfigurationError unless `role` exists: before any DDL, a typo in the role should
    not cost a whole migration first."""
    with connect(settings, "migrate") as conn:
        row = conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (role,)).fetchone()
    if row is None:
        raise ConfigurationError(f"--grant-to: role {role!r} does not exist; create it first")


def event_index_heads(settings: Settings) -> tuple[int, int | None]:
    """(store head, index head) of the migrated store; the index head is None without
    an index. Derived data is never rebuilt behind the operator's back: this only tells."""
    with connect(settings, "migrate") as conn:
        return index_heads(conn, "public", EVENTS_TABLE)
