"""Cases as the query API reads them from the `cases` projection: a page, one case, its
history, and counts for the dashboard."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Final, TypedDict, cast
from uuid import UUID

from psycopg import sql

from infrastructure.postgres.conditions import equal_to, where_all
from infrastructure.readmodels.readstore import ReadStore
from infrastructure.readmodels.schema import SCHEMA

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


class CaseRow(TypedDict):
    """One row of `readmodel.cases`."""

    case_id: UUID
    alert_id: UUID
    account_id: UUID
    branch: str | None
    rule: str
    severity: str
    status: str
    assignee: str | None
    resolution: str | None
    explanation: str
    version: int
    opened_at: datetime
    updated_at: datetime
    closed_at: datetime | None


class CaseStepRow(TypedDict):
    """One row of `readmodel.case_history`: a step taken on a case."""

    version: int
    event_type: str
    actor_subject: str
    actor_role: str
    note: str | None
    details: dict[str, Any]
    at: datetime


class CaseCountRows(TypedDict):
    """Cases not closed by severity, and all cases by status: only those present."""

    open_by_severity: dict[str, int]
    by_status: dict[str, int]


async def case_counts(store: ReadStore) -> CaseCountRows:
    """Both counts from one snapshot, so they agree with each other."""
    async with store.snapshot() as conn:
        open_rows = await (await conn.execute(OPEN_BY_SEVERITY)).fetchall()
        status_rows = await (await conn.execute(BY_STATUS)).fetchall()
    return {
        "open_by_severity": {str(r["severity"]): int(r["count"]) for r in open_rows},
        "by_status": {str(r["status"]): int(r["count"]) for r in status_rows},
    }


async def fetch_case(store: ReadStore, case_id: UUID) -> CaseRow | None:
    """The case, or None if the projection has none."""
    return cast(CaseRow | None, await store.fetch_one(CASE_BY_ID, {"case_id": case_id}))


async def case_history(store: ReadStore, case_id: UUID, limit: int) -> list[CaseStepRow]:
    """The case's first `limit` steps, in version order."""
    rows = await store.fetch_all(HISTORY, {"case_id": case_id, "limit": limit})
    return cast(list[CaseStepRow], rows)


async def cases_page(
    store: ReadStore,
    filters: dict[str, Any],
    from_: datetime | None,
    to: datetime | None,
    after: tuple[datetime, UUID] | None,
    limit: int,
) -> list[CaseRow]:
    """Up to `limit + 1` cases, newest first, strictly below `after` (opened at, id);
    `filters` are column equalities, each None when not given."""
    rows = await store.fetch_all(*_cases_page_query(filters, from_, to, after, limit))
    return cast(list[CaseRow], rows)


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
