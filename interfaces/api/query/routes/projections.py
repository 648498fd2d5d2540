"""`GET /v1/projections`: the event store's head and each projection's position and lag."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Final

from fastapi import APIRouter, Depends
from psycopg import sql
from pydantic import BaseModel
from starlette.responses import Response

from infrastructure.eventstore.ledger import EVENTS_TABLE
from infrastructure.readmodels.schema import SCHEMA
from interfaces.api.http.auth import Principal, require
from interfaces.api.http.problems import problem_responses
from interfaces.api.query.deps import ReadSideDep
from interfaces.api.query.views import json_reply

router = APIRouter(prefix="/v1/projections", tags=["projections"])

ProjectionsReader = Annotated[Principal, Depends(require("projections.read"))]

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


class ProjectionLag(BaseModel):
    name: str
    position: int
    lag_events: int
    lag_s: float
    quarantined: int


class ProjectionsOut(BaseModel):
    head: int
    items: list[ProjectionLag]


@router.get(
    "",
    response_model=ProjectionsOut,
    responses=problem_responses(),
    summary="The store's head and each projection's position, lag in events and seconds",
)
async def list_projections(who: ProjectionsReader, read_side: ReadSideDep) -> Response:
    async with read_side.store.snapshot() as conn:
        cursor = await conn.execute(HEAD)
        head_row = await cursor.fetchone()
        cursor = await conn.execute(POSITIONS, {"count_max": LAG_EVENTS_COUNT_MAX})
        rows = await cursor.fetchall()
    assert head_row is not None, "an aggregate always returns a row"
    return json_reply({"head": int(head_row["head"]), "items": [_lag(row) for row in rows]})


def _lag(row: dict[str, Any]) -> dict[str, Any]:
    lag_events = int(row["lag_events"])
    updated_at: datetime = row["updated_at"]
    now: datetime = row["now"]
    # Caught up is no lag, however long ago the last event came; behind, the lag is how
    # long the projection has not moved.
    lag_s = 0.0 if lag_events == 0 else max(0.0, (now - updated_at).total_seconds())
    return {
        "name": row["projection"],
        "position": int(row["position"]),
        "lag_events": lag_events,
        "lag_s": round(lag_s, 3),
        "quarantined": int(row["quarantined"]),
    }
