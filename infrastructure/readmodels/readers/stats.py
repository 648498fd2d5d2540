"""The dashboard's figures: the kpis projection's hourly and per-branch counts, and open
alerts by severity, all from one snapshot so they agree with each other."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any, Final, NotRequired, TypedDict, cast

from psycopg import AsyncConnection, sql
from psycopg.rows import DictRow

from infrastructure.readmodels.readstore import ReadStore
from infrastructure.readmodels.schema import SCHEMA

# Written by the alerts projection and the cases projection; each counted once it exists.
ALERTS_TABLE: Final = "alerts"
CASES_TABLE: Final = "cases"

_schema: Final = sql.Identifier(SCHEMA)
TOTALS: Final = sql.SQL(
    "SELECT currency, metric, sum(count)::bigint AS count, sum(sum_minor) AS sum_minor "
    "FROM {schema}.kpis_hourly GROUP BY currency, metric"
).format(schema=_schema)
SERIES: Final = sql.SQL(
    "SELECT hour, currency, metric, count, sum_minor FROM {schema}.kpis_hourly "
    "WHERE hour >= %(since)s ORDER BY hour"
).format(schema=_schema)
BRANCHES: Final = sql.SQL(
    "SELECT branch, currency, metric, count, sum_minor FROM {schema}.kpis_branch"
).format(schema=_schema)
ALERTS_PRESENT: Final = (
    "SELECT to_regclass(%(alerts)s) IS NOT NULL AS present, "
    "to_regclass(%(cases)s) IS NOT NULL AS cases_present"
)
# An alert is open until its case is closed (it exists before its case opens).
OPEN_ALERTS: Final = sql.SQL(
    "SELECT a.severity, count(*) AS count FROM {schema}.{alerts} a "
    "LEFT JOIN {schema}.{cases} c ON c.case_id = a.case_id "
    "WHERE c.status IS DISTINCT FROM 'closed' GROUP BY a.severity"
).format(schema=_schema, alerts=sql.Identifier(ALERTS_TABLE), cases=sql.Identifier(CASES_TABLE))
# Before the cases read model exists no case is closed: every alert is open.
ALL_ALERTS: Final = sql.SQL(
    "SELECT severity, count(*) AS count FROM {schema}.{alerts} GROUP BY severity"
).format(schema=_schema, alerts=sql.Identifier(ALERTS_TABLE))


class KpiRow(TypedDict):
    """A metric's count and sum in one currency: per hour (`hour`), per branch (`branch`)
    or in total (neither); `sum_minor` is numeric, a Decimal."""

    currency: str
    metric: str
    count: int
    sum_minor: Decimal
    hour: NotRequired[datetime]
    branch: NotRequired[str]


@dataclass(frozen=True, slots=True)
class KpiSnapshot:
    """The totals, the hourly series since `since` (oldest first), the per-branch rows,
    and open alerts by severity (empty before the alerts table exists)."""

    totals: list[KpiRow]
    series: list[KpiRow]
    branches: list[KpiRow]
    open_alerts_by_severity: dict[str, int]


async def kpi_snapshot(store: ReadStore, since: datetime) -> KpiSnapshot:
    """Every figure of the overview, from one snapshot."""
    async with store.snapshot() as conn:
        totals = await _rows(conn, TOTALS)
        series = await _rows(conn, SERIES, {"since": since})
        branches = await _rows(conn, BRANCHES)
        alerts = await _open_alerts(conn)
    return KpiSnapshot(totals, series, branches, alerts)


async def _rows(
    conn: AsyncConnection[DictRow], query: sql.Composed, params: dict[str, Any] | None = None
) -> list[KpiRow]:
    cursor = await conn.execute(query, params)
    return cast(list[KpiRow], await cursor.fetchall())


async def _open_alerts(conn: AsyncConnection[DictRow]) -> dict[str, int]:
    cursor = await conn.execute(
        ALERTS_PRESENT,
        {"alerts": f"{SCHEMA}.{ALERTS_TABLE}", "cases": f"{SCHEMA}.{CASES_TABLE}"},
    )
    present = await cursor.fetchone()
    if present is None or not present["present"]:
        return {}
    cursor = await conn.execute(OPEN_ALERTS if present["cases_present"] else ALL_ALERTS)
    rows = await cursor.fetchall()
    return {str(row["severity"]): int(row["count"]) for row in rows}
