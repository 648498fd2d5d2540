"""The whole system (real processes, broker, PostgreSQL, Redis) meets an event in the
store that its projections cannot apply: the event is quarantined and alerted, a case
opens, health says degraded, and every event written before and after it is applied, so
the monitoring goes on (a structuring pattern after it still raises its alert)."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest

from domain.account import Account
from domain.integrity import Actor, Stamp
from infrastructure.eventstore.ledger import open_ledger
from infrastructure.readmodels.quarantine import QUARANTINED_RULE
from tests.conftest import Databases
from tests.e2e.system import System, eventually, running_system

pytestmark = pytest.mark.e2e

SETTLE_S = 60.0


@pytest.fixture(scope="module")
def system(databases: Databases, tmp_path_factory: pytest.TempPathFactory) -> Iterator[System]:
    with running_system(databases, tmp_path_factory.mktemp("quarantine")) as running:
        yield running


def post(system: System, path: str, body: dict[str, Any], role: str = "teller") -> Any:
    response = httpx.post(
        f"{system.command.url}{path}", json=body, headers=system.headers(role), timeout=15
    )
    assert response.status_code in (200, 201), response.text
    return response.json()


def get(system: System, path: str, role: str = "admin") -> Any:
    response = httpx.get(f"{system.query.url}{path}", headers=system.headers(role), timeout=15)
    assert response.status_code == 200, response.text
    return response.json()


def write_unappliable_deposit(system: System, account_id: str) -> None:
    """A deposit whose reference PostgreSQL cannot hold, written past the API's checks,
    as a process of an older version (or a bug) could have stored it."""
    ledger = open_ledger(system.settings)
    try:
        account = ledger.get_account(uuid.UUID(account_id))
        assert isinstance(account, Account)
        stamp = Stamp(
            actor=Actor("legacy-batch", "teller"),
            timestamp=datetime.now(UTC),
            correlation_id="legacy-import",
            transaction_id=str(uuid.uuid4()),
            mac_key=ledger.options.mac_key,
        )
        account._trigger(  # past the domain's checks, on purpose
            Account.Deposited,
            stamp,
            amount_minor=1_000,
            currency="GBP",
            channel="cash",
            reference="a\x00b",
            balance_after_minor=account.balance_minor + 1_000,
        )
        ledger.save(account)
    finally:
        ledger.close()


def test_an_unappliable_event_is_quarantined_alerted_and_the_monitoring_goes_on(
    system: System,
) -> None:
    owner = f"q-{uuid.uuid4().hex[:8]}"
    account = post(system, "/v1/accounts", {"owner": owner, "branch": "001", "currency": "GBP"})
    account_id = account["account_id"]
    post(system, f"/v1/accounts/{account_id}/deposits", {"amount": "10.00", "currency": "GBP"})
    write_unappliable_deposit(system, account_id)
    for _ in range(3):  # structuring, after the bad event
        post(
            system,
            f"/v1/accounts/{account_id}/deposits",
            {"amount": "9500.00", "currency": "GBP"},
        )

    def structured() -> list[Any] | None:
        found = get(system, f"/v1/alerts?account_id={account_id}", role="compliance")["items"]
        rules = {a["rule"] for a in found}
        return found if {"structuring", QUARANTINED_RULE} <= rules else None

    alerts = eventually(structured, SETTLE_S, "structuring and quarantine alerts", system)
    [quarantine] = [a for a in alerts if a["rule"] == QUARANTINED_RULE]
    assert quarantine["severity"] == "critical"

    # Every event around the bad one is applied: balance and statement agree.
    view = get(system, f"/v1/accounts/{account_id}?min_version=6")
    assert view["balance"] == "28520.00"
    lines = get(system, f"/v1/accounts/{account_id}/transactions")["items"]
    assert len(lines) == 4  # the quarantined deposit is the one missing

    # Caught up, every one (the case opener keeps writing case events for a moment).
    def settled() -> dict[str, Any] | None:
        items = get(system, "/v1/projections")["items"]
        return {p["name"]: p for p in items} if all(p["lag_events"] == 0 for p in items) else None

    by_name = eventually(settled, SETTLE_S, "every projection caught up", system)
    assert by_name["statements"]["quarantined"] == 1
    assert by_name["balances"]["quarantined"] == 0

    def case_opened() -> str | None:
        # The alert names its case once the case opener has routed it.
        alert = get(system, f"/v1/alerts/{quarantine['alert_id']}", role="compliance")
        if alert["case_id"] is None:
            return None
        case = httpx.get(
            f"{system.query.url}/v1/cases/{alert['case_id']}",
            headers=system.headers("compliance"),
            timeout=15,
        )
        return case.json()["status"] if case.status_code == 200 else None

    assert eventually(case_opened, SETTLE_S, "the quarantine alert's case", system) == "open"

    ready = httpx.get(f"{system.query.url}/health/ready", timeout=15)
    assert ready.status_code == 200
    assert ready.json()["status"] == "degraded"
    assert any("quarantine" in reason for reason in ready.json()["reasons"]), ready.json()
    command_ready = httpx.get(f"{system.command.url}/health/ready", timeout=15).json()
    assert command_ready["status"] == "degraded"

    evidence = get(system, f"/v1/alerts/{quarantine['alert_id']}/evidence", role="auditor")
    assert evidence["verdict"]["reproduced"] is True
    [shown] = evidence["evidence"]
    assert shown["payload"]["reference"] == "a\x00b"
    assert evidence["chain_head_matches"] is True

    listing = system.vigil("quarantine", "list")
    assert listing.returncode == 0, listing.stderr
    assert "statements" in listing.stdout
    assert "0x00" in listing.stdout
    # Nothing was fixed: a retry fails again, says so, and changes nothing.
    retried = system.vigil("quarantine", "retry")
    assert retried.returncode == 1, retried.stdout + retried.stderr
    assert "still failing" in retried.stdout
    assert len(get(system, f"/v1/accounts/{account_id}/transactions")["items"]) == 4
