"""The projections' positions and lag in events, as `GET /v1/projections` reads them, on a
real store with gaps in its ids."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import psycopg

from application.ledger import Ledger
from infrastructure.readmodels.readers.projections import (
    LAG_EVENTS_COUNT_MAX,
    projection_lags_s,
    projection_positions,
)
from infrastructure.readmodels.readstore import ReadStore
from infrastructure.readmodels.schema import (
    CHURNED_TABLES,
    HOT_TABLES,
    VACUUM_AFTER_ROWS,
    ensure_read_models,
    set_storage,
)
from infrastructure.settings import Settings


def _store_events(conn: psycopg.Connection[Any], count: int) -> int:
    """`count` events of one new stream; returns the last id."""
    cursor = conn.execute(
        "INSERT INTO ledger_events (originator_id, originator_version, topic, state) "
        "SELECT %s, v, 'test', '\\x00' FROM generate_series(1, %s) AS v "
        "RETURNING notification_id",
        (uuid.uuid4(), count),
    )
    return max(int(row[0]) for row in cursor.fetchall())


def _skip_ids(conn: psycopg.Connection[Any], count: int) -> None:
    """Ids drawn by transactions that failed: never stored."""
    conn.execute(
        "SELECT setval(pg_get_serial_sequence('ledger_events', 'notification_id'), "
        "(SELECT max(notification_id) FROM ledger_events) + %s)",
        (count,),
    )


def _set_position(conn: psycopg.Connection[Any], projection: str, position: int) -> None:
    conn.execute(
        "INSERT INTO readmodel.projection_positions (projection, position) VALUES (%s, %s) "
        "ON CONFLICT (projection) DO UPDATE SET position = EXCLUDED.position",
        (projection, position),
    )


async def _read(settings: Settings) -> tuple[int, dict[str, int], dict[str, float]]:
    store = await ReadStore.open(settings)
    try:
        head, rows = await projection_positions(store)
        lags = await projection_lags_s(store)
    finally:
        await store.close()
    return head, {row["projection"]: row["lag_events"] for row in rows}, lags


def test_lag_counts_stored_events_then_reads_the_difference_of_ids_past_the_bound(
    settings: Settings, ledger: Ledger
) -> None:
    with psycopg.connect(settings.resolved_database_url(), autocommit=True) as conn:
        first = _store_events(conn, 30) - 29
        _skip_ids(conn, 5)
        near = _store_events(conn, 20)
        far = _store_events(conn, LAG_EVENTS_COUNT_MAX + 2_000)
        _set_position(conn, "statements", first - 1)
        _set_position(conn, "kpis", near)
        _set_position(conn, "balances", far)
    head, lag_events, lags_s = asyncio.run(_read(settings))
    assert head == far
    # Within the bound the gap's five ids are not counted: 30 + 20 + the rest stored.
    assert lag_events["kpis"] == LAG_EVENTS_COUNT_MAX + 2_000
    assert lag_events["balances"] == 0
    # Past it, the difference of ids, which counts the gap.
    assert (
        lag_events["statements"] == far - (first - 1) == 30 + 5 + 20 + LAG_EVENTS_COUNT_MAX + 2_000
    )
    assert lags_s["balances"] == 0.0
    assert set(lags_s) >= {"statements", "kpis", "balances"}


def test_lag_within_the_bound_skips_the_gaps(settings: Settings, ledger: Ledger) -> None:
    with psycopg.connect(settings.resolved_database_url(), autocommit=True) as conn:
        first = _store_events(conn, 30) - 29
        _skip_ids(conn, 5)
        head = _store_events(conn, 20)
        _set_position(conn, "statements", first - 1)
        _set_position(conn, "balances", head)
    seen_head, lag_events, _ = asyncio.run(_read(settings))
    assert seen_head == head
    assert lag_events["statements"] == 50
    assert lag_events["balances"] == 0


def test_the_busiest_read_model_tables_leave_room_on_their_pages(settings: Settings) -> None:
    with psycopg.connect(settings.resolved_database_url(), autocommit=True) as conn:
        cursor = conn.execute(
            "SELECT c.relname, c.reloptions FROM pg_class c JOIN pg_namespace n "
            "ON n.oid = c.relnamespace WHERE n.nspname = 'readmodel' AND c.relkind = 'r'"
        )
        options = {name: set(opts or ()) for name, opts in cursor.fetchall()}
    for table, fill in HOT_TABLES.items():
        assert f"fillfactor={fill}" in options[table], (table, options[table])
        assert f"autovacuum_vacuum_threshold={VACUUM_AFTER_ROWS}" in options[table]
    for table in CHURNED_TABLES:
        assert f"autovacuum_vacuum_threshold={VACUUM_AFTER_ROWS}" in options[table]


def test_storage_drifted_from_its_setting_is_set_again_and_the_rest_left_alone(
    settings: Settings,
) -> None:
    url = settings.resolved_database_url()
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("ALTER TABLE readmodel.accounts SET (fillfactor = 100)")
        ensure_read_models(conn)
        cursor = conn.execute(
            "SELECT reloptions FROM pg_class WHERE oid = 'readmodel.accounts'::regclass"
        )
        row = cursor.fetchone()
        assert row is not None
        assert f"fillfactor={HOT_TABLES['accounts']}" in row[0]
        # Nothing to change: no lock asked for (as a vacuum holds it, this would block).
        with psycopg.connect(url) as holder:
            holder.execute("LOCK TABLE readmodel.accounts IN SHARE UPDATE EXCLUSIVE MODE")
            conn.execute("SET lock_timeout = '2s'")
            set_storage(conn)
            holder.rollback()
