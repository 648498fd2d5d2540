"""Holds and reversals: place, capture (all or part), void; reverse a transaction.

A hold's id is its placing command's id; the capture, void or reversal of it names only
that id, and the accounts it acts on come from what the store recorded (application/
lookups.py), never from the request body.
"""

from __future__ import annotations

import asyncio
from typing import Annotated
from uuid import UUID

from fastapi import APIRouter, Depends, Request, Response

from application.commands import CaptureHold, ReverseTransaction, VoidHold
from application.ledger import Ledger
from application.lookups import HoldRef, find_hold, find_original
from domain.errors import Forbidden, HoldNotFound
from domain.ids import derived_id
from domain.money import parse_money
from interfaces.api.command.deps import (
    CommandsDep,
    IdempotencyKeyHeader,
    execute,
    outcome_reply,
    submission,
)
from interfaces.api.command.responses import HELD_FOR_REVIEW_RESPONSE, HoldOut, ReversalOut
from interfaces.api.command.routes.accounts import MONEY_PROBLEMS
from interfaces.api.command.schemas import CaptureIn, HoldIn, ReversalIn, VoidIn, resolve_id
from interfaces.api.http.auth import Principal, require
from interfaces.api.http.deps import SettingsDep
from interfaces.api.http.json_body import JsonBodyRoute
from interfaces.api.http.problems import problem_responses
from interfaces.api.http.roles import Role

router = APIRouter(tags=["holds and reversals"], route_class=JsonBodyRoute)

Placer = Annotated[Principal, Depends(require("hold.place"))]
Capturer = Annotated[Principal, Depends(require("hold.capture"))]
Voider = Annotated[Principal, Depends(require("hold.void"))]
Reverser = Annotated[Principal, Depends(require("transaction.reverse"))]

HOLD_PROBLEMS = ("hold_not_found", "hold_not_pending", "hold_under_review", "account_frozen")


async def _ledger(request: Request) -> Ledger:
    ledger: Ledger = request.app.state.ledger
    return ledger


LedgerDep = Annotated[Ledger, Depends(_ledger)]


async def _find_hold(ledger: Ledger, hold_id: UUID, who: Principal) -> HoldRef:
    """The hold's placing; for a teller, a hold that does not exist is refused as one of
    another branch is (403), so a teller learns nothing of other branches' holds."""
    try:
        return await asyncio.to_thread(find_hold, ledger, hold_id)
    except HoldNotFound:
        if who.role is Role.TELLER:
            raise Forbidden("tellers may act only on holds of their own branch") from None
        raise


@router.post(
    "/v1/holds",
    status_code=201,
    response_model=HoldOut,
    responses={**problem_responses(*MONEY_PROBLEMS), **HELD_FOR_REVIEW_RESPONSE},
    summary="Place a hold: reserve money on an account until it is captured, voided or expires",
)
async def place_hold(
    body: HoldIn,
    who: Placer,
    commands: CommandsDep,
    settings: SettingsDep,
    idempotency_key: IdempotencyKeyHeader = None,
) -> Response:
    hold_id = resolve_id(body.transaction_id, idempotency_key, who.subject)
    command = body.to_command(hold_id, settings.amount_max)
    return outcome_reply(await execute(commands, "hold.place", submission(command, who)), 201)


@router.post(
    "/v1/holds/{hold_id}/capture",
    response_model=HoldOut,
    responses=problem_responses(
        *HOLD_PROBLEMS, "hold_expired", "transaction_conflict", "invalid_amount"
    ),
    summary="Capture a hold, all of it or part (the rest is released)",
)
async def capture_hold(
    hold_id: UUID,
    who: Capturer,
    commands: CommandsDep,
    ledger: LedgerDep,
    settings: SettingsDep,
    body: CaptureIn | None = None,
    idempotency_key: IdempotencyKeyHeader = None,
) -> Response:
    body = body or CaptureIn()
    hold = await _find_hold(ledger, hold_id, who)
    given = body.transaction_id
    if given is None and idempotency_key is None:
        given = derived_id(f"{hold_id}:capture")
    transaction_id = resolve_id(given, idempotency_key, who.subject)
    amount_minor = None
    if body.amount is not None:
        amount_minor = parse_money(
            body.amount, hold.currency, amount_max_major=settings.amount_max
        ).amount_minor
    command = CaptureHold(
        hold_id, hold.account_id, hold.to_account_id, transaction_id, amount_minor
    )
    return outcome_reply(await execute(commands, "hold.capture", submission(command, who)), 200)


@router.post(
    "/v1/holds/{hold_id}/void",
    response_model=HoldOut,
    responses=problem_responses(*HOLD_PROBLEMS, "transaction_conflict"),
    summary="Void a pending hold: nothing moves, the money is available again",
)
async def void_hold(
    hold_id: UUID,
    body: VoidIn,
    who: Voider,
    commands: CommandsDep,
    ledger: LedgerDep,
    idempotency_key: IdempotencyKeyHeader = None,
) -> Response:
    hold = await _find_hold(ledger, hold_id, who)
    given = body.transaction_id
    if given is None and idempotency_key is None:
        given = derived_id(f"{hold_id}:void")
    transaction_id = resolve_id(given, idempotency_key, who.subject)
    command = VoidHold(hold_id, hold.account_id, transaction_id, body.reason)
    return outcome_reply(await execute(commands, "hold.void", submission(command, who)), 200)


@router.post(
    "/v1/transactions/{transaction_id}/reversal",
    status_code=201,
    response_model=ReversalOut,
    responses=problem_responses(
        "transaction_not_found",
        "reversal_exceeds_original",
        "not_reversible",
        *MONEY_PROBLEMS,
    ),
    summary="Reverse a transaction, all that is left of it or part, as a new transaction",
)
async def reverse_transaction(
    transaction_id: UUID,
    body: ReversalIn,
    who: Reverser,
    commands: CommandsDep,
    ledger: LedgerDep,
    settings: SettingsDep,
    idempotency_key: IdempotencyKeyHeader = None,
) -> Response:
    original = await asyncio.to_thread(find_original, ledger, transaction_id)
    reversal_id = resolve_id(body.transaction_id, idempotency_key, who.subject)
    amount_minor = None
    if body.amount is not None:
        amount_minor = parse_money(
            body.amount, original.currency, amount_max_major=settings.amount_max
        ).amount_minor
    command = ReverseTransaction(original, reversal_id, body.reason, amount_minor)
    return outcome_reply(
        await execute(commands, "transaction.reverse", submission(command, who)), 201
    )
