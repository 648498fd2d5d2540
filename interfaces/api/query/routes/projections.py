"""`GET /v1/projections`: the event store's head and each projection's position and lag."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends
from pydantic import BaseModel
from starlette.responses import Response

from infrastructure.readmodels.readers.projections import (
    PositionRow,
    lag_seconds,
    projection_positions,
)
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
    lag_s = lag_seconds(lag_events > 0, row["updated_at"], row["now"])
    return {
        "name": row["projection"],
        "position": int(row["position"]),
        "lag_events": lag_events,
        "lag_s": round(lag_s, 3),
        "quarantined": int(row["quarantined"]),
    }
