"""Account routes of the query API: one account, the list, and an account's statement."""

from __future__ import annotations

from typing import Annotated, Final
from uuid import UUID

from fastapi import APIRouter, Depends, Query
from starlette.responses import Response

from domain.money import CURRENCY_EXPONENTS
from domain.text import BRANCH_PATTERN
from infrastructure.readmodels.freshness import freshness_deadline, wait_for_projection
from infrastructure.readmodels.readers.accounts import (
    AccountRecord,
    account_opened,
    accounts_page,
    fetch_account,
)
from infrastructure.readmodels.schema import ACCOUNTS_CHANNEL
from interfaces.api.http.auth import Principal, check_branch, missing_account, require
from interfaces.api.http.deps import json_reply
from interfaces.api.http.problems import problem_responses
from interfaces.api.http.roles import Role
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
from interfaces.api.query.views import AccountPage, AccountStatus, AccountView, account_view

router = APIRouter(prefix="/v1/accounts", tags=["accounts"])

Reader = Annotated[Principal, Depends(require("account.read"))]

BranchFilter = Annotated[
    str | None,
    Query(pattern=f"^{BRANCH_PATTERN.pattern}$", description="Tellers: their own branch only."),
]
StatusFilter = Annotated[AccountStatus | None, Query()]
CurrencyFilter = Annotated[str | None, Query(pattern=r"^[A-Z]{3}$", description="ISO 4217")]

ACCOUNTS_CURSOR: Final = "accounts"


@router.get(
    "/{account_id}",
    response_model=AccountView,
    responses=problem_responses("account_not_found", "projection_lagging"),
    summary="One account's read model, with `projected_version`",
)
async def get_account(
    account_id: UUID, who: Reader, read_side: ReadSideDep, min_version: MinVersion = None
) -> Response:
    record = await read_account(read_side, who, account_id, min_version)
    return json_reply(account_view(record))


@router.get(
    "",
    response_model=AccountPage,
    responses=problem_responses(),
    summary="Accounts, filtered by branch, status and currency; tellers see their branch only",
)
async def list_accounts(
    who: Reader,
    read_side: ReadSideDep,
    branch: BranchFilter = None,
    status: StatusFilter = None,
    currency: CurrencyFilter = None,
    limit: Limit = PAGE_SIZE_DEFAULT,
    cursor: Cursor = None,
) -> Response:
    if currency is not None and currency not in CURRENCY_EXPONENTS:
        raise QueryInvalid("currency", f"unknown currency {currency}")
    filters = {"branch": scoped_branch(who, branch), "status": status, "currency": currency}
    after = _account_after(cursor)
    records = await accounts_page(read_side.store, filters, after, limit)
    return json_reply(page_reply(records, limit, account_view, _account_cursor))


async def read_account(
    read_side: ReadSide, who: Principal, account_id: UUID, min_version: int | None
) -> AccountRecord:
    """The account from the cache or PostgreSQL, at `min_version` at least (waiting if
    needed); 403 for a teller of another branch, 404 if the event store has no such
    account (a teller: 403, as for another branch's)."""
    cached = await read_side.cache.get(account_id)
    if cached is not None:
        check_branch(who, cached.branch)
        if min_version is None or cached.version >= min_version:
            return cached
    if min_version is None:
        record = await fetch_account(read_side.store, account_id)
        if record is None:
            raise missing_account(who, account_id)
        check_branch(who, record.branch)
        return record
    wanted = min_version
    projected = await fetch_account(read_side.store, account_id)
    if projected is None:
        if not await account_opened(read_side.store, account_id):
            raise missing_account(who, account_id)  # at once: no wait can find it
    else:
        check_branch(who, projected.branch)
        if projected.version >= wanted:
            return projected

    async def caught_up() -> AccountRecord | None:
        record = await fetch_account(read_side.store, account_id)
        if record is None:
            return None
        # Refuse a teller of another branch at once instead of after the wait.
        check_branch(who, record.branch)
        return record if record.version >= wanted else None

    return await wait_for_projection(
        read_side.waiters, ACCOUNTS_CHANNEL, account_id, caught_up, deadline=freshness_deadline()
    )


def scoped_branch(who: Principal, branch: str | None) -> str | None:
    """Tellers list their own branch: implicitly without a filter, 403 for another."""
    if who.role is not Role.TELLER:
        return branch
    if branch is None:
        return who.branch
    check_branch(who, branch)
    return branch


def _account_after(cursor: str | None) -> UUID | None:
    if cursor is None:
        return None
    (last,) = decode_cursor(cursor, ACCOUNTS_CURSOR, 1)
    try:
        return UUID(str(last))
    except ValueError:
        raise QueryInvalid("cursor", "not a cursor of this list") from None


def _account_cursor(record: AccountRecord) -> str:
    return encode_cursor(ACCOUNTS_CURSOR, [str(record.account_id)])
