"""Projection lag as operators see it: a gauge on the query API's `/metrics`, refreshed in
the background, and a degraded reason on `/health/ready` for every projection lagging past
`VIGIL_PROJECTION_LAG_DEGRADED_S`.

The lag in seconds is the one `GET /v1/projections` reports: how long a projection that is
behind has not moved. The query API computes it because it already reads the positions;
the workers' own `vigil_projection_lag_events` counts the events.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import Final

import structlog
from prometheus_client import Gauge

from infrastructure.readmodels.readers.projections import projection_lags_s
from infrastructure.readmodels.readstore import ReadStore

# Often enough for a 15 s scrape and a `for:` of minutes; one cheap query each time.
LAG_REFRESH_INTERVAL_S: Final = 2.0

LAG_SECONDS: Final = Gauge(
    "vigil_projection_lag_seconds",
    "How long a projection that is behind the event store has not moved (0 when caught up).",
    ["projection"],
)

log = structlog.get_logger("vigil.query_api")


def lagging_reasons(lags_s: Mapping[str, float], threshold_s: float) -> list[str]:
    """What `/health/ready` says of projections lagging past the threshold (nothing if none)."""
    return [
        f"projection {name} is {lag_s:,.1f} s behind (over {threshold_s:g} s)"
        for name, lag_s in sorted(lags_s.items())
        if lag_s > threshold_s
    ]


def publish_lags(lags_s: Mapping[str, float]) -> None:
    """Set the gauge for every projection read."""
    for name, lag_s in lags_s.items():
        LAG_SECONDS.labels(name).set(lag_s)


async def lag_reasons(store: ReadStore, threshold_s: float) -> list[str]:
    """Read the lags now, publish them, and name the projections past the threshold."""
    lags_s = await projection_lags_s(store)
    publish_lags(lags_s)
    return lagging_reasons(lags_s, threshold_s)


async def refresh_lags(store: ReadStore, interval_s: float = LAG_REFRESH_INTERVAL_S) -> None:
    """Keep the gauge current until cancelled; a failed read is logged and tried again."""
    while True:
        try:
            publish_lags(await projection_lags_s(store))
        except Exception as error:
            # The type only: driver messages can carry connection strings.
            log.warning("projection_lag_refresh_failed", error=type(error).__name__)
        await asyncio.sleep(interval_s)
