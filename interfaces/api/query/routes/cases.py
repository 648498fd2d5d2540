"""Case routes of the query API: the list with filters, one case with its full history,
and counts for the dashboard; all from the `cases` projection."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Annotated, Any, Final, Literal
from uuid import UUID

from fastapi import APIRouter, Depends, Query
from psycopg import sql
from pydantic import AwareDatetime, BaseModel
from starlette.responses import Response

from domain.case import CaseStatus
from domain.errors import CaseNotFound
from domain.text import BRANCH_PATTERN
from infrastructure.readmodels.freshness import freshness_deadline, wait_for_projection
from infrastructure.readmodels.schema import SCHEMA
from interfaces.api.http.auth import Principal, require
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
    equal_to,
    page_reply,
    where_all,
)
from interfaces.api.query.views import Actor, iso_utc, json_reply

router = APIRouter(prefix="/v1/cases", tags=["cases"])

CasesReader = Annotated[Principal, Depends(require("cases.read"))]

CaseStatusName = Literal["open", "acknowledged", "escalated", "closed"]
SEVERITIES: Final = ("critical", "high", "medium", "low")
CASES_CURSOR: Final = "cases"
# Nobody notifies on this channel: a `min_version` wait re-checks on the poll alone.
CASES_CHANNEL: Final = "readmodel_cases"
# A case's history is its steps; thousands of comments would be abuse, not work.
HISTORY_ENTRIES_MAX: Final = 10_000

_schema: Final = sql.Identifier(SCHEMA)
CASE_COLUMNS: Final = sql.SQL(
    "case_id, alert_id, account_id, branch, rule, severity, status, assignee, resolution, "
    "explanation, version, opened_at, updated_at, closed_at"
)
CASE_BY_ID: Final = sql.SQL(
    "SELECT {columns} FROM {schema}.cases WHERE case_id = %(case_id)s"
).format(columns=CASE_COLUMNS, schema=_schema)
HISTORY: Final = sql.SQL(
    "SELECT version, event_type, actor_subject, actor_role, note, details, at "
    "FROM {schema}.case_history WHERE case_id = %(case_id)s ORDER BY version LIMIT %(limit)s"
).format(schema=_schema)
OPEN_BY_SEVERITY: Final = sql.SQL(
    "SELECT severity, count(*) AS count FROM {schema}.cases WHERE status <> 'closed' "
    "GROUP BY severity"
).format(schema=_schema)
BY_STATUS: Final = sql.SQL(
    "SELECT status, count(*) AS count FROM {schema}.cases GROUP BY status"
).format(schema=_schema)

From = Annotated[
    AwareDatetime | None,
    Query(alias="from", description="ISO 8601 with a zone; cases opened at or after this."),
]
To = Annotated[
    AwareDatetime | None, Query(description="ISO 8601 with a zone; cases opened before this.")
]
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
    history: list[CaseStep]


class CaseCounts(BaseModel):
    open_by_severity: dict[str, int]
    by_status: dict[str, int]


def case_view(row: Mapping[str, Any]) -> dict[str, Any]:
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
        "opened_at": iso_utc(row["opened_at"]),
        "updated_at": iso_utc(row["updated_at"]),
        "closed_at": None if closed_at is None else iso_utc(closed_at),
    }


def step_view(row: Mapping[str, Any]) -> dict[str, Any]:
    return {
        "version": int(row["version"]),
        "event_type": row["event_type"],
        "actor": {"subject": row["actor_subject"], "role": row["actor_role"]},
        "note": row["note"],
        "details": row["details"],
        "timestamp": iso_utc(row["at"]),
    }


# Declared before `/{case_id}`: "counts" is not a case id.
@router.get(
    "/counts",
    response_model=CaseCounts,
    responses=problem_responses(),
    summary="Cases not closed by severity, and all cases by status, for the dashboard",
)
async def case_counts(who: CasesReader, read_side: ReadSideDep) -> Response:
    async with read_side.store.snapshot() as conn:
        open_rows = await (await conn.execute(OPEN_BY_SEVERITY)).fetchall()
        status_rows = await (await conn.execute(BY_STATUS)).fetchall()
    open_by_severity = dict.fromkeys(SEVERITIES, 0)
    open_by_severity |= {str(r["severity"]): int(r["count"]) for r in open_rows}
    by_status = dict.fromkeys((s.value for s in CaseStatus), 0)
    by_status |= {str(r["status"]): int(r["count"]) for r in status_rows}
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
    query, params = _cases_page_query(filters, from_, to, _case_after(cursor), limit)
    rows = await read_side.store.fetch_all(query, params)
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
    params = {"case_id": case_id}

    async def found() -> dict[str, Any] | None:
        row = await read_side.store.fetch_one(CASE_BY_ID, params)
        if row is None or (min_version is not None and int(row["version"]) < min_version):
            return None
        return row

    if min_version is None:
        row = await found()
        if row is None:
            raise CaseNotFound(f"case {case_id} not found")
    else:
        row = await wait_for_projection(
            read_side.waiters, CASES_CHANNEL, case_id, found, deadline=freshness_deadline()
        )
    history = await read_side.store.fetch_all(
        HISTORY, {"case_id": case_id, "limit": HISTORY_ENTRIES_MAX}
    )
    return json_reply({**case_view(row), "history": [step_view(h) for h in history]})


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


def _cases_page_query(
    filters: dict[str, Any],
    from_: datetime | None,
    to: datetime | None,
    after: tuple[datetime, UUID] | None,
    limit: int,
) -> tuple[sql.Composed, dict[str, Any]]:
    params: dict[str, Any] = {"limit": limit + 1}
    conditions = equal_to(filters, params)
    if from_ is not None:
        conditions.append(sql.SQL("opened_at >= %(from)s"))
        params["from"] = from_
    if to is not None:
        conditions.append(sql.SQL("opened_at < %(to)s"))
        params["to"] = to
    if after is not None:
        # Newest first: the next page holds what sorts strictly below the last case shown.
        conditions.append(sql.SQL("(opened_at, case_id) < (%(after_at)s, %(after_id)s)"))
        params["after_at"], params["after_id"] = after
    query = sql.SQL(
        "SELECT {columns} FROM {schema}.cases{where} "
        "ORDER BY opened_at DESC, case_id DESC LIMIT %(limit)s"
    ).format(columns=CASE_COLUMNS, schema=_schema, where=where_all(conditions))
    return query, params


def _case_cursor(row: Mapping[str, Any]) -> str:
    return encode_cursor(CASES_CURSOR, [row["opened_at"].isoformat(), str(row["case_id"])])
