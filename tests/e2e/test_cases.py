"""Alert cases and the watchlist over real HTTP, with every process running: an alert on
`vigil.alerts` opens a case (once, however often it comes), compliance works it through
the command API, the query API shows it and its history, and only the roles the contract
names may act."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any
from uuid import UUID, uuid4

import httpx
import psycopg
import pytest

from domain.account import Account
from domain.case import case_id_for
from infrastructure.eventstore.ledger import open_ledger
from infrastructure.kafka.authenticity import seal_alert
from tests.conftest import Databases
from tests.e2e.conftest import assert_problem
from tests.e2e.system import System, eventually, running_system

pytestmark = pytest.mark.e2e

CASE_VISIBLE_S = 60.0  # the first alert waits for consumer groups to form
PROJECTED_S = 15.0
ROLES = ("teller", "admin", "auditor", "compliance", "viewer")
CASE_ACTIONS: dict[str, dict[str, Any]] = {
    "acknowledge": {"note": "looking"},
    "assign": {"assignee": "bob"},
    "escalate": {"note": "pattern confirmed"},
    "comment": {"note": "called the branch"},
    "close": {"resolution": "no_action", "note": "payroll"},
}


@pytest.fixture(scope="module")
def system(databases: Databases, tmp_path_factory: pytest.TempPathFactory) -> Iterator[System]:
    with running_system(databases, tmp_path_factory.mktemp("cases")) as running:
        yield running


@pytest.fixture(scope="module")
def http() -> Iterator[httpx.Client]:
    with httpx.Client(timeout=15) as client:
        yield client


def open_account(system: System, http: httpx.Client) -> str:
    reply = http.post(
        f"{system.command.url}/v1/accounts",
        json={"owner": "Case Test", "branch": "001", "currency": "GBP"},
        headers=system.headers("teller"),
    )
    assert reply.status_code == 201, reply.text
    account_id: str = reply.json()["account_id"]
    return account_id


def alert(account_id: str, rule: str = "structuring", severity: str = "high") -> dict[str, Any]:
    alert_id = uuid4()
    return {
        "alert_id": str(alert_id),
        "rule": rule,
        "severity": severity,
        "account_id": account_id,
        "transaction_ids": [str(uuid4()), str(uuid4()), str(uuid4())],
        "positions": [11, 12, 13],
        "explanation": "3 cash deposits totalling 28,500.00 GBP within 24h, each under 10,000.00",
        "raised_at": "2026-03-01T09:00:00.000000Z",
        "status": "open",
        "case_id": str(case_id_for(alert_id)),
        "rule_config_version": 1,
    }


def cases_of(system: System, http: httpx.Client, account_id: str) -> list[dict[str, Any]]:
    reply = http.get(
        f"{system.query.url}/v1/cases",
        params={"account_id": account_id},
        headers=system.headers("compliance"),
    )
    assert reply.status_code == 200, reply.text
    items: list[dict[str, Any]] = reply.json()["items"]
    return items


def case_of(system: System, http: httpx.Client, message: dict[str, Any]) -> dict[str, Any]:
    """The alert's case as the query API lists it, once it is there."""

    def listed() -> dict[str, Any] | None:
        found = [
            c
            for c in cases_of(system, http, message["account_id"])
            if c["alert_id"] == message["alert_id"]
        ]
        return found[0] if found else None

    return eventually(listed, CASE_VISIBLE_S, f"the case of alert {message['alert_id']}", system)


def opened_case(system: System, http: httpx.Client) -> dict[str, Any]:
    message = alert(open_account(system, http))
    system.publish_alerts(message)
    return case_of(system, http, message)


def act(
    system: System,
    http: httpx.Client,
    case_id: str,
    action: str,
    body: dict[str, Any] | None = None,
    role: str = "compliance",
    subject: str | None = None,
) -> httpx.Response:
    return http.post(
        f"{system.command.url}/v1/cases/{case_id}/{action}",
        json=body,
        headers=system.headers(role, subject),
    )


def case_with_history(
    system: System, http: httpx.Client, case_id: str, min_version: int
) -> dict[str, Any]:
    def fetched() -> dict[str, Any] | None:
        reply = http.get(
            f"{system.query.url}/v1/cases/{case_id}",
            params={"min_version": min_version},
            headers=system.headers("auditor"),
        )
        if reply.status_code == 503:
            return None
        assert reply.status_code == 200, reply.text
        body: dict[str, Any] = reply.json()
        return body

    return eventually(fetched, PROJECTED_S, f"case {case_id} at version {min_version}", system)


