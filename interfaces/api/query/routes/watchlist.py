"""`GET /v1/watchlist`: the accounts on the watchlist (or, with `listed=false`, those
taken off it), from the `watchlist` projection."""

from __future__ import annotations

from typing import Annotated, Any, Final
from uuid import UUID

from fastapi import APIRouter, Depends, Query
from pydantic import BaseModel
from starlette.responses import Response

from domain.integrity import format_timestamp
from infrastructure.readmodels.readers.watchlist import WatchlistRow, watchlist_page
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
from interfaces.api.query.views import Actor

router = APIRouter(prefix="/v1/watchlist", tags=["watchlist"])

WatchlistReader = Annotated[Principal, Depends(require("watchlist.read"))]

WATCHLIST_CURSOR: Final = "watchlist"


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


def entry_view(row: WatchlistRow) -> dict[str, Any]:
    """A watchlist entry as the contract shows it."""
    return {
        "account_id": str(row["account_id"]),
        "listed": bool(row["listed"]),
        "reason": row["reason"],
        "changed_at": format_timestamp(row["changed_at"]),
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
    rows = await watchlist_page(read_side.store, listed, after, limit)
    return json_reply(page_reply(rows, limit, entry_view, _cursor))


def _cursor(row: WatchlistRow) -> str:
    return encode_cursor(WATCHLIST_CURSOR, [str(row["account_id"])])
