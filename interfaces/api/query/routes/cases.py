"""Case routes of the query API: the list with filters, one case with its full history,
and counts for the dashboard; all from the `cases` projection."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Final, Literal
from uuid import UUID

from fastapi import APIRouter, Depends, Query
from pydantic import BaseModel
from starlette.responses import Response

from domain.case import CaseStatus
from domain.errors import CaseNotFound
from domain.integrity import format_timestamp
from domain.text import BRANCH_PATTERN
from infrastructure.readmodels.freshness import freshness_deadline, wait_for_projection
from infrastructure.readmodels.readers.cases import (
    CaseRow,
    CaseStepRow,
    case_history,
    cases_page,
    fetch_case,
)
from infrastructure.readmodels.readers.cases import (
    case_counts as read_case_counts,
)
from interfaces.api.http.auth import Principal, require
from interfaces.api.http.deps import json_reply
from interfaces.api.http.instants import Instant
from interfaces.api.http.problems import problem_responses
from interfaces.api.http.text import FilterText
from interfaces.api.query.deps import MinVersion, ReadSideDep
from interfaces.api.query.pagination import (
    PAGE_SIZE_DEFAULT,
    Cursor,
    Limit,
    QueryInvalid,
    decode_cursor,
    encode_cursor,
    page_reply,
)
from interfaces.api.query.views import Actor

router = APIRouter(prefix="/v1/cases", tags=["cases"])

CasesReader = Annotated[Principal, Depends(require("cases.read"))]

CaseStatusName = Literal["open", "acknowledged", "escalated", "closed"]
SEVERITIES: Final = ("critical", "high", "medium", "low")
CASES_CURSOR: Final = "cases"
# Nobody notifies on this channel: a `min_version` wait re-checks on the poll alone.
CASES_CHANNEL: Final = "readmodel_cases"
# A case's history is its steps; thousands of comments would be abuse, not work.
HISTORY_ENTRIES_MAX: Final = 10_000


From = Annotated[
    Instant | None,
    Query(alias="from", description="ISO 8601 with a zone; cases opened at or after this."),
]
To = Annotated[Instant | None, Query(description="ISO 8601 with a zone; cases opened before this.")]
TextFilter = Annotated[FilterText | None, Query()]


class CaseView(BaseModel):
    case_id: str
    alert_id: str
    account_id: str
    branch: str | None
    rule: str
    severity: str
    status: CaseStatusName
    assignee: str | None
    resolution: str | None
    explanation: str
    version: int
    opened_at: str
    updated_at: str
    closed_at: str | None


class CasePage(BaseModel):
    items: list[CaseView]
    next_cursor: str | None


class CaseStep(BaseModel):
    version: int
    event_type: str
    actor: Actor
    note: str | None
    details: dict[str, Any]
    timestamp: str


class CaseWithHistory(CaseView):
    alert_ids: list[str]
    history: list[CaseStep]


class CaseCounts(BaseModel):
    open_by_severity: dict[str, int]
    by_status: dict[str, int]


def case_view(row: CaseRow) -> dict[str, Any]:
    """A case as the contract shows it."""
    closed_at = row["closed_at"]
    return {
        "case_id": str(row["case_id"]),
        "alert_id": str(row["alert_id"]),
        "account_id": str(row["account_id"]),
        "branch": row["branch"],
        "rule": row["rule"],
        "severity": row["severity"],
        "status": row["status"],
        "assignee": row["assignee"],
        "resolution": row["resolution"],
        "explanation": row["explanation"],
        "version": int(row["version"]),
        "opened_at": format_timestamp(row["opened_at"]),
        "updated_at": format_timestamp(row["updated_at"]),
        "closed_at": None if closed_at is None else format_timestamp(closed_at),
    }


def step_view(row: CaseStepRow) -> dict[str, Any]:
    """One step of a case's history as the contract shows it."""
    return {
        "version": int(row["version"]),
        "event_type": row["event_type"],
        "actor": {"subject": row["actor_subject"], "role": row["actor_role"]},
        "note": row["note"],
        "details": row["details"],
        "timestamp": format_timestamp(row["at"]),
    }