def test_an_alert_on_the_topic_opens_a_case_visible_in_the_query_api(
    system: System, http: httpx.Client
) -> None:
    account_id = open_account(system, http)
    message = alert(account_id)
    system.publish_alerts(message)
    case = case_of(system, http, message)
    assert case["case_id"] == str(case_id_for(message["alert_id"]))
    assert (case["status"], case["rule"], case["severity"]) == ("open", "structuring", "high")
    assert (case["account_id"], case["branch"], case["version"]) == (account_id, "001", 1)
    assert case["explanation"] == message["explanation"]
    full = case_with_history(system, http, case["case_id"], 1)
    (opening,) = full["history"]
    assert opening["event_type"] == "CaseOpened"
    assert opening["actor"] == {"subject": "system:rules", "role": "system"}


def test_the_same_alert_published_twice_opens_one_case(system: System, http: httpx.Client) -> None:
    account_id = open_account(system, http)
    twice, after = alert(account_id), alert(account_id, "velocity", "medium")
    # Same key, same partition: once the later alert's case is there, both copies were read.
    system.publish_alerts(twice, twice, after)
    case_of(system, http, after)
    cases = cases_of(system, http, account_id)
    assert sorted(c["alert_id"] for c in cases) == sorted([twice["alert_id"], after["alert_id"]])
    case_id = str(case_id_for(twice["alert_id"]))
    assert len(case_with_history(system, http, case_id, 1)["history"]) == 1
    ledger = open_ledger(system.settings)
    try:
        assert len(list(ledger.repository.event_store.get(UUID(case_id)))) == 1
    finally:
        ledger.close()


def test_an_alert_the_alerts_relay_did_not_seal_opens_no_case_and_is_set_aside(
    system: System, http: httpx.Client
) -> None:
    account_id = open_account(system, http)
    unsealed, forged, genuine = alert(account_id), alert(account_id), alert(account_id)
    forged = seal_alert(forged, b"a key the attacker guessed")
    system.publish_alerts(unsealed, forged, seal=False)
    # Same key, same partition: once the genuine alert's case is there, all were read.
    system.publish_alerts(genuine)
    case_of(system, http, genuine)
    assert [c["alert_id"] for c in cases_of(system, http, account_id)] == [genuine["alert_id"]]
    with psycopg.connect(system.settings.resolved_database_url(), autocommit=True) as conn:
        rows = conn.execute(
            "SELECT alert_id, error FROM public.case_opener_quarantine WHERE account_id = %s",
            (account_id,),
        ).fetchall()
    assert sorted(str(row[0]) for row in rows) == sorted([unsealed["alert_id"], forged["alert_id"]])
    assert all("mac" in str(row[1]) for row in rows), rows


def test_a_case_is_worked_over_http_and_its_history_names_every_actor(
    system: System, http: httpx.Client
) -> None:
    case_id = opened_case(system, http)["case_id"]
    refused = act(system, http, case_id, "escalate", {"note": "too soon"})
    assert_problem(refused, 409, "invalid_transition")
    reply = act(system, http, case_id, "acknowledge", None, subject="olivia")
    assert reply.status_code == 200, reply.text
    assert (reply.json()["status"], reply.json()["version"]) == ("acknowledged", 2)
    assert_problem(act(system, http, case_id, "acknowledge", {}), 409, "invalid_transition")
    steps = [
        ("assign", {"assignee": "bob", "note": "yours"}, "olivia", "acknowledged"),
        ("comment", {"note": "called the branch"}, "bob", "acknowledged"),
        ("escalate", {"note": "pattern confirmed"}, "bob", "escalated"),
    ]
    for action, body, subject, status in steps:
        reply = act(system, http, case_id, action, body, subject=subject)
        assert reply.status_code == 200, reply.text
        assert reply.json()["status"] == status
    assert_problem(
        act(system, http, case_id, "close", {"resolution": "no_action"}), 422, "validation_error"
    )
    assert_problem(
        act(system, http, case_id, "close", {"resolution": "done", "note": "x"}),
        422,
        "validation_error",
    )
    closing = {"resolution": "suspicious_activity_reported", "note": "SAR filed"}
    reply = act(system, http, case_id, "close", closing, subject="bob")
    assert reply.status_code == 200, reply.text
    closed = reply.json()
    assert (closed["status"], closed["resolution"], closed["assignee"]) == (
        "closed",
        "suspicious_activity_reported",
        "bob",
    )
    for action, body in CASE_ACTIONS.items():
        assert_problem(act(system, http, case_id, action, body), 409, "invalid_transition")
    full = case_with_history(system, http, case_id, 6)
    assert (full["status"], full["version"], full["assignee"]) == ("closed", 6, "bob")
    assert full["closed_at"] is not None
    history = [
        (h["version"], h["event_type"], h["actor"]["subject"], h["actor"]["role"], h["note"])
        for h in full["history"]
    ]
    assert history == [
        (1, "CaseOpened", "system:rules", "system", None),
        (2, "CaseAcknowledged", "olivia", "compliance", None),
        (3, "CaseAssigned", "olivia", "compliance", "yours"),
        (4, "CaseCommented", "bob", "compliance", "called the branch"),
        (5, "CaseEscalated", "bob", "compliance", "pattern confirmed"),
        (6, "CaseClosed", "bob", "compliance", "SAR filed"),
    ]
    assert full["history"][2]["details"]["assignee"] == "bob"
    assert full["history"][5]["details"]["resolution"] == "suspicious_activity_reported"
    assert all(h["timestamp"].endswith("Z") for h in full["history"])


