"""The query API over real HTTP: projection positions and lag, and the stats overview.

The seeded positions and KPI rows are in tests/e2e/query_support.py.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

import pytest

from infrastructure.readmodels.schema import ALL_PROJECTIONS
from tests.e2e.query_support import QueryEnv

pytestmark = pytest.mark.e2e


# --- Projections and stats ------------------------------------------------------------


def test_projections_show_the_store_head_positions_and_lag(query_env: QueryEnv) -> None:
    response = query_env.get("/v1/projections", "auditor")
    assert response.status_code == 200, response.text
    body = response.json()
    head = query_env.seed.head
    assert body["head"] == head
    items = {item["name"]: item for item in body["items"]}
    assert set(items) == set(ALL_PROJECTIONS)
    for name in ("balances", "statements"):
        assert items[name] == {
            "name": name,
            "position": head,
            "lag_events": 0,
            "lag_s": 0.0,
            "quarantined": 0,
        }
    assert (items["kpis"]["position"], items["kpis"]["lag_events"]) == (head - 4, 4)
    # Seeded 10 s behind when the session's query API started: the lag has grown since by
    # however long the tests in between took (the fault run alone takes minutes).
    assert 10.0 <= items["kpis"]["lag_s"] < 3600


def _hour_key(hour: datetime) -> str:
    return hour.strftime("%Y-%m-%dT%H:00:00.000000Z")


def _metric(count: int, total: str) -> dict[str, Any]:
    return {"count": count, "sum": total}


def _no_holds(zero: str) -> dict[str, Any]:
    names = (
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
    return {name: _metric(0, zero) for name in names}


def test_stats_overview_sums_totals_series_and_branches(query_env: QueryEnv) -> None:
    response = query_env.get("/v1/stats/overview", "viewer")
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["totals"] == {
        "GBP": {
            "accounts_opened": _metric(3, "0.00"),
            "deposits": _metric(2, "120.00"),
            "withdrawals": _metric(1, "20.00"),
            "transfers": _metric(1, "30.00"),
            **_no_holds("0.00"),
        },
        "JPY": {
            "accounts_opened": _metric(0, "0"),
            "deposits": _metric(1, "1250"),
            "withdrawals": _metric(0, "0"),
            "transfers": _metric(0, "0"),
            **_no_holds("0"),
        },
    }
    hourly = body["hourly"]
    assert len(hourly) == 24
    assert all(bucket["hour"].endswith(":00:00.000000Z") for bucket in hourly)
    by_hour = {bucket["hour"]: bucket["currencies"] for bucket in hourly}
    seeded = query_env.seed.kpi_hour
    assert seeded is not None
    this_hour, two_ago = (_hour_key(seeded), _hour_key(seeded - timedelta(hours=2)))
    # The last bucket is this hour, or the next one if the clock passed an hour boundary.
    assert hourly[-1]["hour"] in (this_hour, _hour_key(seeded + timedelta(hours=1)))
    assert by_hour[this_hour]["GBP"]["deposits"] == _metric(2, "120.00")
    assert by_hour[two_ago]["GBP"]["withdrawals"] == _metric(1, "20.00")
    assert by_hour[two_ago]["JPY"]["deposits"] == _metric(1, "1250")
    # The transfer 30 hours ago is in the totals, not in the series.
    assert all(
        b["currencies"].get("GBP", {}).get("transfers", {}).get("count", 0) == 0 for b in hourly
    )
    assert body["branches"]["001"]["GBP"]["deposits"] == _metric(2, "120.00")
    assert body["branches"]["002"]["JPY"]["deposits"] == _metric(1, "1250")
    assert body["open_alerts_by_severity"] == {}
