"""`GET /v1/suppressions`: compliance's suppressions (the cases projection), newest first,
by account, rule and whether they hold now."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Final, Literal
from uuid import UUID

from fastapi import APIRouter, Depends, Query
from psycopg import sql
from pydantic import BaseModel
from starlette.responses import Response

from domain.integrity import format_timestamp
from infrastructure.readmodels.schema import SCHEMA
from interfaces.api.http.auth import Principal, require
from interfaces.api.http.deps import json_reply
from interfaces.api.http.problems import problem_responses
from interfaces.api.query.deps import ReadSideDep
from interfaces.api.query.pagination import (
    PAGE_SIZE_DEFAULT,
    Cursor,
    Limit,
    QueryInvalid,
    decode_cursor,
    encode_cursor,
    page_reply,
)

router = APIRouter(prefix="/v1/suppressions", tags=["suppressions"])

SuppressionReader = Annotated[Principal, Depends(require("suppressions.read"))]

SUPPRESSIONS_CURSOR: Final = "suppressions"
COLUMNS: Final = (
    "suppression_id, account_id, rule, until, reason, status, created_by, created_at, "
    "updated_at, revoked_by, revoke_reason, version"
)


class SuppressionView(BaseModel):
    suppression_id: str
    account_id: str
    rule: str
    until: str
    reason: str
    status: Literal["active", "expired", "revoked"]
    created_by: str
    created_at: str
    revoked_by: str | None
    revoke_reason: str | None
    version: int


class SuppressionPage(BaseModel):
    items: list[SuppressionView]
    next_cursor: str | None


def suppression_view(row: dict[str, Any], now: datetime) -> dict[str, Any]:
    status = row["status"]
    if status == "active" and row["until"] <= now:
        status = "expired"
    return {
        "suppression_id": str(row["suppression_id"]),
        "account_id": str(row["account_id"]),
        "rule": row["rule"],
        "until": format_timestamp(row["until"]),
        "reason": row["reason"],
        "status": status,
        "created_by": row["created_by"],
        "created_at": format_timestamp(row["created_at"]),
        "revoked_by": row["revoked_by"],
        "revoke_reason": row["revoke_reason"],
        "version": int(row["version"]),
    }


@router.get(
    "",
    response_model=SuppressionPage,
    responses=problem_responses(),
    summary="Suppressions, newest first; `active=true`: those holding now",
)
async def list_suppressions(
    who: SuppressionReader,
    read_side: ReadSideDep,
    account_id: Annotated[UUID | None, Query()] = None,
    rule: Annotated[str | None, Query(pattern=r"^[a-z_]{1,64}$")] = None,
    active: Annotated[bool | None, Query()] = None,
    limit: Limit = PAGE_SIZE_DEFAULT,
    cursor: Cursor = None,
) -> Response:
    now = datetime.now().astimezone()
    conditions: list[sql.Composable] = []
    params: dict[str, Any] = {"limit": limit + 1, "now": now}
    if account_id is not None:
        conditions.append(sql.SQL("account_id = %(account_id)s"))
        params["account_id"] = account_id
    if rule is not None:
        conditions.append(sql.SQL("rule = %(rule)s"))
        params["rule"] = rule
    if active is True:
        conditions.append(sql.SQL("status = 'active' AND until > %(now)s"))
    elif active is False:
        conditions.append(sql.SQL("(status <> 'active' OR until <= %(now)s)"))
    if cursor is not None:
        created_at, last = decode_cursor(cursor, SUPPRESSIONS_CURSOR, 2)
        try:
            params["after_at"] = datetime.fromisoformat(str(created_at))
            params["after_id"] = UUID(str(last))
        except ValueError:
            raise QueryInvalid("cursor", "not a cursor of this list") from None
        conditions.append(sql.SQL("(created_at, suppression_id) < (%(after_at)s, %(after_id)s)"))
    where = sql.SQL(" WHERE ") + sql.SQL(" AND ").join(conditions) if conditions else sql.SQL("")
    query = sql.SQL(
        "SELECT {columns} FROM {table}{where} "
        "ORDER BY created_at DESC, suppression_id DESC LIMIT %(limit)s"
    ).format(columns=sql.SQL(COLUMNS), table=sql.Identifier(SCHEMA, "suppressions"), where=where)
    rows = await read_side.store.fetch_all(query, params)
    return json_reply(page_reply(rows, limit, lambda row: suppression_view(row, now), _cursor_of))


def _cursor_of(row: dict[str, Any]) -> str:
    return encode_cursor(
        SUPPRESSIONS_CURSOR, [row["created_at"].isoformat(), str(row["suppression_id"])]
    )
