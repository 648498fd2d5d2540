"""`GET /v1/stats/overview`: totals per currency, the last 24 hours hour by hour, totals
per branch (all from the kpis projection) and open alerts by severity."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any, Final

from fastapi import APIRouter, Depends
from psycopg import AsyncConnection, sql
from psycopg.rows import DictRow
from pydantic import BaseModel
from starlette.responses import Response

from domain.money import format_amount
from infrastructure.readmodels.schema import SCHEMA
from interfaces.api.http.auth import Principal, require
from interfaces.api.http.problems import problem_responses
from interfaces.api.query.deps import ReadSideDep
from interfaces.api.query.views import iso_utc, json_reply

router = APIRouter(prefix="/v1/stats", tags=["stats"])

StatsReader = Annotated[Principal, Depends(require("stats.read"))]

# The kpis projection's metric names; each appears in every currency's totals, 0 if none.
METRICS: Final = ("accounts_opened", "deposits", "withdrawals", "transfers")
SERIES_HOURS: Final = 24
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


class MetricTotal(BaseModel):
    count: int
    sum: str


class Metrics(BaseModel):
    accounts_opened: MetricTotal
    deposits: MetricTotal
    withdrawals: MetricTotal
    transfers: MetricTotal


class HourBucket(BaseModel):
    hour: str
    currencies: dict[str, Metrics]


class StatsOverview(BaseModel):
    generated_at: str
    totals: dict[str, Metrics]
    hourly: list[HourBucket]
    branches: dict[str, dict[str, Metrics]]
    open_alerts_by_severity: dict[str, int]


@router.get(
    "/overview",
    response_model=StatsOverview,
    responses=problem_responses(),
    summary="Totals per currency, the last 24 hours by hour, per-branch totals, open alerts",
)
async def overview(who: StatsReader, read_side: ReadSideDep) -> Response:
    now = datetime.now(UTC)
    first_hour = now.replace(minute=0, second=0, microsecond=0) - timedelta(hours=SERIES_HOURS - 1)
    # One snapshot: totals, series and branches agree with each other.
    async with read_side.store.snapshot() as conn:
        totals = await _rows(conn, TOTALS)
        series = await _rows(conn, SERIES, {"since": first_hour})
        branches = await _rows(conn, BRANCHES)
        alerts = await _open_alerts(conn)
    return json_reply(
        {
            "generated_at": iso_utc(now),
            "totals": _by_currency(totals),
            "hourly": _hourly(series, first_hour),
            "branches": _by_branch(branches),
            "open_alerts_by_severity": alerts,
        }
    )


async def _rows(
    conn: AsyncConnection[DictRow], query: sql.Composed, params: Mapping[str, Any] | None = None
) -> list[dict[str, Any]]:
    cursor = await conn.execute(query, params)
    return await cursor.fetchall()


async def _open_alerts(conn: AsyncConnection[DictRow]) -> dict[str, int]:
    cursor = await conn.execute(
        ALERTS_PRESENT,
        {"alerts": f"{SCHEMA}.{ALERTS_TABLE}", "cases": f"{SCHEMA}.{CASES_TABLE}"},
    )
    present = await cursor.fetchone()
    if present is None or not present["present"]:
        return {}
    rows = await _rows(conn, OPEN_ALERTS if present["cases_present"] else ALL_ALERTS)
    return {str(row["severity"]): int(row["count"]) for row in rows}


def _by_currency(rows: Iterable[Mapping[str, Any]]) -> dict[str, dict[str, Any]]:
    """`{currency: {metric: {"count", "sum"}}}`, every metric present."""
    counts: dict[str, dict[str, tuple[int, int]]] = {}
    for row in rows:
        metrics = counts.setdefault(row["currency"], {})
        count, sum_minor = metrics.get(row["metric"], (0, 0))
        metrics[row["metric"]] = (
            count + int(row["count"]),
            sum_minor + whole_minor(row["sum_minor"]),
        )
    return {
        currency: {
            metric: {
                "count": metrics.get(metric, (0, 0))[0],
                "sum": format_amount(metrics.get(metric, (0, 0))[1], currency),
            }
            for metric in METRICS
        }
        for currency, metrics in sorted(counts.items())
    }


def whole_minor(value: Any) -> int:
    """A sum column (numeric, unbounded: psycopg gives a Decimal) as an int, exactly: never
    through a float, and never a fraction of a minor unit silently dropped."""
    minor = int(value)
    assert minor == value, f"a sum of minor units must be whole, not {value!r}"
    return minor


def _hourly(rows: Iterable[Mapping[str, Any]], first_hour: datetime) -> list[dict[str, Any]]:
    """One bucket per hour, oldest first, hours without activity included (empty)."""
    by_hour: dict[datetime, list[Mapping[str, Any]]] = {}
    for row in rows:
        by_hour.setdefault(row["hour"].astimezone(UTC), []).append(row)
    hours = [first_hour + timedelta(hours=offset) for offset in range(SERIES_HOURS)]
    return [
        {"hour": iso_utc(hour), "currencies": _by_currency(by_hour.get(hour, ()))} for hour in hours
    ]


def _by_branch(rows: Iterable[Mapping[str, Any]]) -> dict[str, dict[str, Any]]:
    by_branch: dict[str, list[Mapping[str, Any]]] = {}
    for row in rows:
        by_branch.setdefault(row["branch"], []).append(row)
    return {branch: _by_currency(branch_rows) for branch, branch_rows in sorted(by_branch.items())}
