"""Reply shapes, for the OpenAPI document (routes send orjson-encoded bodies directly)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field


class AccountOut(BaseModel):
    account_id: str
    owner: str
    branch: str
    version: int
    balance: str
    available_balance: str
    overdraft_limit: str
    currency: str
    status: Literal["open", "frozen", "closed"]


class MovementOut(BaseModel):
    transaction_id: str
    account_id: str
    version: int
    balance: str
    currency: str


class TransferSide(BaseModel):
    """One side of a transfer. A teller sees the state of accounts of its own branch only:
    another branch's receiving account shows `version` and `balance` as null."""

    account_id: str
    version: int | None
    balance: str | None


class TransferOut(BaseModel):
    transaction_id: str
    currency: str
    model_config = ConfigDict(populate_by_name=True)

    from_: TransferSide = Field(alias="from")
    to: TransferSide


class BatchResult(BaseModel):
    index: int
    status: Literal["ok", "error", "held_for_review"]
    transaction_id: str | None = None
    replayed: bool | None = None
    code: str | None = None
    detail: str | None = None
    # held_for_review: the hold screening made, its case and the rule that stopped it.
    hold_id: str | None = None
    case_id: str | None = None
    rule: str | None = None


class BatchOut(BaseModel):
    results: list[BatchResult]


class HoldOut(BaseModel):
    hold_id: str
    account_id: str
    to_account_id: str | None
    amount: str
    currency: str
    status: Literal["pending", "captured", "voided", "expired"]
    expires_at: str
    version: int
    balance: str
    available_balance: str
    captured_amount: str | None = None
    transaction_id: str | None = None


class ReversalAccount(BaseModel):
    account_id: str
    version: int
    balance: str


class ReversalOut(BaseModel):
    transaction_id: str
    reverses: str
    amount: str
    currency: str
    accounts: list[ReversalAccount]


class HeldForReviewOut(BaseModel):
    """202: screening held the command for compliance review; nothing has moved yet."""

    status: Literal["held_for_review"]
    hold_id: str
    case_id: str
    rule: Literal["screening_amount", "screening_watchlist"]
    transaction_id: str


class ReviewDecisionOut(BaseModel):
    """The case after a release or a reject, with the outcome of its hold."""

    case_id: str
    status: str
    resolution: str | None
    hold: HoldOut


# The 202 of a command screening held for review, for the routes screening looks at.
HELD_FOR_REVIEW_RESPONSE: dict[int | str, dict[str, Any]] = {
    202: {"model": HeldForReviewOut, "description": "Held for compliance review"}
}
