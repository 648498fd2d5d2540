"""Holds on the query API: one by id, and an account's, by status."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Final, Literal
from uuid import UUID

from fastapi import APIRouter, Query
from pydantic import BaseModel
from starlette.responses import Response

from domain.errors import HoldNotFound
from domain.integrity import format_timestamp
from domain.money import format_amount
from infrastructure.readmodels.readers.accounts import account_branch
from infrastructure.readmodels.readers.holds import fetch_hold, holds_page
from interfaces.api.http.auth import Principal, check_branch, missing_account
from interfaces.api.http.deps import json_reply
from interfaces.api.http.problems import problem_responses
from interfaces.api.http.roles import Role
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
from interfaces.api.query.routes.accounts import Reader

router = APIRouter(tags=["holds"])

HoldStatus = Literal["pending", "captured", "voided", "expired"]
HOLDS_CURSOR: Final = "holds"
# Who may see what screening compared (a teller sees only that a hold is under review).
REVIEW_READERS: Final = frozenset({Role.COMPLIANCE, Role.AUDITOR, Role.ADMIN})


class HoldView(BaseModel):
    hold_id: str
    account_id: str
    to_account_id: str | None
    amount: str
    currency: str
    status: HoldStatus
    reference: str | None
    expires_at: str
    placed_at: str
    ended_at: str | None
    captured_amount: str | None
    capture_transaction_id: str | None
    reason: str | None
    under_review: bool
    review: dict[str, Any] | None
    version: int


class HoldPage(BaseModel):
    items: list[HoldView]
    next_cursor: str | None


def hold_view(row: dict[str, Any], who: Principal) -> dict[str, Any]:
    currency = row["currency"]
    captured = row["captured_minor"]
    payee, capture = row["to_account_id"], row["capture_transaction_id"]
    ended = row["ended_at"]
    review = row["review"]
    return {
        "hold_id": str(row["hold_id"]),
        "account_id": str(row["account_id"]),
        "to_account_id": None if payee is None else str(payee),
        "amount": format_amount(row["amount_minor"], currency),
        "currency": currency,
        "status": row["status"],
        "reference": row["reference"],
        "expires_at": format_timestamp(row["expires_at"]),
        "placed_at": format_timestamp(row["placed_at"]),
        "ended_at": None if ended is None else format_timestamp(ended),
        "captured_amount": None if captured is None else format_amount(captured, currency),
        "capture_transaction_id": None if capture is None else str(capture),
        "reason": row["end_reason"],
        "under_review": review is not None,
        "review": review if who.role in REVIEW_READERS else None,
        "version": row["version"],
    }


@router.get(
    "/v1/holds/{hold_id}",
    response_model=HoldView,
    responses=problem_responses("hold_not_found"),
    summary="A hold, as the balances projection last saw it",
)
async def get_hold(hold_id: UUID, who: Reader, read_side: ReadSideDep) -> Response:
    row = await fetch_hold(read_side.store, hold_id)
    if row is None:
        if who.role is Role.TELLER:
            # As for accounts: a teller cannot tell a missing hold from another branch's.
            raise missing_account(who, hold_id)
        raise HoldNotFound(f"hold {hold_id} not found")
    check_branch(who, row["branch"])
    return json_reply(hold_view(row, who))


@router.get(
    "/v1/accounts/{account_id}/holds",
    response_model=HoldPage,
    responses=problem_responses("account_not_found"),
    summary="An account's holds, newest first, optionally by status",
)
async def list_holds(
    account_id: UUID,
    who: Reader,
    read_side: ReadSideDep,
    status: Annotated[HoldStatus | None, Query()] = None,
    limit: Limit = PAGE_SIZE_DEFAULT,
    cursor: Cursor = None,
) -> Response:
    after = _holds_after(cursor)
    branch = await account_branch(read_side.store, account_id)
    if branch is None:
        raise missing_account(who, account_id)
    check_branch(who, branch)
    rows = await holds_page(read_side.store, account_id, status, after, limit)
    return json_reply(page_reply(rows, limit, lambda row: hold_view(row, who), _holds_cursor))


def _holds_after(cursor: str | None) -> tuple[datetime, UUID] | None:
    if cursor is None:
        return None
    placed_at, hold_id = decode_cursor(cursor, HOLDS_CURSOR, 2)
    try:
        moment, last = datetime.fromisoformat(str(placed_at)), UUID(str(hold_id))
    except (TypeError, ValueError):
        raise QueryInvalid("cursor", "not a cursor of this list") from None
    if moment.tzinfo is None:
        raise QueryInvalid("cursor", "not a cursor of this list")
    return moment, last


def _holds_cursor(row: dict[str, Any]) -> str:
    return encode_cursor(HOLDS_CURSOR, [row["placed_at"].isoformat(), str(row["hold_id"])])
