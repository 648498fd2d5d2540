"""Watchlist routes of the command API: compliance lists and unlists accounts. The
watchlist rule sees each change as of the event's position in the store."""

from __future__ import annotations

import uuid
from typing import Annotated
from uuid import UUID

from fastapi import APIRouter, Body, Depends, Query, Response
from pydantic import BaseModel

from application.compliance import watchlist_body
from domain.errors import ValidationFailed
from domain.integrity import Actor
from interfaces.api.command.routes.cases import ComplianceDep, counted
from interfaces.api.command.schemas import Body as StrictBody
from interfaces.api.http.auth import Principal, require
from interfaces.api.http.deps import json_reply
from interfaces.api.http.json_body import JsonBodyRoute
from interfaces.api.http.middleware import current_correlation_id
from interfaces.api.http.problems import problem_responses
from interfaces.api.http.text import WatchlistReason

router = APIRouter(prefix="/v1/watchlist", tags=["watchlist"], route_class=JsonBodyRoute)

Manager = Annotated[Principal, Depends(require("watchlist.manage"))]


class WatchlistAddIn(StrictBody):
    account_id: UUID
    reason: WatchlistReason


class WatchlistRemoveIn(StrictBody):
    reason: WatchlistReason
    account_id: UUID | None = None


class WatchlistEntryOut(BaseModel):
    account_id: str
    listed: bool
    reason: str
    version: int
    changed_at: str


def _context(who: Principal) -> tuple[Actor, str]:
    return Actor(who.subject, who.role.value), current_correlation_id() or str(uuid.uuid4())


@router.post(
    "",
    status_code=201,
    response_model=WatchlistEntryOut,
    responses=problem_responses("account_not_found", "already_listed"),
    summary="Put an account on the watchlist",
)
def add(body: WatchlistAddIn, who: Manager, compliance: ComplianceDep) -> Response:
    actor, correlation_id = _context(who)
    entry = counted(
        "watchlist.add",
        lambda: compliance.add_to_watchlist(body.account_id, body.reason, actor, correlation_id),
    )
    return json_reply(watchlist_body(entry), 201)


@router.delete(
    "/{account_id}",
    response_model=WatchlistEntryOut,
    responses=problem_responses("watchlist_entry_not_found"),
    summary="Take an account off the watchlist; the reason comes in the body or `?reason=`",
)
def remove(
    account_id: UUID,
    who: Manager,
    compliance: ComplianceDep,
    body: Annotated[WatchlistRemoveIn | None, Body()] = None,
    reason: Annotated[WatchlistReason | None, Query(description="When no body is sent.")] = None,
) -> Response:
    if body is not None and body.account_id not in (None, account_id):
        raise ValidationFailed(
            "account_id in the body names another account than the path", "body.account_id"
        )
    given = body.reason if body is not None else reason
    if given is None:
        raise ValidationFailed("removing an account needs a reason", "body.reason")
    actor, correlation_id = _context(who)
    entry = counted(
        "watchlist.remove",
        lambda: compliance.remove_from_watchlist(account_id, given, actor, correlation_id),
    )
    return json_reply(watchlist_body(entry), 200)
