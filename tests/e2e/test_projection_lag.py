"""Projection lag that operators see, with real processes: the query API's
`vigil_projection_lag_seconds` goes up while the workers are stopped and back to 0 once
they catch up, `/health/ready` names the lagging projection as degraded and stays 200,
and the command API goes on accepting commands all the while."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import Databases
from tests.e2e.system import System, eventually, running_system

pytestmark = pytest.mark.e2e

SETTLE_S = 60.0
DEGRADED_S = 2.0


@pytest.fixture(scope="module")
def system(databases: Databases, tmp_path_factory: pytest.TempPathFactory) -> Iterator[System]:
    with running_system(
        databases, tmp_path_factory.mktemp("lag"), projection_lag_degraded_s=DEGRADED_S
    ) as running:
        yield running


def post(system: System, path: str, body: dict[str, Any]) -> Any:
    response = httpx.post(
        f"{system.command.url}{path}", json=body, headers=system.headers("teller"), timeout=15
    )
    assert response.status_code in (200, 201), response.text
    return response.json()


def lags_s(system: System) -> dict[str, float]:
    """The query API's `vigil_projection_lag_seconds`, by projection."""
    text = httpx.get(f"{system.query.url}/metrics", timeout=15).text
    return {
        sample.labels["projection"]: sample.value
        for family in text_string_to_metric_families(text)
        if family.name == "vigil_projection_lag_seconds"
        for sample in family.samples
    }


def projections(system: System) -> dict[str, Any]:
    response = httpx.get(
        f"{system.query.url}/v1/projections", headers=system.headers("admin"), timeout=15
    )
    assert response.status_code == 200, response.text
    return {p["name"]: p for p in response.json()["items"]}


def ready(system: System) -> httpx.Response:
    return httpx.get(f"{system.query.url}/health/ready", timeout=15)


def test_lag_rises_while_the_workers_are_stopped_and_falls_once_they_catch_up(
    system: System,
) -> None:
    account = post(
        system,
        "/v1/accounts",
        {"owner": f"lag-{uuid.uuid4().hex[:8]}", "branch": "001", "currency": "GBP"},
    )
    deposits = f"/v1/accounts/{account['account_id']}/deposits"
    post(system, deposits, {"amount": "10.00", "currency": "GBP"})

    def caught_up() -> dict[str, float] | None:
        behind = any(p["lag_events"] for p in projections(system).values())
        found = lags_s(system)
        return found if found and not behind and not any(found.values()) else None

    names = set(eventually(caught_up, SETTLE_S, "every projection caught up, lag 0 s", system))
    assert {"balances", "alerts"} <= names
    assert set(projections(system)) == names  # a gauge for every projection, by name
    assert ready(system).json()["status"] == "ok", ready(system).json()

    system.kill("workers")
    # The money path never waits on a read model: commands are accepted while it lags.
    for _ in range(3):
        post(system, deposits, {"amount": "5.00", "currency": "GBP"})

    def lagging() -> dict[str, Any] | None:
        answer = ready(system)
        reasons = answer.json().get("reasons", [])
        return answer.json() if any("projection balances" in r for r in reasons) else None

    body = eventually(lagging, SETTLE_S, "readiness naming the lagging projection", system)
    assert ready(system).status_code == 200
    assert body["status"] == "degraded", body
    assert body["checks"]["postgres"] == "ok"
    first = lags_s(system)["balances"]
    assert first > DEGRADED_S

    def grown() -> float | None:
        now = lags_s(system)["balances"]
        return now if now > first + 1 else None

    eventually(grown, SETTLE_S, "the lag in seconds growing", system)
    post(system, deposits, {"amount": "5.00", "currency": "GBP"})
    command_ready = httpx.get(f"{system.command.url}/health/ready", timeout=15).json()
    assert not any("projection" in r for r in command_ready["reasons"]), command_ready

    system.start("workers")
    eventually(caught_up, SETTLE_S, "every projection caught up again, lag 0 s", system)

    def healthy() -> dict[str, Any] | None:
        answer = ready(system)
        return answer.json() if answer.json()["status"] == "ok" else None

    eventually(healthy, SETTLE_S, "readiness ok again", system)