def test_acknowledge_and_close_work_straight_from_open(system: System, http: httpx.Client) -> None:
    case_id = opened_case(system, http)["case_id"]
    reply = act(system, http, case_id, "close", {"resolution": "false_positive", "note": "ok"})
    assert reply.status_code == 200, reply.text
    assert reply.json()["status"] == "closed"


@pytest.mark.parametrize("action", list(CASE_ACTIONS))
@pytest.mark.parametrize("role", [r for r in ROLES if r != "compliance"])
def test_only_compliance_may_act_on_a_case(
    system: System, http: httpx.Client, role: str, action: str
) -> None:
    case_id = str(case_id_for(uuid4()))  # refused before the case is even looked up
    assert_problem(act(system, http, case_id, action, CASE_ACTIONS[action], role), 403, "forbidden")


def test_an_unknown_case_is_404_on_both_apis(system: System, http: httpx.Client) -> None:
    case_id = str(uuid4())
    assert_problem(act(system, http, case_id, "acknowledge"), 404, "case_not_found")
    reply = http.get(f"{system.query.url}/v1/cases/{case_id}", headers=system.headers("admin"))
    assert_problem(reply, 404, "case_not_found")


@pytest.mark.parametrize("role", ROLES)
def test_admin_and_compliance_may_freeze_the_account_from_a_case(
    system: System, http: httpx.Client, role: str
) -> None:
    case = opened_case(system, http)
    reply = act(system, http, case["case_id"], "freeze-account", {"note": "funds at risk"}, role)
    if role not in ("admin", "compliance"):
        assert_problem(reply, 403, "forbidden")
        return
    assert reply.status_code == 200, reply.text
    assert (reply.json()["account_id"], reply.json()["status"]) == (case["account_id"], "frozen")
    again = act(system, http, case["case_id"], "freeze-account", {"note": "again"}, role)
    assert_problem(again, 409, "account_frozen")
    ledger = open_ledger(system.settings)
    try:
        frozen = list(ledger.repository.event_store.get(UUID(case["account_id"])))[-1]
    finally:
        ledger.close()
    assert isinstance(frozen, Account.Frozen)
    assert frozen.reason == f"case {case['case_id']}: funds at risk"
    assert frozen.actor["role"] == role


@pytest.mark.parametrize("role", ROLES)
def test_cases_are_read_by_compliance_auditors_and_admins(
    system: System, http: httpx.Client, role: str
) -> None:
    allowed = role in ("compliance", "auditor", "admin")
    for path in ("/v1/cases", "/v1/cases/counts"):
        reply = http.get(f"{system.query.url}{path}", headers=system.headers(role))
        if allowed:
            assert reply.status_code == 200, reply.text
        else:
            assert_problem(reply, 403, "forbidden")