# Declared before `/{case_id}`: "counts" is not a case id.
@router.get(
    "/counts",
    response_model=CaseCounts,
    responses=problem_responses(),
    summary="Cases not closed by severity, and all cases by status, for the dashboard",
)
async def case_counts(who: CasesReader, read_side: ReadSideDep) -> Response:
    counts = await read_case_counts(read_side.store)
    open_by_severity = dict.fromkeys(SEVERITIES, 0) | counts["open_by_severity"]
    by_status = dict.fromkeys((s.value for s in CaseStatus), 0) | counts["by_status"]
    return json_reply({"open_by_severity": open_by_severity, "by_status": by_status})


@router.get(
    "",
    response_model=CasePage,
    responses=problem_responses(),
    summary="Cases, newest first, filtered by status, severity, rule, account, branch, "
    "assignee and opening time",
)
async def list_cases(
    who: CasesReader,
    read_side: ReadSideDep,
    status: Annotated[CaseStatusName | None, Query()] = None,
    severity: TextFilter = None,
    rule: TextFilter = None,
    account_id: Annotated[UUID | None, Query()] = None,
    branch: Annotated[str | None, Query(pattern=f"^{BRANCH_PATTERN.pattern}$")] = None,
    assignee: TextFilter = None,
    from_: From = None,
    to: To = None,
    limit: Limit = PAGE_SIZE_DEFAULT,
    cursor: Cursor = None,
) -> Response:
    if from_ is not None and to is not None and from_ > to:
        raise QueryInvalid("from", "must not be after `to`")
    filters: dict[str, Any] = {
        "status": status,
        "severity": severity,
        "rule": rule,
        "account_id": account_id,
        "branch": branch,
        "assignee": assignee,
    }
    rows = await cases_page(read_side.store, filters, from_, to, _case_after(cursor), limit)
    return json_reply(page_reply(rows, limit, case_view, _case_cursor))


@router.get(
    "/{case_id}",
    response_model=CaseWithHistory,
    responses=problem_responses("case_not_found", "projection_lagging"),
    summary="One case with its full history: every step, who took it, when, and why",
)
async def get_case(
    case_id: UUID, who: CasesReader, read_side: ReadSideDep, min_version: MinVersion = None
) -> Response:
    async def found() -> CaseRow | None:
        row = await fetch_case(read_side.store, case_id)
        if row is None or (min_version is not None and int(row["version"]) < min_version):
            return None
        return row

    if min_version is None:
        current = await found()
        if current is None:
            raise CaseNotFound(f"case {case_id} not found")
        row = current
    else:
        row = await wait_for_projection(
            read_side.waiters, CASES_CHANNEL, case_id, found, deadline=freshness_deadline()
        )
    history = await case_history(read_side.store, case_id, HISTORY_ENTRIES_MAX)
    # Every alert of the case: the one that opened it, then those that joined it.
    alert_ids = [
        str(h["details"]["alert_id"])
        for h in history
        if h["event_type"] in ("CaseOpened", "CaseAlertJoined")
    ]
    return json_reply(
        {**case_view(row), "alert_ids": alert_ids, "history": [step_view(h) for h in history]}
    )


def _case_after(cursor: str | None) -> tuple[datetime, UUID] | None:
    if cursor is None:
        return None
    opened_at, case_id = decode_cursor(cursor, CASES_CURSOR, 2)
    try:
        moment = datetime.fromisoformat(str(opened_at))
        identifier = UUID(str(case_id))
    except ValueError:
        raise QueryInvalid("cursor", "not a cursor of this list") from None
    if moment.tzinfo is None:
        raise QueryInvalid("cursor", "not a cursor of this list")
    return moment, identifier


def _case_cursor(row: CaseRow) -> str:
    return encode_cursor(CASES_CURSOR, [row["opened_at"].isoformat(), str(row["case_id"])])
