"""`GET /v1/projections`: the event store's head and each projection's position and lag."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Depends
from pydantic import BaseModel
from starlette.responses import Response

from infrastructure.readmodels.readers.projections import PositionRow, projection_positions
from interfaces.api.http.auth import Principal, require
from interfaces.api.http.deps import json_reply
from interfaces.api.http.problems import problem_responses
from interfaces.api.query.deps import ReadSideDep

router = APIRouter(prefix="/v1/projections", tags=["projections"])

ProjectionsReader = Annotated[Principal, Depends(require("projections.read"))]


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
    head, rows = await projection_positions(read_side.store)
    return json_reply({"head": head, "items": [_lag(row) for row in rows]})


def _lag(row: PositionRow) -> dict[str, Any]:
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
