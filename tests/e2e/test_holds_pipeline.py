"""Holds and reversals through the whole pipeline as real processes: the command API, the
relay, the projection workers and the case opener's expiry sweep, read back through the
query API (available balance, holds by id and by account, statement lines that name what
they reverse), and the read models equal to a fresh replay of the store."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.conftest import Databases
from tests.e2e.system import System, eventually, running_system

pytestmark = pytest.mark.e2e

TIMEOUT_S = 60.0


@pytest.fixture(scope="module")
def system(databases: Databases, tmp_path_factory: pytest.TempPathFactory) -> Iterator[System]:
    with running_system(
        databases,
        tmp_path_factory.mktemp("holds"),
        processes=("relay", "workers", "case_opener"),
        hold_sweep_interval_s=0.5,
        screening_review_timeout_s=3,
    ) as running:
        # Consumer groups take a few seconds to form: wait for a first account to show.
        with httpx.Client(timeout=10) as http:
            account_id = _account(running, http, "1.00")

            def shown() -> bool | None:
                response = http.get(
                    f"{running.query.url}/v1/accounts/{account_id}",
                    headers=running.headers("teller"),
                )
                return True if response.status_code == 200 else None

            eventually(shown, TIMEOUT_S, "a first account in the query API", running)
        yield running


@pytest.fixture
def http() -> Iterator[httpx.Client]:
    with httpx.Client(timeout=10) as client:
        yield client


def _post(system: System, http: httpx.Client, path: str, body: dict[str, Any], role: str) -> Any:
    response = http.post(f"{system.command.url}{path}", json=body, headers=system.headers(role))
    assert response.status_code in (200, 201), response.text
    return response.json()


def _get(system: System, http: httpx.Client, path: str, role: str = "teller") -> Any:
    response = http.get(f"{system.query.url}{path}", headers=system.headers(role))
    assert response.status_code == 200, response.text
    return response.json()


def _hold(system: System, http: httpx.Client, hold_id: str) -> dict[str, Any]:
    """The hold as the query API shows it, or {} until the balances projection has it (a
    teller is told 403 then, as for an account it cannot see)."""
    response = http.get(f"{system.query.url}/v1/holds/{hold_id}", headers=system.headers("teller"))
    return response.json() if response.status_code == 200 else {}  # type: ignore[no-any-return]


def _account(system: System, http: httpx.Client, balance: str) -> str:
    opened = _post(
        system,
        http,
        "/v1/accounts",
        {"owner": "Holds", "branch": "001", "currency": "GBP"},
        "teller",
    )
    account_id: str = opened["account_id"]
    _post(
        system,
        http,
        f"/v1/accounts/{account_id}/deposits",
        {"amount": balance, "currency": "GBP"},
        "teller",
    )
    return account_id


def test_holds_captures_and_reversals_reach_the_query_api(
    system: System, http: httpx.Client
) -> None:
    source, payee = _account(system, http, "100.00"), _account(system, http, "0.01")
    hold = _post(
        system,
        http,
        "/v1/holds",
        {"account_id": source, "amount": "60.00", "currency": "GBP", "to_account_id": payee},
        "teller",
    )
    account = _get(system, http, f"/v1/accounts/{source}?min_version={hold['version']}")
    assert (account["balance"], account["available_balance"]) == ("100.00", "40.00")
    listed = _get(system, http, f"/v1/accounts/{source}/holds?status=pending")
    assert [h["hold_id"] for h in listed["items"]] == [hold["hold_id"]]

    captured = _post(
        system, http, f"/v1/holds/{hold['hold_id']}/capture", {"amount": "45.00"}, "teller"
    )
    reversal = _post(
        system,
        http,
        f"/v1/transactions/{captured['transaction_id']}/reversal",
        {"reason": "partial refund", "amount": "5.00"},
        "admin",
    )
    version = next(a["version"] for a in reversal["accounts"] if a["account_id"] == source)
    account = _get(system, http, f"/v1/accounts/{source}?min_version={version}")
    assert (account["balance"], account["available_balance"]) == ("60.00", "60.00")

    def hold_captured() -> dict[str, Any] | None:
        found = _hold(system, http, hold["hold_id"])
        return found if found.get("status") == "captured" else None

    seen = eventually(hold_captured, TIMEOUT_S, "the capture in the holds read model", system)
    assert (seen["captured_amount"], seen["capture_transaction_id"]) == (
        "45.00",
        captured["transaction_id"],
    )
    statement = _get(system, http, f"/v1/accounts/{source}/transactions?min_version={version}")[
        "items"
    ]
    latest, capture_line = statement[0], statement[1]
    assert (latest["kind"], latest["direction"], latest["amount"]) == ("reversal", "credit", "5.00")
    assert latest["reverses"] == captured["transaction_id"]
    assert capture_line["transaction_id"] == captured["transaction_id"]
    assert (capture_line["kind"], capture_line["amount"]) == ("transfer", "45.00")

    def original_marked() -> dict[str, Any] | None:
        lines = _get(system, http, f"/v1/accounts/{source}/transactions")["items"]
        line = next(x for x in lines if x["transaction_id"] == captured["transaction_id"])
        return line if line["reversed_amount"] == "5.00" else None

    eventually(original_marked, TIMEOUT_S, "the reversed amount on the original line", system)
    # The payee's side of the capture and of its reversal.
    payee_lines = _get(system, http, f"/v1/accounts/{payee}/transactions")["items"]
    assert [(x["kind"], x["direction"], x["amount"]) for x in payee_lines[:2]] == [
        ("reversal", "debit", "5.00"),
        ("transfer", "credit", "45.00"),
    ]


def test_the_sweep_expires_a_hold_and_releases_its_money(
    system: System, http: httpx.Client
) -> None:
    account_id = _account(system, http, "10.00")
    hold = _post(
        system,
        http,
        "/v1/holds",
        {"account_id": account_id, "amount": "4.00", "currency": "GBP", "expires_in_s": 1},
        "teller",
    )

    def expired() -> dict[str, Any] | None:
        found = _hold(system, http, hold["hold_id"])
        return found if found.get("status") == "expired" else None

    eventually(expired, TIMEOUT_S, "the hold expired by the sweep", system)
    account = _get(system, http, f"/v1/accounts/{account_id}")
    assert (account["balance"], account["available_balance"]) == ("10.00", "10.00")
    history = _get(system, http, f"/v1/audit/accounts/{account_id}/events", "auditor")["items"]
    expiry = next(e for e in history if e["event_type"] == "HoldExpired")
    assert expiry["actor"] == {"subject": "system:holds", "role": "system"}
    assert expiry["payload"]["hold_id"] == hold["hold_id"]


def test_a_screened_transfer_raises_an_alert_and_expires_undecided(
    system: System, http: httpx.Client
) -> None:
    source, target = _account(system, http, "300000.00"), _account(system, http, "0.01")
    response = http.post(
        f"{system.command.url}/v1/transfers",
        json={
            "from_account_id": source,
            "to_account_id": target,
            "amount": "250000.00",
            "currency": "GBP",
        },
        headers=system.headers("teller"),
    )
    assert response.status_code == 202, response.text
    held = response.json()

    def alert() -> dict[str, Any] | None:
        page = _get(system, http, "/v1/alerts?rule=screening_amount", "compliance")
        return next((a for a in page["items"] if a["case_id"] == held["case_id"]), None)

    raised = eventually(alert, TIMEOUT_S, "the screening alert", system)
    assert (raised["severity"], raised["account_id"]) == ("high", source)
    assert raised["transaction_ids"] == [held["transaction_id"]]

    def expired_case() -> dict[str, Any] | None:
        response = http.get(
            f"{system.query.url}/v1/cases/{held['case_id']}", headers=system.headers("compliance")
        )
        case = response.json() if response.status_code == 200 else {}
        return case if case.get("status") == "closed" else None

    case = eventually(expired_case, TIMEOUT_S, "the review case closed by the expiry", system)
    assert case["resolution"] == "expired"
    hold = _hold(system, http, held["hold_id"])
    assert (hold["status"], hold["under_review"]) == ("expired", True)
    account = _get(system, http, f"/v1/accounts/{source}")
    assert (account["balance"], account["available_balance"]) == ("300000.00", "300000.00")


def test_a_released_transfer_posts_under_its_own_id_and_shows_in_both_statements(
    system: System, http: httpx.Client
) -> None:
    source, target = _account(system, http, "300000.00"), _account(system, http, "0.01")
    response = http.post(
        f"{system.command.url}/v1/transfers",
        json={
            "from_account_id": source,
            "to_account_id": target,
            "amount": "250000.00",
            "currency": "GBP",
        },
        headers=system.headers("teller"),
    )
    assert response.status_code == 202, response.text
    held = response.json()
    released = http.post(
        f"{system.command.url}/v1/cases/{held['case_id']}/release",
        json={"note": "payee confirmed"},
        headers=system.headers("compliance"),
    )
    assert released.status_code == 200, released.text
    version = released.json()["hold"]["version"]
    lines = _get(system, http, f"/v1/accounts/{source}/transactions?min_version={version}")
    [debit] = [x for x in lines["items"] if x["transaction_id"] == held["transaction_id"]]
    assert (debit["direction"], debit["amount"], debit["kind"]) == (
        "debit",
        "250000.00",
        "transfer",
    )

    def credited() -> dict[str, Any] | None:
        items = _get(system, http, f"/v1/accounts/{target}/transactions")["items"]
        return next((x for x in items if x["transaction_id"] == held["transaction_id"]), None)

    credit = eventually(credited, TIMEOUT_S, "the released transfer's credit", system)
    assert (credit["direction"], credit["amount"]) == ("credit", "250000.00")
    account = _get(system, http, f"/v1/accounts/{target}")
    assert account["balance"] == "250000.01"


def test_audit_verify_is_clean_and_a_replay_equals_the_read_models(system: System) -> None:
    verify = system.vigil("audit", "verify")
    assert verify.returncode == 0, verify.stdout + verify.stderr
    replay = system.vigil("replay", "--to-shadow")
    assert replay.returncode == 0, replay.stdout + replay.stderr
    diff = system.vigil("replay", "--diff")
    assert diff.returncode == 0, diff.stdout + diff.stderr
