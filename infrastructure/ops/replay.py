"""`vigil replay`: rebuild read models from the event store, in place or into a shadow
schema, and compare a shadow with the live read models.

The replay reads the store itself (not Kafka) in notification order and applies each
page with the very code the workers use (`apply_batch`, `apply_alerts_batch`), so what
it builds is what the projections should have built. In place, it empties the
projection's tables and tracking first: stop that projection's workers while it runs.
A shadow is built in `readmodel_shadow`, beside the live schema, touching nothing live.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import psycopg
from psycopg import sql

from application.ledger import Ledger
from infrastructure.eventstore.envelopes import envelope_pages
from infrastructure.eventstore.ledger import open_ledger
from infrastructure.monitoring.alerts import apply_alerts_batch
from infrastructure.monitoring.alerts import register_config as register_rules
from infrastructure.monitoring.rules_config import config_hash, load_rules
from infrastructure.monitoring.windows import WindowCache
from infrastructure.postgres.connect import connect, connect_async
from infrastructure.postgres.locks import migration_lock
from infrastructure.readmodels.schema import SCHEMA, ensure_read_models
from infrastructure.readmodels.tracking import apply_batch
from infrastructure.settings import Settings

SHADOW_SCHEMA = "readmodel_shadow"
PAGE_EVENTS = 1_000
PROGRESS_EVERY_S = 2.0

# Each projection's own tables, with the columns that identify a row (for --diff).
TABLES: dict[str, dict[str, tuple[str, ...]]] = {
    "balances": {"accounts": ("account_id",)},
    "statements": {"transactions": ("account_id", "version")},
    "kpis": {
        "kpis_hourly": ("hour", "currency", "metric"),
        "kpis_branch": ("branch", "currency", "metric"),
        "kpi_account_branches": ("account_id",),
    },
    "alerts": {
        "alerts": ("alert_id",),
        "rule_windows": ("account_id",),
        "rule_window_movements": ("account_id", "notification_id"),
    },
    "cases": {
        "cases": ("case_id",),
        "case_history": ("case_id", "version"),
        "suppressions": ("suppression_id",),
        "suppressed_alerts": ("alert_id",),
    },
    "watchlist": {"watchlist": ("account_id",)},
}


@dataclass(frozen=True)
class ReplayProgress:
    """Where a replay is: started, running (every few seconds), finished."""

    stage: Literal["started", "running", "finished"]
    projections: tuple[str, ...]
    schema: str
    head: int  # the store's last notification id when the replay began
    position: int  # the last notification id applied so far
    events: int  # events read so far
    elapsed_s: float


@dataclass(frozen=True)
class RowDifference:
    """A row of one read model's table that only the live schema or only the shadow has."""

    table: str
    keys: tuple[str, ...]  # the columns that identify the row
    only_in: Literal["live", "shadow"]
    row: dict[str, Any]


def replay(
    settings: Settings,
    projections: Sequence[str],
    schema: str,
    progress: Callable[[ReplayProgress], None] | None = None,
) -> int:
    """Rebuild `projections` into `schema` from the store; the number of events read."""
    _prepare(settings, projections, schema)
    ledger = open_ledger(settings)
    try:
        report = progress or (lambda _: None)
        return asyncio.run(_apply_all(settings, ledger, tuple(projections), schema, report))
    finally:
        ledger.close()


def _prepare(settings: Settings, projections: Sequence[str], schema: str) -> None:
    with (
        connect(settings, "replay", autocommit=True) as conn,
        migration_lock(conn),
    ):
        ensure_read_models(conn, schema)
        with conn.transaction():
            for projection in projections:
                _empty(conn, schema, projection)


def _empty(conn: psycopg.Connection[Any], schema: str, projection: str) -> None:
    tables = [sql.Identifier(schema, table) for table in TABLES[projection]]
    conn.execute(sql.SQL("TRUNCATE {}").format(sql.SQL(", ").join(tables)))
    for table in ("projection_tracking", "projection_positions", "quarantined_events"):
        conn.execute(
            sql.SQL("DELETE FROM {} WHERE projection = %s").format(sql.Identifier(schema, table)),
            (projection,),
        )
    conn.execute(
        sql.SQL("INSERT INTO {} (projection) VALUES (%s)").format(
            sql.Identifier(schema, "projection_positions")
        ),
        (projection,),
    )


async def _apply_all(
    settings: Settings,
    ledger: Ledger,
    projections: tuple[str, ...],
    schema: str,
    progress: Callable[[ReplayProgress], None],
) -> int:
    head = ledger.recorder.max_notification_id() or 0
    progress(ReplayProgress("started", projections, schema, head, 0, 0, 0.0))
    started = last_said = time.monotonic()
    count = position = 0
    # The replay's own window cache: the windows it stored, so that each page reads only
    # their versions, not every movement of its accounts again (a page's accounts hold a
    # day of movements each, read again for every page they appear in).
    windows = WindowCache()
    async with await connect_async(settings, "replay", autocommit=True) as conn:
        rules = await _rules(settings, conn) if "alerts" in projections else None
        for page in envelope_pages(ledger, PAGE_EVENTS):
            for projection in projections:
                if projection == "alerts":
                    assert rules is not None
                    await apply_alerts_batch(conn, page, rules[0], rules[1], schema, windows)
                else:
                    await apply_batch(conn, projection, page, schema)
            count += len(page)
            position = page[-1].notification_id
            if time.monotonic() - last_said >= PROGRESS_EVERY_S:
                last_said = time.monotonic()
                elapsed_s = last_said - started
                progress(
                    ReplayProgress("running", projections, schema, head, position, count, elapsed_s)
                )
    elapsed_s = time.monotonic() - started
    progress(ReplayProgress("finished", projections, schema, head, position, count, elapsed_s))
    return count


async def _rules(settings: Settings, conn: psycopg.AsyncConnection[Any]) -> tuple[Any, int]:
    config, source = load_rules(settings.rules_config)
    version = await register_rules(conn, config.describe(), config_hash(config), source)
    return config, version


def diff(
    settings: Settings,
    projections: Sequence[str],
    found: Callable[[RowDifference], None] | None = None,
) -> int:
    """How many rows differ between the shadow and the live read models; `found` hears
    of each, table by table, in key order."""
    differences = 0
    with connect(settings, "replay-diff") as conn:
        for projection in projections:
            for table, keys in TABLES[projection].items():
                differences += _diff_table(conn, table, keys, found or (lambda _: None))
    return differences


def _diff_table(
    conn: psycopg.Connection[Any],
    table: str,
    keys: tuple[str, ...],
    found: Callable[[RowDifference], None],
) -> int:
    live, shadow = sql.Identifier(SCHEMA, table), sql.Identifier(SHADOW_SCHEMA, table)
    key_list = sql.SQL(", ").join(sql.Identifier(k) for k in keys)
    count = 0
    sides: tuple[tuple[Literal["live", "shadow"], Any, Any], ...] = (
        ("live", live, shadow),
        ("shadow", shadow, live),
    )
    for only_in, left, right in sides:
        query = sql.SQL(
            "SELECT to_jsonb(d) FROM (SELECT * FROM {} EXCEPT SELECT * FROM {}) d ORDER BY {}"
        ).format(left, right, key_list)
        for (row,) in conn.execute(query):
            count += 1
            found(RowDifference(table, keys, only_in, row))
    return count
