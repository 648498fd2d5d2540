"""Compliance's answer to a command screening held for review: release it (the held
transfer, withdrawal or hold posts, under the transaction id its client gave) or reject it
(nothing moves). Either closes the case, in the same transaction as the hold's end."""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from typing import Annotated, Literal
from uuid import UUID

from fastapi import APIRouter, Depends, Request, Response

from application.commands import DecideReview
from application.compliance import Compliance
from application.ledger import Ledger
from domain.account import PendingHold
from domain.errors import InvalidTransition
from domain.ids import derived_id
from domain.screening import SCREENING_SEVERITIES
from interfaces.api.command.deps import (
    CommandsDep,
    IdempotencyKeyHeader,
    execute,
    outcome_reply,
    submission,
)
from interfaces.api.command.responses import ReviewDecisionOut
from interfaces.api.command.schemas import Body as StrictBody
from interfaces.api.command.schemas import resolve_id
from interfaces.api.http.auth import Principal, require
from interfaces.api.http.json_body import JsonBodyRoute
from interfaces.api.http.problems import problem_responses
from interfaces.api.http.text import Note

router = APIRouter(prefix="/v1/cases", tags=["cases"], route_class=JsonBodyRoute)

Releaser = Annotated[Principal, Depends(require("case.release"))]
Rejecter = Annotated[Principal, Depends(require("case.reject"))]

REVIEW_PROBLEMS = (
    "case_not_found",
    "invalid_transition",
    "hold_not_pending",
    "hold_expired",
    "insufficient_funds",
    "account_frozen",
    "transaction_conflict",
)


class DecisionIn(StrictBody):
    note: Note
    transaction_id: UUID | None = None


async def _services(request: Request) -> tuple[Ledger, Compliance]:
    return request.app.state.ledger, request.app.state.compliance


Services = Annotated[tuple[Ledger, Compliance], Depends(_services)]


@router.post(
    "/{case_id}/release",
    response_model=ReviewDecisionOut,
    responses=problem_responses(*REVIEW_PROBLEMS),
    summary="Release what screening held: it posts under its own transaction id",
)
async def release(
    case_id: UUID,
    body: DecisionIn,
    who: Releaser,
    commands: CommandsDep,
    services: Services,
    idempotency_key: IdempotencyKeyHeader = None,
) -> Response:
    return await _decide(case_id, "release", body, who, commands, services, idempotency_key)


@router.post(
    "/{case_id}/reject",
    response_model=ReviewDecisionOut,
    responses=problem_responses(*REVIEW_PROBLEMS),
    summary="Reject what screening held: the hold is voided, nothing moves",
)
async def reject(
    case_id: UUID,
    body: DecisionIn,
    who: Rejecter,
    commands: CommandsDep,
    services: Services,
    idempotency_key: IdempotencyKeyHeader = None,
) -> Response:
    return await _decide(case_id, "reject", body, who, commands, services, idempotency_key)


async def _decide(
    case_id: UUID,
    action: Literal["release", "reject"],
    body: DecisionIn,
    who: Principal,
    commands: CommandsDep,
    services: tuple[Ledger, Compliance],
    idempotency_key: str | None,
) -> Response:
    ledger, compliance = services
    case = await asyncio.to_thread(compliance.get_case, case_id)
    if case.rule not in SCREENING_SEVERITIES:
        raise InvalidTransition(f"case {case_id} is about an alert, not a held transaction")
    account = await asyncio.to_thread(ledger.get_account, UUID(case.account_id))
    hold = _review_hold(account.holds.values(), case_id)
    given = body.transaction_id
    if given is None and idempotency_key is None:
        given = derived_id(f"{case_id}:{action}")
    decision_id = resolve_id(given, idempotency_key, who.subject)
    payee = None if hold is None or hold.to_account_id is None else UUID(hold.to_account_id)
    command = DecideReview(
        case_id,
        account.id,
        payee,
        None if hold is None else UUID(hold.hold_id),
        decision_id,
        action,
        body.note,
    )
    outcome = await execute(commands, f"case.{action}", submission(command, who))
    return outcome_reply(outcome, 200)


def _review_hold(holds: Iterable[PendingHold], case_id: UUID) -> PendingHold | None:
    """The pending hold the case reviews, if it is still pending."""
    for hold in holds:
        if hold.review is not None and hold.review["case_id"] == str(case_id):
            return hold
    return None
