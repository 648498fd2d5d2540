"""The event store's head and each projection's position, lag and set-aside events."""

from __future__ import annotations

from datetime import datetime
from typing import Final, TypedDict, cast

from psycopg import sql

from infrastructure.eventstore.schema import EVENTS_TABLE
from infrastructure.readmodels.readstore import ReadStore
from infrastructure.readmodels.schema import SCHEMA

# The events behind a projection are counted one by one (the store's ids have gaps: ids a
# failed transaction drew are never stored) only up to this many ids past its position;
# further behind, the lag reads as the head's id minus the position. Counting row by row
# without a bound cost PostgreSQL about 100 ms per request at 130,000 stored events, and
# grew with the store: polled every second, that was a third of a core.
LAG_EVENTS_COUNT_MAX: Final = 10_000

_identifiers: Final = {"schema": sql.Identifier(SCHEMA), "events": sql.Identifier(EVENTS_TABLE)}
HEAD: Final = sql.SQL("SELECT coalesce(max(notification_id), 0) AS head FROM {events}").format(
    **_identifiers
)
POSITIONS: Final = sql.SQL(
    "SELECT p.projection, p.position, p.updated_at, now() AS now, "
    # Bounded on both sides, so that the planner probes the index for this narrow range
    # (an open range had it scan the whole table, whatever the lag).
    "  (SELECT count(*) FROM {events} e WHERE e.notification_id > p.position "
    "    AND e.notification_id <= p.position + %(count_max)s) AS counted, "
    # Set aside by the projection, or never published by the relay: missed either way.
    "  (SELECT count(*) FROM {schema}.quarantined_events q WHERE q.projection = p.projection "
    "    AND q.resolved_at IS NULL) "
    "  + (SELECT count(*) FROM public.relay_quarantine r WHERE r.resolved_at IS NULL) "
    "  AS quarantined "
    "FROM {schema}.projection_positions p ORDER BY p.projection"
).format(**_identifiers)


# The lag in seconds needs only whether anything is past the mark, not how much: whether
# the head (one probe at the end of the index) is past it. Cheap enough for every scrape
# and readiness probe (an EXISTS over the open range could be planned as a table scan).
LAGS: Final = sql.SQL(
    "SELECT p.projection, p.updated_at, now() AS now, "
    "  (SELECT coalesce(max(notification_id), 0) FROM {events}) > p.position AS behind "
    "FROM {schema}.projection_positions p ORDER BY p.projection"
).format(**_identifiers)


class PositionRow(TypedDict):
    """A projection's position; `now` is the database's clock, for the lag in seconds."""

    projection: str
    position: int
    updated_at: datetime
    now: datetime
    lag_events: int  # exact up to LAG_EVENTS_COUNT_MAX ids behind, the difference of ids past it
    quarantined: int


async def projection_positions(store: ReadStore) -> tuple[int, list[PositionRow]]:
    """The store's head and every projection's position, by name, from one snapshot."""
    async with store.snapshot() as conn:
        cursor = await conn.execute(HEAD)
        head_row = await cursor.fetchone()
        cursor = await conn.execute(POSITIONS, {"count_max": LAG_EVENTS_COUNT_MAX})
        rows = await cursor.fetchall()
    assert head_row is not None, "an aggregate always returns a row"
    head = int(head_row["head"])
    positions = []
    for row in rows:
        behind = head - int(row["position"])
        counted = int(row.pop("counted"))
        positions.append(
            row | {"lag_events": counted if behind <= LAG_EVENTS_COUNT_MAX else behind}
        )
    return head, cast(list[PositionRow], positions)


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
