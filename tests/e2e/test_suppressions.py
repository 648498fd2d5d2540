"""Alerts compliance can work, through the whole system as real processes: a busy
account's velocity hits join one open case instead of opening a case each; compliance
suppresses a rule for an account (audited, listed, revocable) and the hits meanwhile are
alerts with status `suppressed` and no case."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import Databases
from tests.e2e.conftest import assert_problem
from tests.e2e.system import System, eventually, running_system

pytestmark = pytest.mark.e2e

WAIT_S = 60.0
RULES = """
[velocity]
count_max = 2
count_window_s = 600
"""


@pytest.fixture(scope="module")
def system(databases: Databases, tmp_path_factory: pytest.TempPathFactory) -> Iterator[System]:
    work = tmp_path_factory.mktemp("suppressions")
    rules = work / "rules.toml"
    rules.write_text(RULES)
    with running_system(databases, work, rules_config=Path(rules)) as running:
        yield running


@pytest.fixture
def http() -> Iterator[httpx.Client]:
    with httpx.Client(timeout=10) as client:
        yield client


def _account(system: System, http: httpx.Client) -> str:
    reply = http.post(
        f"{system.command.url}/v1/accounts",
        json={"owner": "Payroll Ltd", "branch": "001", "currency": "GBP"},
        headers=system.headers("teller"),
    )
    assert reply.status_code == 201, reply.text
    account_id: str = reply.json()["account_id"]
    return account_id


def _burst(system: System, http: httpx.Client, account_id: str, count: int = 3) -> None:
    """`count` deposits: with `count_max = 2`, every third fresh movement is a velocity hit."""
    for _ in range(count):
        reply = http.post(
            f"{system.command.url}/v1/accounts/{account_id}/deposits",
            json={"amount": "10.00", "currency": "GBP", "channel": "card"},
            headers=system.headers("teller"),
        )
        assert reply.status_code == 201, reply.text


def _alerts(system: System, http: httpx.Client, account_id: str, n: int) -> list[dict[str, Any]]:
    def found() -> list[dict[str, Any]] | None:
        reply = http.get(
            f"{system.query.url}/v1/alerts",
            params={"account_id": account_id, "rule": "velocity"},
            headers=system.headers("compliance"),
        )
        assert reply.status_code == 200, reply.text
        items: list[dict[str, Any]] = reply.json()["items"]
        # Routed: suppressed, or in a case the read side holds. Until its routing is read
        # back an alert shows no case.
        routed = [
            a
            for a in items
            if a["status"] == "suppressed"
            or (a["case_id"] and _case(system, http, a["case_id"]) is not None)
        ]
        return items if len(items) >= n and len(routed) == len(items) else None

    return eventually(found, WAIT_S, f"{n} velocity alerts of {account_id}", system)


def _case(system: System, http: httpx.Client, case_id: str) -> dict[str, Any] | None:
    reply = http.get(f"{system.query.url}/v1/cases/{case_id}", headers=system.headers("compliance"))
    return reply.json() if reply.status_code == 200 else None


def test_velocity_hits_of_a_busy_account_join_one_open_case(
    system: System, http: httpx.Client
) -> None:
    account_id = _account(system, http)
    _burst(system, http, account_id)
    [first] = _alerts(system, http, account_id, 1)
    case_id = first["case_id"]

    def case_with(alerts: int) -> dict[str, Any] | None:
        case = _case(system, http, case_id)
        return case if case is not None and len(case["alert_ids"]) == alerts else None

    eventually(lambda: case_with(1), WAIT_S, "the case opened by the first hit", system)
    _burst(system, http, account_id)

    def both_in_the_case() -> list[dict[str, Any]] | None:
        # Until its routing is read back, an alert shows the case it would open.
        alerts = _alerts(system, http, account_id, 2)
        return alerts if {a["case_id"] for a in alerts} == {case_id} else None

    alerts = eventually(both_in_the_case, WAIT_S, "both alerts in the first case", system)
    assert len({a["alert_id"] for a in alerts}) == 2, "each alert keeps its identity"
    case = eventually(lambda: case_with(2), WAIT_S, "the second alert in the case", system)
    assert sorted(case["alert_ids"]) == sorted(a["alert_id"] for a in alerts)
    joined = [s for s in case["history"] if s["event_type"] == "CaseAlertJoined"]
    assert len(joined) == 1
    assert joined[0]["details"]["positions"], "the joining alert brings its evidence"
    assert joined[0]["actor"] == {"subject": "system:rules", "role": "system"}
    cases = http.get(
        f"{system.query.url}/v1/cases",
        params={"account_id": account_id},
        headers=system.headers("compliance"),
    ).json()["items"]
    assert [c["case_id"] for c in cases] == [case_id], "one case, not one per hit"


def test_a_suppression_holds_back_cases_until_revoked(system: System, http: httpx.Client) -> None:
    account_id = _account(system, http)
    until = (datetime.now(UTC) + timedelta(hours=1)).strftime("%Y-%m-%dT%H:%M:%SZ")
    body = {"account_id": account_id, "rule": "velocity", "until": until, "reason": "payroll"}
    url = f"{system.command.url}/v1/suppressions"
    for role in ("teller", "admin", "auditor", "viewer"):
        assert_problem(http.post(url, json=body, headers=system.headers(role)), 403, "forbidden")
    compliance = system.headers("compliance", "olivia")
    for bad, field in (
        ({**body, "rule": "no_such_rule"}, "body.rule"),
        ({**body, "until": "2020-01-01T00:00:00Z"}, "body.until"),
        ({**body, "until": "2030-01-01T00:00:00"}, "body.until"),
        ({**body, "until": "9999-12-31T23:59:59-14:00"}, "body.until"),  # year 10000 in UTC
        ({**body, "reason": " "}, "body.reason"),
    ):
        problem = assert_problem(
            http.post(url, json=bad, headers=compliance), 422, "validation_error"
        )
        assert problem["errors"][0]["field"] == field, problem
    missing = {**body, "account_id": "00000000-0000-4000-8000-000000000000"}
    assert_problem(http.post(url, json=missing, headers=compliance), 404, "account_not_found")

    created = http.post(url, json=body, headers=compliance)
    assert created.status_code == 201, created.text
    suppression = created.json()
    assert (suppression["status"], suppression["rule"]) == ("active", "velocity")

    def listed() -> list[dict[str, Any]] | None:
        reply = http.get(
            f"{system.query.url}/v1/suppressions",
            params={"account_id": account_id, "active": "true"},
            headers=system.headers("auditor"),
        )
        assert reply.status_code == 200, reply.text
        return reply.json()["items"] or None

    [entry] = eventually(listed, WAIT_S, "the suppression in GET /v1/suppressions", system)
    assert (entry["suppression_id"], entry["created_by"]) == (
        suppression["suppression_id"],
        "olivia",
    )
    _burst(system, http, account_id)
    [held] = _alerts(system, http, account_id, 1)
    assert (held["status"], held["case_id"]) == ("suppressed", None)
    suppressed = http.get(
        f"{system.query.url}/v1/alerts",
        params={"status": "suppressed", "account_id": account_id},
        headers=system.headers("compliance"),
    ).json()["items"]
    assert [a["alert_id"] for a in suppressed] == [held["alert_id"]]

    revoke_url = f"{url}/{suppression['suppression_id']}"
    assert_problem(
        http.request("DELETE", revoke_url, json={"reason": "x"}, headers=system.headers("teller")),
        403,
        "forbidden",
    )
    revoked = http.request(
        "DELETE", revoke_url, json={"reason": "account reviewed"}, headers=compliance
    )
    assert revoked.status_code == 200, revoked.text
    assert revoked.json()["status"] == "revoked"
    again = http.request("DELETE", revoke_url, json={"reason": "again"}, headers=compliance)
    assert_problem(again, 404, "suppression_not_found")
    _burst(system, http, account_id)
    alerts = _alerts(system, http, account_id, 2)
    opened = [a for a in alerts if a["status"] == "open"]
    assert len(opened) == 1, alerts
    assert opened[0]["case_id"], alerts
    events = system.vigil("audit", "verify")
    assert events.returncode == 0, events.stdout + events.stderr
