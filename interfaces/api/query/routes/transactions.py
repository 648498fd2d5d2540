"""An account's statement: its movements, newest first, from `readmodel.transactions`."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Final
from uuid import UUID

from fastapi import APIRouter, Query
from starlette.responses import Response

from infrastructure.readmodels.freshness import freshness_deadline, wait_for_projection
from infrastructure.readmodels.readers.accounts import account_branch, account_opened
from infrastructure.readmodels.readers.transactions import (
    StatementFilters,
    StatementLine,
    statement_page,
    statement_reached,
)
from infrastructure.readmodels.schema import ACCOUNTS_CHANNEL, TRANSACTIONS_CHANNEL
from interfaces.api.http.auth import check_branch, missing_account
from interfaces.api.http.deps import json_reply
from interfaces.api.http.instants import Instant
from interfaces.api.http.problems import problem_responses
from interfaces.api.query.deps import MinVersion, ReadSide, ReadSideDep
from interfaces.api.query.pagination import (
    PAGE_SIZE_DEFAULT,
    Cursor,
    Limit,
    QueryInvalid,
    decode_cursor,
    encode_cursor,
    page_reply,
)
from interfaces.api.query.routes.accounts import Reader
from interfaces.api.query.views import Direction, StatementPage, statement_line_view

router = APIRouter(prefix="/v1/accounts", tags=["accounts"])

STATEMENT_CURSOR: Final = "statement"

From = Annotated[
    Instant | None,
    Query(alias="from", description="ISO 8601 with a zone; lines at or after this time."),
]
To = Annotated[
    Instant | None,
    Query(description="ISO 8601 with a zone; lines before this time."),
]


@router.get(
    "/{account_id}/transactions",
    response_model=StatementPage,
    responses=problem_responses("account_not_found", "projection_lagging"),
    summary="An account's statement lines, newest first",
)
async def list_transactions(
    account_id: UUID,
    who: Reader,
    read_side: ReadSideDep,
    from_: From = None,
    to: To = None,
    direction: Annotated[Direction | None, Query()] = None,
    min_version: MinVersion = None,
    limit: Limit = PAGE_SIZE_DEFAULT,
    cursor: Cursor = None,
) -> Response:
    if from_ is not None and to is not None and from_ > to:
        raise QueryInvalid("from", "must not be after `to`")
    after = _statement_after(cursor)
    deadline = freshness_deadline()
    branch = await _account_branch(read_side, account_id, min_version, deadline)
    if branch is None:
        raise missing_account(who, account_id)
    check_branch(who, branch)
    if min_version is not None:
        await _statement_reached(read_side, account_id, min_version, deadline)
    filters: StatementFilters = {"from_": from_, "to": to, "direction": direction}
    rows = await statement_page(read_side.store, account_id, filters, after, limit)
    return json_reply(page_reply(rows, limit, statement_line_view, _statement_cursor))


async def _account_branch(
    read_side: ReadSide, account_id: UUID, min_version: int | None, deadline: float
) -> str | None:
    """The account's branch (to scope tellers); with `min_version`, wait for the account."""

    async def branch_of() -> str | None:
        return await account_branch(read_side.store, account_id)

    branch = await branch_of()
    if branch is not None or min_version is None:
        return branch
    if not await account_opened(read_side.store, account_id):
        return None  # no wait can find it
    return await wait_for_projection(
        read_side.waiters, ACCOUNTS_CHANNEL, account_id, branch_of, deadline=deadline
    )


async def _statement_reached(
    read_side: ReadSide, account_id: UUID, version: int, deadline: float
) -> None:
    async def reached() -> bool | None:
        return True if await statement_reached(read_side.store, account_id, version) else None

    await wait_for_projection(
        read_side.waiters, TRANSACTIONS_CHANNEL, account_id, reached, deadline=deadline
    )


def _statement_after(cursor: str | None) -> tuple[datetime, int] | None:
    if cursor is None:
        return None
    occurred_at, version = decode_cursor(cursor, STATEMENT_CURSOR, 2)
    try:
        moment = datetime.fromisoformat(occurred_at)
    except (TypeError, ValueError):
        raise QueryInvalid("cursor", "not a cursor of this list") from None
    if moment.tzinfo is None or isinstance(version, bool) or not isinstance(version, int):
        raise QueryInvalid("cursor", "not a cursor of this list")
    return moment, version


def _statement_cursor(row: StatementLine) -> str:
    return encode_cursor(STATEMENT_CURSOR, [row["occurred_at"].isoformat(), row["version"]])
