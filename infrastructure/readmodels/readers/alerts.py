"""Alerts as the query API reads them from `readmodel.alerts`, each with its case's status
(`case_status`, from `readmodel.cases`), and the rule configurations they name.

The query API may start before the alerts worker and the cases projection have created
their tables: then there are no alerts, or none whose case is closed.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Final, TypedDict, cast
from uuid import UUID

from psycopg import AsyncConnection, sql
from psycopg.rows import DictRow

from infrastructure.postgres.conditions import equal_to, where_all
from infrastructure.readmodels.readstore import ReadStore
from infrastructure.readmodels.schema import SCHEMA

ALERTS_TABLE: Final = f"{SCHEMA}.alerts"
CASES_TABLE: Final = f"{SCHEMA}.cases"

_schema: Final = sql.Identifier(SCHEMA)
TABLES_PRESENT: Final = (
    "SELECT to_regclass(%(alerts)s) IS NOT NULL AS alerts, "
    "to_regclass(%(cases)s) IS NOT NULL AS cases"
)
ALERT_FIELDS: Final = (
    "a.alert_id, a.rule, a.severity, a.account_id, a.branch, a.transaction_ids, a.positions, "
    "a.explanation, a.raised_at, a.notification_id, a.chain_head, a.rule_config_version"
)
# Without the cases projection's tables no alert is known to be in a case yet.
ALERT_COLUMNS: Final = sql.SQL(ALERT_FIELDS + ", NULL::uuid AS case_id")
# With them: a suppressed alert has no case; one that joined an open case has that case's
# id (from the case's history), one that opened a case that case's. An alert the case
# opener has not routed yet has none: the case it would open may never exist (it may be
# suppressed, or join an open case), and a link to it would lead nowhere.
ROUTED_COLUMNS: Final = sql.SQL(
    ALERT_FIELDS + ", CASE WHEN s.alert_id IS NOT NULL THEN NULL ELSE c.case_id END AS case_id"
)
ROUTED_JOIN: Final = sql.SQL(
    " LEFT JOIN LATERAL (SELECT h.case_id FROM {schema}.case_history h "
    "WHERE h.event_type = 'CaseAlertJoined' AND h.details->>'alert_id' = a.alert_id::text "
    "LIMIT 1) j ON true"
    " LEFT JOIN {schema}.suppressed_alerts s ON s.alert_id = a.alert_id"
    " LEFT JOIN {schema}.cases c ON c.case_id = coalesce(j.case_id, a.case_id)"
)
RULE_CONFIG: Final = "SELECT parameters FROM public.rule_configs WHERE version = %(version)s"


class AlertRow(TypedDict):
    """One row of `readmodel.alerts`, with its case's status (None before the case)."""

    alert_id: UUID
    rule: str
    severity: str
    account_id: UUID
    branch: str | None
    transaction_ids: list[str]
    positions: list[int]
    explanation: str
    raised_at: datetime
    notification_id: int
    chain_head: str | None
    rule_config_version: int
    case_id: UUID | None
    case_status: str | None


class AlertFilters(TypedDict):
    """Each None when not given; `from_` inclusive, `to` exclusive (raised at)."""

    severity: str | None
    rule: str | None
    account_id: UUID | None
    branch: str | None
    from_: datetime | None
    to: datetime | None


async def alerts_page(
    store: ReadStore,
    status: str | None,
    filters: AlertFilters,
    after: tuple[datetime, UUID] | None,
    limit: int,
) -> list[AlertRow]:
    """Up to `limit + 1` alerts, newest first (ties by id), after `after` (time, id);
    `status` is `open` (case not closed), `closed`, or None for both."""
    async with store.connection() as conn:
        alerts, cases = await _tables_present(conn)
        if not alerts or (status in ("closed", "suppressed") and not cases):
            return []
        cursor = await conn.execute(*_alerts_query(cases, status, filters, after, limit))
        return cast(list[AlertRow], await cursor.fetchall())


async def fetch_alert(store: ReadStore, alert_id: UUID) -> AlertRow | None:
    """The alert with its case's status, or None if there is none."""
    async with store.connection() as conn:
        alerts, cases = await _tables_present(conn)
        row = None
        if alerts:
            query = sql.SQL("SELECT {columns}, {status} FROM {schema}.alerts a{join} {where}")
            cursor = await conn.execute(
                query.format(
                    **_case_parts(cases), where=sql.SQL("WHERE a.alert_id = %(alert_id)s")
                ),
                {"alert_id": alert_id},
            )
            row = await cursor.fetchone()
    return cast(AlertRow | None, row)


async def rule_config(store: ReadStore, version: int) -> dict[str, Any] | None:
    """The parameters of rule configuration `version`, or None if it is not stored."""
    row = await store.fetch_one(RULE_CONFIG, {"version": version})
    return None if row is None else cast(dict[str, Any], row["parameters"])


async def _tables_present(conn: AsyncConnection[DictRow]) -> tuple[bool, bool]:
    cursor = await conn.execute(TABLES_PRESENT, {"alerts": ALERTS_TABLE, "cases": CASES_TABLE})
    row = await cursor.fetchone()
    assert row is not None, "a SELECT without FROM returns one row"
    return bool(row["alerts"]), bool(row["cases"])


def _case_parts(cases: bool) -> dict[str, sql.Composable]:
    if not cases:
        return {
            "columns": ALERT_COLUMNS,
            "status": sql.SQL("NULL::text AS case_status"),
            "schema": _schema,
            "join": sql.SQL(""),
        }
    return {
        "columns": ROUTED_COLUMNS,
        "status": sql.SQL(
            "CASE WHEN s.alert_id IS NOT NULL THEN 'suppressed' ELSE c.status END AS case_status"
        ),
        "schema": _schema,
        "join": ROUTED_JOIN.format(schema=_schema),
    }


def _alerts_query(
    cases: bool,
    status: str | None,
    filters: AlertFilters,
    after: tuple[datetime, UUID] | None,
    limit: int,
) -> tuple[sql.Composed, dict[str, Any]]:
    params: dict[str, Any] = {"limit": limit + 1}
    equal = {
        "severity": filters["severity"],
        "rule": filters["rule"],
        "account_id": filters["account_id"],
        "branch": filters["branch"],
    }
    conditions = equal_to(equal, params, table="a")
    if filters["from_"] is not None:
        conditions.append(sql.SQL("a.raised_at >= %(from)s"))
        params["from"] = filters["from_"]
    if filters["to"] is not None:
        conditions.append(sql.SQL("a.raised_at < %(to)s"))
        params["to"] = filters["to"]
    if status == "closed":
        conditions.append(sql.SQL("s.alert_id IS NULL AND c.status = 'closed'"))
    elif status == "suppressed":
        conditions.append(sql.SQL("s.alert_id IS NOT NULL"))
    elif status == "open" and cases:
        conditions.append(sql.SQL("s.alert_id IS NULL AND c.status IS DISTINCT FROM 'closed'"))
    if after is not None:
        # Newest first, ties by id: the next page sorts strictly after the last row shown.
        conditions.append(
            sql.SQL(
                "(a.raised_at < %(after_at)s OR (a.raised_at = %(after_at)s "
                "AND a.alert_id > %(after_id)s))"
            )
        )
        params["after_at"], params["after_id"] = after
    query = sql.SQL(
        "SELECT {columns}, {status} FROM {schema}.alerts a{join}{where} "
        "ORDER BY a.raised_at DESC, a.alert_id LIMIT %(limit)s"
    ).format(**_case_parts(cases), where=where_all(conditions))
    return query, params
