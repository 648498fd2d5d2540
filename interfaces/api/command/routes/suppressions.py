"""Suppression routes of the command API: compliance stops a rule's hits on one account
from opening cases until a time, with a reason, and revokes that. Each is an event in the
store (audited like every other); the hits while it holds are alerts with status
`suppressed`."""

from __future__ import annotations

import uuid
from typing import Annotated, Literal
from uuid import UUID

from fastapi import APIRouter, Body, Depends, Query, Response
from pydantic import BaseModel

from application.compliance import suppression_body
from domain.errors import ValidationFailed
from domain.integrity import Actor
from domain.rules.config import RULES
from interfaces.api.command.routes.cases import ComplianceDep, counted
from interfaces.api.command.schemas import Body as StrictBody
from interfaces.api.http.auth import Principal, require
from interfaces.api.http.deps import json_reply
from interfaces.api.http.instants import Instant
from interfaces.api.http.json_body import JsonBodyRoute
from interfaces.api.http.middleware import current_correlation_id
from interfaces.api.http.problems import problem_responses
from interfaces.api.http.text import WatchlistReason

router = APIRouter(prefix="/v1/suppressions", tags=["suppressions"], route_class=JsonBodyRoute)

Manager = Annotated[Principal, Depends(require("suppression.manage"))]
RuleName = Literal[
    "large_transaction",
    "structuring",
    "velocity",
    "pass_through",
    "new_account_outflow",
    "dormant_reactivation",
    "watchlist",
]
assert set(RuleName.__args__) == set(RULES), "one list of rules"  # type: ignore[attr-defined]


class SuppressionIn(StrictBody):
    account_id: UUID
    rule: RuleName
    until: Instant
    reason: WatchlistReason


class RevokeIn(StrictBody):
    reason: WatchlistReason


class SuppressionOut(BaseModel):
    suppression_id: str
    account_id: str
    rule: str
    until: str
    reason: str
    status: Literal["active", "revoked"]
    version: int
    created_at: str
    updated_at: str


def _context(who: Principal) -> tuple[Actor, str]:
    return Actor(who.subject, who.role.value), current_correlation_id() or str(uuid.uuid4())


@router.post(
    "",
    status_code=201,
    response_model=SuppressionOut,
    responses=problem_responses("account_not_found"),
    summary="Suppress a rule's cases for one account until a time (hits stay alerts)",
)
def add(body: SuppressionIn, who: Manager, compliance: ComplianceDep) -> Response:
    actor, correlation_id = _context(who)
    suppression = counted(
        "suppression.add",
        lambda: compliance.add_suppression(
            body.account_id, body.rule, body.until, body.reason, actor, correlation_id
        ),
    )
    return json_reply(suppression_body(suppression), 201)


@router.delete(
    "/{suppression_id}",
    response_model=SuppressionOut,
    responses=problem_responses("suppression_not_found"),
    summary="Revoke a suppression; the reason comes in the body or `?reason=`",
)
def revoke(
    suppression_id: UUID,
    who: Manager,
    compliance: ComplianceDep,
    body: Annotated[RevokeIn | None, Body()] = None,
    reason: Annotated[WatchlistReason | None, Query(description="When no body is sent.")] = None,
) -> Response:
    given = body.reason if body is not None else reason
    if given is None:
        raise ValidationFailed("revoking a suppression needs a reason", "body.reason")
    actor, correlation_id = _context(who)
    suppression = counted(
        "suppression.revoke",
        lambda: compliance.revoke_suppression(suppression_id, given, actor, correlation_id),
    )
    return json_reply(suppression_body(suppression), 200)
