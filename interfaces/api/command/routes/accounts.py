"""Account routes of the command API: open, deposit, withdraw, freeze, unfreeze, close."""

from __future__ import annotations

from typing import Annotated, Literal
from uuid import UUID

from fastapi import APIRouter, Depends, Response

from application.commands import ChangeStatus
from interfaces.api.command.deps import (
    CommandsDep,
    IdempotencyKeyHeader,
    execute,
    outcome_reply,
    submission,
)
from interfaces.api.command.responses import (
    HELD_FOR_REVIEW_RESPONSE,
    AccountOut,
    MovementOut,
)
from interfaces.api.command.schemas import (
    MovementIn,
    OpenAccountIn,
    StatusChangeIn,
    movement_command,
    resolve_id,
)
from interfaces.api.http.auth import Principal, require
from interfaces.api.http.deps import SettingsDep
from interfaces.api.http.json_body import JsonBodyRoute
from interfaces.api.http.problems import problem_responses

router = APIRouter(prefix="/v1/accounts", tags=["accounts"], route_class=JsonBodyRoute)

Opener = Annotated[Principal, Depends(require("account.open"))]
Depositor = Annotated[Principal, Depends(require("account.deposit"))]
Withdrawer = Annotated[Principal, Depends(require("account.withdraw"))]
Freezer = Annotated[Principal, Depends(require("account.freeze"))]
Unfreezer = Annotated[Principal, Depends(require("account.unfreeze"))]
Closer = Annotated[Principal, Depends(require("account.close"))]

MONEY_PROBLEMS = (
    "account_not_found",
    "insufficient_funds",
    "balance_limit_exceeded",
    "account_frozen",
    "account_closed",
    "transaction_conflict",
    "invalid_amount",
    "currency_mismatch",
    "unknown_currency",
)


@router.post(
    "",
    status_code=201,
    response_model=AccountOut,
    responses=problem_responses("transaction_conflict", "invalid_amount", "unknown_currency"),
    summary="Open an account",
)
async def open_account(
    body: OpenAccountIn,
    who: Opener,
    commands: CommandsDep,
    settings: SettingsDep,
    idempotency_key: IdempotencyKeyHeader = None,
) -> Response:
    account_id = resolve_id(None, idempotency_key, who.subject)
    command = body.to_command(account_id, settings.overdraft_max)
    outcome = await execute(commands, "account.open", submission(command, who))
    return outcome_reply(outcome, 201)


async def _movement(
    kind: Literal["deposit", "withdrawal"],
    account_id: UUID,
    body: MovementIn,
    who: Principal,
    commands: CommandsDep,
    settings: SettingsDep,
    idempotency_key: str | None,
) -> Response:
    transaction_id = resolve_id(body.transaction_id, idempotency_key, who.subject)
    command = movement_command(kind, account_id, body, transaction_id, settings.amount_max)
    action = "account.deposit" if kind == "deposit" else "account.withdraw"
    return outcome_reply(await execute(commands, action, submission(command, who)), 201)


@router.post(
    "/{account_id}/deposits",
    status_code=201,
    response_model=MovementOut,
    responses=problem_responses(*MONEY_PROBLEMS),
    summary="Deposit into an account",
)
async def deposit(
    account_id: UUID,
    body: MovementIn,
    who: Depositor,
    commands: CommandsDep,
    settings: SettingsDep,
    idempotency_key: IdempotencyKeyHeader = None,
) -> Response:
    return await _movement("deposit", account_id, body, who, commands, settings, idempotency_key)


@router.post(
    "/{account_id}/withdrawals",
    status_code=201,
    response_model=MovementOut,
    responses={
        **problem_responses(*(p for p in MONEY_PROBLEMS if p != "balance_limit_exceeded")),
        **HELD_FOR_REVIEW_RESPONSE,
    },
    summary="Withdraw from an account",
)
async def withdraw(
    account_id: UUID,
    body: MovementIn,
    who: Withdrawer,
    commands: CommandsDep,
    settings: SettingsDep,
    idempotency_key: IdempotencyKeyHeader = None,
) -> Response:
    return await _movement("withdrawal", account_id, body, who, commands, settings, idempotency_key)


async def _change_status(
    action: Literal["freeze", "unfreeze", "close"],
    account_id: UUID,
    body: StatusChangeIn,
    who: Principal,
    commands: CommandsDep,
) -> Response:
    command = ChangeStatus(account_id, action, body.reason)
    return outcome_reply(
        await execute(commands, f"account.{action}", submission(command, who)), 200
    )


STATUS_PROBLEMS = ("account_not_found", "account_frozen", "account_closed")


@router.post(
    "/{account_id}/freeze",
    response_model=AccountOut,
    responses=problem_responses(*STATUS_PROBLEMS),
    summary="Freeze an account: no money moves until it is unfrozen",
)
async def freeze(
    account_id: UUID, body: StatusChangeIn, who: Freezer, commands: CommandsDep
) -> Response:
    return await _change_status("freeze", account_id, body, who, commands)


@router.post(
    "/{account_id}/unfreeze",
    response_model=AccountOut,
    responses=problem_responses("account_not_found", "account_not_frozen", "account_closed"),
    summary="Unfreeze a frozen account",
)
async def unfreeze(
    account_id: UUID, body: StatusChangeIn, who: Unfreezer, commands: CommandsDep
) -> Response:
    return await _change_status("unfreeze", account_id, body, who, commands)


@router.post(
    "/{account_id}/close",
    response_model=AccountOut,
    responses=problem_responses(
        "account_not_found", "account_not_empty", "account_closed", "account_has_holds"
    ),
    summary="Close an account with a zero balance",
)
async def close(
    account_id: UUID, body: StatusChangeIn, who: Closer, commands: CommandsDep
) -> Response:
    return await _change_status("close", account_id, body, who, commands)
