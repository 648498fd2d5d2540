"""`GET /v1/stats/overview`: totals per currency, the last 24 hours hour by hour, totals
per branch (all from the kpis projection) and open alerts by severity."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any, Final

from fastapi import APIRouter, Depends
from pydantic import BaseModel
from starlette.responses import Response

from domain.integrity import format_timestamp
from domain.money import format_amount
from infrastructure.readmodels.readers.stats import kpi_snapshot
from interfaces.api.http.auth import Principal, require
from interfaces.api.http.deps import json_reply
from interfaces.api.http.problems import problem_responses
from interfaces.api.query.deps import ReadSideDep

router = APIRouter(prefix="/v1/stats", tags=["stats"])

StatsReader = Annotated[Principal, Depends(require("stats.read"))]

# The kpis projection's metric names; each appears in every currency's totals, 0 if none.
METRICS: Final = (
    "accounts_opened",
    "deposits",
    "withdrawals",
    "transfers",
    "holds_placed",
    "holds_captured",
    "holds_voided",
    "holds_expired",
    "reversals",
    "held_for_review",
    "reviews_released",
    "reviews_rejected",
    "reviews_expired",
)
SERIES_HOURS: Final = 24


class MetricTotal(BaseModel):
    count: int
    sum: str


class Metrics(BaseModel):
    accounts_opened: MetricTotal
    deposits: MetricTotal
    withdrawals: MetricTotal
    transfers: MetricTotal
    # Holds: placed (the amount reserved), captured (the amount moved), voided and
    # expired (the amount released); reversals (the amount given back).
    holds_placed: MetricTotal
    holds_captured: MetricTotal
    holds_voided: MetricTotal
    holds_expired: MetricTotal
    reversals: MetricTotal
    # Screening: commands held for review (the amount held), and how reviews ended.
    held_for_review: MetricTotal
    reviews_released: MetricTotal
    reviews_rejected: MetricTotal
    reviews_expired: MetricTotal


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
    kpis = await kpi_snapshot(read_side.store, first_hour)
    return json_reply(
        {
            "generated_at": format_timestamp(now),
            "totals": _by_currency(kpis.totals),
            "hourly": _hourly(kpis.series, first_hour),
            "branches": _by_branch(kpis.branches),
            "open_alerts_by_severity": kpis.open_alerts_by_severity,
        }
    )


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
        {"hour": format_timestamp(hour), "currencies": _by_currency(by_hour.get(hour, ()))}
        for hour in hours
    ]


def _by_branch(rows: Iterable[Mapping[str, Any]]) -> dict[str, dict[str, Any]]:
    by_branch: dict[str, list[Mapping[str, Any]]] = {}
    for row in rows:
        by_branch.setdefault(row["branch"], []).append(row)
    return {branch: _by_currency(branch_rows) for branch, branch_rows in sorted(by_branch.items())}
