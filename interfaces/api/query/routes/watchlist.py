"""`GET /v1/watchlist`: the accounts on the watchlist (or, with `listed=false`, those
taken off it), from the `watchlist` projection."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Annotated, Any, Final
from uuid import UUID

from fastapi import APIRouter, Depends, Query
from psycopg import sql
from pydantic import BaseModel
from starlette.responses import Response

from infrastructure.readmodels.schema import SCHEMA
from interfaces.api.http.auth import Principal, require
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
from interfaces.api.query.views import Actor, iso_utc, json_reply

router = APIRouter(prefix="/v1/watchlist", tags=["watchlist"])

WatchlistReader = Annotated[Principal, Depends(require("watchlist.read"))]

WATCHLIST_CURSOR: Final = "watchlist"
PAGE: Final = sql.SQL(
    "SELECT account_id, listed, reason, changed_at, changed_by, changed_by_role, version "
    "FROM {schema}.watchlist WHERE listed = %(listed)s AND account_id > %(after)s "
    "ORDER BY account_id LIMIT %(limit)s"
).format(schema=sql.Identifier(SCHEMA))


class WatchlistEntryView(BaseModel):
    account_id: str
    listed: bool
    reason: str
    changed_at: str
    changed_by: Actor
    version: int


class WatchlistPage(BaseModel):
    items: list[WatchlistEntryView]
    next_cursor: str | None


def entry_view(row: Mapping[str, Any]) -> dict[str, Any]:
    return {
        "account_id": str(row["account_id"]),
        "listed": bool(row["listed"]),
        "reason": row["reason"],
        "changed_at": iso_utc(row["changed_at"]),
        "changed_by": {"subject": row["changed_by"], "role": row["changed_by_role"]},
        "version": int(row["version"]),
    }


@router.get(
    "",
    response_model=WatchlistPage,
    responses=problem_responses(),
    summary="Accounts on the watchlist (`listed=false`: those taken off it), by account id",
)
async def list_watchlist(
    who: WatchlistReader,
    read_side: ReadSideDep,
    listed: Annotated[bool, Query(description="false: the entries taken off the list")] = True,
    limit: Limit = PAGE_SIZE_DEFAULT,
    cursor: Cursor = None,
) -> Response:
    after = UUID(int=0)
    if cursor is not None:
        (last,) = decode_cursor(cursor, WATCHLIST_CURSOR, 1)
        try:
            after = UUID(str(last))
        except ValueError:
            raise QueryInvalid("cursor", "not a cursor of this list") from None
    rows = await read_side.store.fetch_all(
        PAGE, {"listed": listed, "after": after, "limit": limit + 1}
    )
    return json_reply(page_reply(rows, limit, entry_view, _cursor))


def _cursor(row: Mapping[str, Any]) -> str:
    return encode_cursor(WATCHLIST_CURSOR, [str(row["account_id"])])
