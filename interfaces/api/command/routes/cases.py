"""Case routes of the command API: compliance works an alert's case; admin and
compliance may freeze the case's account."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from typing import Annotated, Literal, TypeVar, get_args
from uuid import UUID

from fastapi import APIRouter, Body, Depends, Request, Response
from pydantic import BaseModel

from application.commands import case_body
from application.compliance import Compliance
from domain.case import RESOLUTIONS, CaseAction
from domain.errors import DomainError
from domain.integrity import Actor
from infrastructure.metrics import record_command_outcome
from interfaces.api.command.responses import AccountOut
from interfaces.api.command.schemas import Body as StrictBody
from interfaces.api.http.auth import Principal, require
from interfaces.api.http.deps import json_reply
from interfaces.api.http.json_body import JsonBodyRoute
from interfaces.api.http.middleware import current_correlation_id
from interfaces.api.http.problems import problem_responses
from interfaces.api.http.text import Assignee, Note

router = APIRouter(prefix="/v1/cases", tags=["cases"], route_class=JsonBodyRoute)

Acknowledger = Annotated[Principal, Depends(require("case.acknowledge"))]
Assigner = Annotated[Principal, Depends(require("case.assign"))]
Escalator = Annotated[Principal, Depends(require("case.escalate"))]
Closer = Annotated[Principal, Depends(require("case.close"))]
Commenter = Annotated[Principal, Depends(require("case.comment"))]
AccountFreezer = Annotated[Principal, Depends(require("case.freeze_account"))]

Resolution = Literal["false_positive", "suspicious_activity_reported", "no_action"]
assert set(get_args(Resolution)) == set(RESOLUTIONS), "one list of resolutions"

T = TypeVar("T")


class AcknowledgeIn(StrictBody):
    note: Note | None = None


class AssignIn(StrictBody):
    assignee: Assignee
    note: Note | None = None
    # Only if nobody has the case: 409 `case_already_assigned` otherwise.
    if_unassigned: bool = False


class NoteIn(StrictBody):
    note: Note


class CloseIn(StrictBody):
    resolution: Resolution
    note: Note


class CaseOut(BaseModel):
    case_id: str
    alert_id: str
    account_id: str
    branch: str | None
    rule: str
    severity: str
    status: Literal["open", "acknowledged", "escalated", "closed"]
    assignee: str | None
    resolution: Resolution | None
    explanation: str
    version: int
    opened_at: str
    updated_at: str
    closed_at: str | None


async def _compliance(request: Request) -> Compliance:
    compliance: Compliance = request.app.state.compliance
    return compliance


ComplianceDep = Annotated[Compliance, Depends(_compliance)]

CASE_PROBLEMS = ("case_not_found", "invalid_transition")


def _correlation_id() -> str:
    return current_correlation_id() or str(uuid.uuid4())


def _actor(who: Principal) -> Actor:
    return Actor(who.subject, who.role.value)


def counted(command: str, work: Callable[[], T]) -> T:
    """Run one command and count its outcome; refusals leave through the problem handler."""
    try:
        result = work()
    except DomainError as error:
        record_command_outcome(command, error.code)
        raise
    record_command_outcome(command, "ok")
    return result


def _act(
    compliance: Compliance, case_id: UUID, action: CaseAction, who: Principal, **args: object
) -> Response:
    case = counted(
        f"case.{action.value}",
        lambda: compliance.act_on_case(case_id, action, _actor(who), _correlation_id(), **args),
    )
    return json_reply(case_body(case), 200)


@router.post(
    "/{case_id}/acknowledge",
    response_model=CaseOut,
    responses=problem_responses(*CASE_PROBLEMS),
    summary="Acknowledge an open case",
)
def acknowledge(
    case_id: UUID,
    who: Acknowledger,
    compliance: ComplianceDep,
    body: Annotated[AcknowledgeIn | None, Body()] = None,
) -> Response:
    note = body.note if body is not None else None
    return _act(compliance, case_id, CaseAction.ACKNOWLEDGE, who, note=note)


@router.post(
    "/{case_id}/assign",
    response_model=CaseOut,
    responses=problem_responses(*CASE_PROBLEMS, "case_already_assigned"),
    summary="Assign a case to an officer (any state but closed)",
)
def assign(case_id: UUID, body: AssignIn, who: Assigner, compliance: ComplianceDep) -> Response:
    return _act(
        compliance,
        case_id,
        CaseAction.ASSIGN,
        who,
        assignee=body.assignee,
        note=body.note,
        if_unassigned=body.if_unassigned,
    )


@router.post(
    "/{case_id}/escalate",
    response_model=CaseOut,
    responses=problem_responses(*CASE_PROBLEMS),
    summary="Escalate an acknowledged case, with a note",
)
def escalate(case_id: UUID, body: NoteIn, who: Escalator, compliance: ComplianceDep) -> Response:
    return _act(compliance, case_id, CaseAction.ESCALATE, who, note=body.note)


@router.post(
    "/{case_id}/close",
    response_model=CaseOut,
    responses=problem_responses(*CASE_PROBLEMS),
    summary="Close a case with a resolution and a note",
)
def close(case_id: UUID, body: CloseIn, who: Closer, compliance: ComplianceDep) -> Response:
    return _act(
        compliance, case_id, CaseAction.CLOSE, who, resolution=body.resolution, note=body.note
    )


@router.post(
    "/{case_id}/comment",
    response_model=CaseOut,
    responses=problem_responses(*CASE_PROBLEMS),
    summary="Comment on a case (any state but closed)",
)
def comment(case_id: UUID, body: NoteIn, who: Commenter, compliance: ComplianceDep) -> Response:
    return _act(compliance, case_id, CaseAction.COMMENT, who, note=body.note)


@router.post(
    "/{case_id}/freeze-account",
    response_model=AccountOut,
    responses=problem_responses(
        "case_not_found", "account_not_found", "account_frozen", "account_closed"
    ),
    summary="Freeze the case's account; the freeze's reason names the case",
)
def freeze_account(
    case_id: UUID, body: NoteIn, who: AccountFreezer, compliance: ComplianceDep
) -> Response:
    account = counted(
        "case.freeze_account",
        lambda: compliance.freeze_account_from_case(
            case_id, body.note, _actor(who), _correlation_id()
        ),
    )
    return json_reply(account, 200)
