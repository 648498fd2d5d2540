"""The event store's head and each projection's position, lag and set-aside events."""

from __future__ import annotations

from datetime import datetime
from typing import Final, TypedDict, cast

from psycopg import sql

from infrastructure.eventstore.schema import EVENTS_TABLE
from infrastructure.readmodels.readstore import ReadStore
from infrastructure.readmodels.schema import SCHEMA

# Counting a lag of millions of events row by row would make this page slow exactly when
# it is needed; past this bound the lag reads as the bound ("at least").
LAG_EVENTS_COUNT_MAX: Final = 1_000_000

_identifiers: Final = {"schema": sql.Identifier(SCHEMA), "events": sql.Identifier(EVENTS_TABLE)}
HEAD: Final = sql.SQL("SELECT coalesce(max(notification_id), 0) AS head FROM {events}").format(
    **_identifiers
)
POSITIONS: Final = sql.SQL(
    "SELECT p.projection, p.position, p.updated_at, now() AS now, "
    "  (SELECT count(*) FROM (SELECT 1 FROM {events} e WHERE e.notification_id > p.position "
    "    LIMIT %(count_max)s) pending) AS lag_events, "
    # Set aside by the projection, or never published by the relay: missed either way.
    "  (SELECT count(*) FROM {schema}.quarantined_events q WHERE q.projection = p.projection "
    "    AND q.resolved_at IS NULL) "
    "  + (SELECT count(*) FROM public.relay_quarantine r WHERE r.resolved_at IS NULL) "
    "  AS quarantined "
    "FROM {schema}.projection_positions p ORDER BY p.projection"
).format(**_identifiers)


# The lag in seconds needs only whether anything is past the mark, not how much: one index
# probe per projection, cheap enough for every scrape and readiness probe.
LAGS: Final = sql.SQL(
    "SELECT p.projection, p.updated_at, now() AS now, "
    "  EXISTS (SELECT 1 FROM {events} e WHERE e.notification_id > p.position) AS behind "
    "FROM {schema}.projection_positions p ORDER BY p.projection"
).format(**_identifiers)


class PositionRow(TypedDict):
    """A projection's position; `now` is the database's clock, for the lag in seconds."""

    projection: str
    position: int
    updated_at: datetime
    now: datetime
    lag_events: int
    quarantined: int


async def projection_positions(store: ReadStore) -> tuple[int, list[PositionRow]]:
    """The store's head and every projection's position, by name, from one snapshot."""
    async with store.snapshot() as conn:
        cursor = await conn.execute(HEAD)
        head_row = await cursor.fetchone()
        cursor = await conn.execute(POSITIONS, {"count_max": LAG_EVENTS_COUNT_MAX})
        rows = await cursor.fetchall()
    assert head_row is not None, "an aggregate always returns a row"
    return int(head_row["head"]), cast(list[PositionRow], rows)


def lag_seconds(behind: bool, updated_at: datetime, now: datetime) -> float:
    """How long a projection that is behind has not moved; caught up is no lag, however
    long ago the last event came."""
    return max(0.0, (now - updated_at).total_seconds()) if behind else 0.0


async def projection_lags_s(store: ReadStore) -> dict[str, float]:
    """Every projection's lag in seconds, by name (as `GET /v1/projections` counts it)."""
    async with store.connection() as conn:
        cursor = await conn.execute(LAGS)
        rows = await cursor.fetchall()
    return {
        str(row["projection"]): lag_seconds(bool(row["behind"]), row["updated_at"], row["now"])
        for row in rows
    }