def test_case_counts_and_filters_follow_the_cases(system: System, http: httpx.Client) -> None:
    case = opened_case(system, http)
    headers = system.headers("compliance")
    counts = http.get(f"{system.query.url}/v1/cases/counts", headers=headers).json()
    assert set(counts["by_status"]) == {"open", "acknowledged", "escalated", "closed"}
    assert counts["open_by_severity"]["high"] >= 1
    assert counts["by_status"]["open"] >= 1
    listing = http.get(
        f"{system.query.url}/v1/cases",
        params={"status": "open", "severity": "high", "branch": "001", "limit": 1},
        headers=headers,
    ).json()
    assert len(listing["items"]) == 1
    assert listing["items"][0]["status"] == "open"
    assert listing["next_cursor"] is not None or counts["by_status"]["open"] == 1
    by_rule = http.get(
        f"{system.query.url}/v1/cases",
        params={"rule": "no_such_rule"},
        headers=headers,
    ).json()
    assert by_rule == {"items": [], "next_cursor": None}
    assert case["case_id"] in {
        c["case_id"]
        for c in http.get(
            f"{system.query.url}/v1/cases",
            params={"from": "2000-01-01T00:00:00Z", "limit": 500},
            headers=headers,
        ).json()["items"]
    }


def watchlist(system: System, http: httpx.Client, listed: bool = True) -> set[str]:
    reply = http.get(
        f"{system.query.url}/v1/watchlist",
        params={"listed": str(listed).lower(), "limit": 500},
        headers=system.headers("auditor"),
    )
    assert reply.status_code == 200, reply.text
    return {entry["account_id"] for entry in reply.json()["items"]}


def test_the_watchlist_adds_lists_and_removes_accounts(system: System, http: httpx.Client) -> None:
    account_id = open_account(system, http)
    url = f"{system.command.url}/v1/watchlist"
    compliance = system.headers("compliance", "olivia")
    body = {"account_id": account_id, "reason": "sanctions hit"}
    added = http.post(url, json=body, headers=compliance)
    assert added.status_code == 201, added.text
    assert (added.json()["listed"], added.json()["version"]) == (True, 1)
    assert_problem(http.post(url, json=body, headers=compliance), 409, "already_listed")
    eventually(
        lambda: True if account_id in watchlist(system, http) else None,
        PROJECTED_S,
        "the listed account in GET /v1/watchlist",
        system,
    )
    removed = http.delete(f"{url}/{account_id}", params={"reason": "cleared"}, headers=compliance)
    assert removed.status_code == 200, removed.text
    assert removed.json()["listed"] is False
    assert_problem(
        http.request("DELETE", f"{url}/{account_id}", json={"reason": "again"}, headers=compliance),
        404,
        "watchlist_entry_not_found",
    )
    eventually(
        lambda: True if account_id in watchlist(system, http, listed=False) else None,
        PROJECTED_S,
        "the removed account in GET /v1/watchlist?listed=false",
        system,
    )
    assert account_id not in watchlist(system, http)
    restored = http.post(url, json={**body, "reason": "new hit"}, headers=compliance)
    assert restored.status_code == 201, restored.text
    assert restored.json()["version"] == 3


def test_watchlist_refusals_are_problems(system: System, http: httpx.Client) -> None:
    url = f"{system.command.url}/v1/watchlist"
    compliance = system.headers("compliance")
    unknown = http.post(url, json={"account_id": str(uuid4()), "reason": "x"}, headers=compliance)
    assert_problem(unknown, 404, "account_not_found")
    account_id = open_account(system, http)
    no_reason = http.delete(f"{url}/{account_id}", headers=compliance)
    assert_problem(no_reason, 422, "validation_error")
    blank = http.post(url, json={"account_id": account_id, "reason": "  "}, headers=compliance)
    assert_problem(blank, 422, "validation_error")


@pytest.mark.parametrize("role", ROLES)
def test_only_compliance_manages_and_compliance_and_auditors_read_the_watchlist(
    system: System, http: httpx.Client, role: str
) -> None:
    account_id = str(uuid4())
    headers = system.headers(role)
    posted = http.post(
        f"{system.command.url}/v1/watchlist",
        json={"account_id": account_id, "reason": "x"},
        headers=headers,
    )
    deleted = http.delete(
        f"{system.command.url}/v1/watchlist/{account_id}", params={"reason": "x"}, headers=headers
    )
    read = http.get(f"{system.query.url}/v1/watchlist", headers=headers)
    if role == "compliance":
        assert_problem(posted, 404, "account_not_found")
        assert_problem(deleted, 404, "watchlist_entry_not_found")
    else:
        assert_problem(posted, 403, "forbidden")
        assert_problem(deleted, 403, "forbidden")
    if role in ("compliance", "auditor"):
        assert read.status_code == 200, read.text
    else:
        assert_problem(read, 403, "forbidden")
