"""The alert routes of the query API over real HTTP.

Events are written by the ledger in-process and scored by the alerts projection's batch
apply (no Kafka); the query API runs as a real process and re-runs each alert's rule from
the event store for its evidence. Two cases are written as the cases projection would:
one closed (its alert is closed), one acknowledged (its alert stays open).
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import psycopg
import pytest
import redis
from psycopg.rows import dict_row

from application.commands import Deposit, OpenAccount, Submission, Transfer, Withdraw
from application.envelope import envelope
from application.ledger import Ledger
from domain.account import Account
from domain.integrity import Actor
from domain.money import Money
from domain.rules.config import RulesConfig
from domain.rules.engine import Hit
from infrastructure.eventstore.ledger import open_ledger
from infrastructure.monitoring.alerts import alert_body, apply_alerts_batch, register_config
from infrastructure.monitoring.rules_config import config_hash
from infrastructure.settings import Settings
from infrastructure.workers.projections import migrate_read_models
from projections.envelope import Envelope
from tests.conftest import ApiServer, Databases, start_query_api
from tests.e2e.conftest import assert_problem, bearer, make_token

pytestmark = pytest.mark.e2e

HTTP_TIMEOUT_S = 15.0
TELLER = Actor("teller-e2e", "teller")
T0 = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)
# Velocity fires on a handful of movements; every other rule keeps its defaults.
CONFIG = RulesConfig(velocity_count_max=3)

CALLERS: dict[str, tuple[str, str | None]] = {
    "teller": ("teller", "001"),
    "admin": ("admin", None),
    "auditor": ("auditor", None),
    "compliance": ("compliance", None),
    "viewer": ("viewer", None),
}
ALLOWED: dict[str, frozenset[str]] = {
    "list": frozenset({"compliance", "auditor", "admin"}),
    "one": frozenset({"compliance", "auditor", "admin"}),
    "evidence": frozenset({"compliance", "auditor"}),
}


class Clock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> datetime:
        self.now += timedelta(minutes=1)
        return self.now


@dataclass
class AlertsEnv:
    settings: Settings
    server: ApiServer
    client: httpx.Client
    by_rule: dict[str, dict[str, Any]]  # rule -> its alert as the contract shows it

    def get(self, path: str, caller: str = "compliance", **params: Any) -> httpx.Response:
        role, branch = CALLERS[caller]
        token = make_token(self.settings, role, branch=branch, subject=f"{caller}-e2e")
        return self.client.get(path, params=params or None, headers=bearer(token))

    def items(self, caller: str = "compliance", **params: Any) -> list[dict[str, Any]]:
        response = self.get("/v1/alerts", caller, **params)
        assert response.status_code == 200, response.text
        body = response.json()
        assert body["next_cursor"] is None
        items: list[dict[str, Any]] = body["items"]
        return items


def run(ledger: Ledger, *commands: Any) -> None:
    for outcome in ledger.execute([Submission(c, TELLER, "corr-alerts") for c in commands]):
        assert outcome.error is None, outcome.error


def gbp(major: int) -> Money:
    return Money(major * 100, "GBP")


def make_history(ledger: Ledger) -> None:
    """One alert of each rule but the watchlist, on six accounts in branches 001 and 002."""
    accounts = [uuid.uuid4() for _ in range(7)]
    structuring, large, velocity, passing, young, dormant, sink = accounts
    branches = ["001", "002", "001", "001", "002", "001", "001"]
    for account, branch in zip(accounts, branches, strict=True):
        run(ledger, OpenAccount(account, f"owner-{account}", branch, "GBP", 0))
    run(ledger, Deposit(dormant, gbp(100), uuid.uuid4(), channel="card"))
    for _ in range(3):
        run(ledger, Deposit(structuring, gbp(9_500), uuid.uuid4()))
    run(ledger, Deposit(large, gbp(50_000), uuid.uuid4(), channel="wire"))
    for _ in range(4):
        run(ledger, Deposit(velocity, gbp(10), uuid.uuid4(), channel="card"))
    run(ledger, Deposit(passing, gbp(6_000), uuid.uuid4(), channel="wire"))
    run(ledger, Transfer(passing, sink, gbp(5_000), uuid.uuid4()))
    run(ledger, Deposit(young, gbp(20_000), uuid.uuid4(), channel="wire"))
    run(ledger, Withdraw(young, gbp(12_000), uuid.uuid4(), channel="wire"))
    clock = ledger.options.clock
    assert isinstance(clock, Clock)
    clock.now += timedelta(days=181)
    run(ledger, Deposit(dormant, gbp(6_000), uuid.uuid4(), channel="wire"))


def score(settings: Settings, ledger: Ledger) -> None:
    events = []
    for notification in ledger.recorder.select_notifications(start=None, limit=10_000):
        event = ledger.mapper.to_domain_event(notification)
        assert isinstance(event, Account.Event)
        events.append(Envelope.from_json(envelope(notification.id, event)))

    async def apply() -> None:
        async with await psycopg.AsyncConnection.connect(
            settings.resolved_database_url(), autocommit=True
        ) as conn:
            version = await register_config(conn, CONFIG.describe(), config_hash(CONFIG), "")
            await apply_alerts_batch(conn, events, CONFIG, version)

    asyncio.run(apply())


def insert_case(conn: psycopg.Connection[Any], alert: dict[str, Any], status: str) -> None:
    """A `readmodel.cases` row as the cases projection writes it."""
    conn.execute(
        "INSERT INTO readmodel.cases (case_id, alert_id, account_id, branch, rule, severity, "
        "status, explanation, version, opened_at, updated_at, notification_id) "
        "VALUES (%(case_id)s, %(alert_id)s, %(account_id)s, %(branch)s, %(rule)s, "
        "%(severity)s, %(status)s, %(explanation)s, 2, now(), now(), 1)",
        {**alert, "status": status},
    )


def expected_alerts(conn: psycopg.Connection[Any]) -> dict[str, dict[str, Any]]:
    with conn.cursor(row_factory=dict_row) as cursor:
        cursor.execute("SELECT * FROM readmodel.alerts")
        rows = cursor.fetchall()
    by_rule: dict[str, dict[str, Any]] = {}
    for row in rows:
        by_rule[row["rule"]] = {
            "alert_id": str(row["alert_id"]),
            "rule": row["rule"],
            "severity": row["severity"],
            "account_id": str(row["account_id"]),
            "branch": row["branch"],
            "transaction_ids": row["transaction_ids"],
            "positions": row["positions"],
            "explanation": row["explanation"],
            "raised_at": row["raised_at"].astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
            "status": "open",
            "case_id": str(row["case_id"]),
            "rule_config_version": row["rule_config_version"],
            "scored_at_position": row["notification_id"],
            "chain_head": row["chain_head"],
        }
    return by_rule


@pytest.fixture(scope="module")
def alerts_env(
    databases: Databases, tmp_path_factory: pytest.TempPathFactory, redis_client: redis.Redis
) -> Iterator[AlertsEnv]:
    var_dir = tmp_path_factory.mktemp("var-alerts")
    settings = databases.settings_for(databases.fresh(), var_dir)
    asyncio.run(migrate_read_models(settings))
    ledger = open_ledger(settings)
    ledger.options.clock = Clock()
    try:
        make_history(ledger)
        score(settings, ledger)
    finally:
        ledger.close()
    with psycopg.connect(settings.resolved_database_url(), autocommit=True) as conn:
        by_rule = expected_alerts(conn)
        insert_case(conn, by_rule["large_transaction"], "closed")
        insert_case(conn, by_rule["structuring"], "acknowledged")
    by_rule["large_transaction"]["status"] = "closed"
    for rule, alert in by_rule.items():
        # Not routed yet (no case row, not suppressed): the case it would open is not shown.
        if rule not in ("large_transaction", "structuring"):
            alert["case_id"] = None
    server = start_query_api(settings, var_dir / "logs")
    try:
        with httpx.Client(base_url=server.url, timeout=HTTP_TIMEOUT_S) as client:
            yield AlertsEnv(settings, server, client, by_rule)
    finally:
        server.stop()


def ids(items: list[dict[str, Any]]) -> list[str]:
    return [item["alert_id"] for item in items]


def newest_first(alerts: list[dict[str, Any]]) -> list[str]:
    ordered = sorted(alerts, key=lambda a: a["alert_id"])
    return ids(sorted(ordered, key=lambda a: a["raised_at"], reverse=True))


# --- The list ---------------------------------------------------------------------------


def test_the_history_raised_one_alert_of_each_rule_but_the_watchlist(
    alerts_env: AlertsEnv,
) -> None:
    assert set(alerts_env.by_rule) == {
        "large_transaction",
        "structuring",
        "velocity",
        "pass_through",
        "new_account_outflow",
        "dormant_reactivation",
    }


def test_alerts_list_newest_first_with_the_contract_fields(alerts_env: AlertsEnv) -> None:
    items = alerts_env.items()
    expected = list(alerts_env.by_rule.values())
    assert ids(items) == newest_first(expected)
    assert {item["alert_id"]: item for item in items} == {a["alert_id"]: a for a in expected}
    # The same fields the projection publishes on `vigil.alerts`.
    hit = Hit("velocity", "medium", str(uuid.uuid4()), (), "x", T0, 1)
    published = set(alert_body(hit, "001", None, 1))
    assert all(set(item) == published for item in items)


def test_an_alert_is_closed_only_when_its_case_is_closed(alerts_env: AlertsEnv) -> None:
    by_rule = alerts_env.by_rule
    closed = alerts_env.items(status="closed")
    assert ids(closed) == [by_rule["large_transaction"]["alert_id"]]
    assert closed[0]["status"] == "closed"
    open_ = alerts_env.items(status="open")
    assert len(open_) == 5
    assert by_rule["structuring"]["alert_id"] in ids(open_)  # acknowledged: still open
    assert all(item["status"] == "open" for item in open_)


@pytest.mark.parametrize(
    ("params", "rules"),
    [
        ({"severity": "high"}, {"large_transaction", "structuring", "pass_through"}),
        (
            {"severity": "medium"},
            {"velocity", "new_account_outflow", "dormant_reactivation"},
        ),
        ({"severity": "critical"}, set()),
        ({"rule": "velocity"}, {"velocity"}),
        ({"rule": "watchlist"}, set()),
        ({"branch": "002"}, {"large_transaction", "new_account_outflow"}),
        ({"branch": "002", "status": "open"}, {"new_account_outflow"}),
        ({"severity": "high", "status": "open"}, {"structuring", "pass_through"}),
    ],
)
def test_alerts_filter_by_severity_rule_branch_and_status(
    alerts_env: AlertsEnv, params: dict[str, str], rules: set[str]
) -> None:
    assert {item["rule"] for item in alerts_env.items(**params)} == rules


def test_alerts_filter_by_account(alerts_env: AlertsEnv) -> None:
    alert = alerts_env.by_rule["pass_through"]
    assert ids(alerts_env.items(account_id=alert["account_id"])) == [alert["alert_id"]]
    assert alerts_env.items(account_id=str(uuid.uuid4())) == []


def test_alerts_filter_by_time_from_inclusive_to_exclusive(alerts_env: AlertsEnv) -> None:
    by_rule = alerts_env.by_rule
    velocity_at = by_rule["velocity"]["raised_at"]
    dormant_at = by_rule["dormant_reactivation"]["raised_at"]
    since = {item["rule"] for item in alerts_env.items(**{"from": velocity_at})}
    assert since == {"velocity", "pass_through", "new_account_outflow", "dormant_reactivation"}
    window = {item["rule"] for item in alerts_env.items(**{"from": velocity_at, "to": dormant_at})}
    assert window == {"velocity", "pass_through", "new_account_outflow"}
    before = {item["rule"] for item in alerts_env.items(to=velocity_at)}
    assert before == {"structuring", "large_transaction"}


def test_alerts_page_through_with_cursors_without_duplicates(alerts_env: AlertsEnv) -> None:
    pages: list[list[str]] = []
    cursor: str | None = None
    while True:
        params: dict[str, Any] = {"limit": 2}
        if cursor is not None:
            params["cursor"] = cursor
        response = alerts_env.get("/v1/alerts", **params)
        assert response.status_code == 200, response.text
        body = response.json()
        pages.append(ids(body["items"]))
        cursor = body["next_cursor"]
        if cursor is None:
            break
        assert len(pages) < 10, "the cursor must make progress"
    assert [len(page) for page in pages] == [2, 2, 2]
    assert [i for page in pages for i in page] == newest_first(list(alerts_env.by_rule.values()))


def test_a_filtered_list_pages_within_its_filter(alerts_env: AlertsEnv) -> None:
    first = alerts_env.get("/v1/alerts", severity="medium", limit=2).json()
    assert len(first["items"]) == 2
    second = alerts_env.get(
        "/v1/alerts", severity="medium", limit=2, cursor=first["next_cursor"]
    ).json()
    assert second["next_cursor"] is None
    rules = {item["rule"] for item in first["items"] + second["items"]}
    assert rules == {"velocity", "new_account_outflow", "dormant_reactivation"}


@pytest.mark.parametrize(
    "params",
    [
        {"limit": 501},
        {"limit": 0},
        {"cursor": "not-a-cursor"},
        {"severity": "low"},
        {"rule": "smurfing"},
        {"status": "pending"},
        {"account_id": "nope"},
        {"from": "2026-03-03T00:00:00Z", "to": "2026-03-02T00:00:00Z"},
        {"from": "2026-03-02T00:00:00"},
    ],
)
def test_malformed_alert_filters_are_validation_errors(
    alerts_env: AlertsEnv, params: dict[str, Any]
) -> None:
    assert_problem(alerts_env.get("/v1/alerts", **params), 422, "validation_error")


def test_a_cursor_of_another_list_is_a_validation_error(alerts_env: AlertsEnv) -> None:
    foreign = "WyJhY2NvdW50cyIsIjAwMDAiXQ"  # ["accounts","0000"]
    assert_problem(alerts_env.get("/v1/alerts", cursor=foreign), 422, "validation_error")


# --- One alert, RBAC, not found -------------------------------------------------------


def test_one_alert_reads_as_in_the_list(alerts_env: AlertsEnv) -> None:
    for alert in alerts_env.by_rule.values():
        response = alerts_env.get(f"/v1/alerts/{alert['alert_id']}", "auditor")
        assert response.status_code == 200, response.text
        assert response.json() == alert


def _route(env: AlertsEnv, route: str) -> str:
    alert_id = env.by_rule["structuring"]["alert_id"]
    return {
        "list": "/v1/alerts",
        "one": f"/v1/alerts/{alert_id}",
        "evidence": f"/v1/alerts/{alert_id}/evidence",
    }[route]


@pytest.mark.parametrize(
    ("route", "caller"), [(route, caller) for route in ALLOWED for caller in CALLERS]
)
def test_alert_routes_answer_exactly_the_roles_the_contract_allows(
    alerts_env: AlertsEnv, route: str, caller: str
) -> None:
    response = alerts_env.get(_route(alerts_env, route), caller)
    if caller in ALLOWED[route]:
        assert response.status_code == 200, response.text
    else:
        assert_problem(response, 403, "forbidden")


@pytest.mark.parametrize("route", list(ALLOWED))
def test_alert_routes_refuse_a_request_without_a_token(alerts_env: AlertsEnv, route: str) -> None:
    assert_problem(alerts_env.client.get(_route(alerts_env, route)), 401, "unauthorized")


@pytest.mark.parametrize("suffix", ["", "/evidence"])
def test_an_unknown_alert_is_not_found(alerts_env: AlertsEnv, suffix: str) -> None:
    response = alerts_env.get(f"/v1/alerts/{uuid.uuid4()}{suffix}", "auditor")
    assert_problem(response, 404, "alert_not_found")


# --- Evidence -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "rule",
    [
        "large_transaction",
        "structuring",
        "velocity",
        "pass_through",
        "new_account_outflow",
        "dormant_reactivation",
    ],
)
def test_each_alerts_evidence_reruns_to_the_same_verdict(alerts_env: AlertsEnv, rule: str) -> None:
    alert = alerts_env.by_rule[rule]
    response = alerts_env.get(f"/v1/alerts/{alert['alert_id']}/evidence", "compliance")
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["alert"] == alert
    assert body["verdict"] == {
        "reproduced": True,
        "rule": rule,
        "positions": alert["positions"],
        "transaction_ids": alert["transaction_ids"],
        "explanation": alert["explanation"],
    }
    assert body["chain_head_matches"] is True
    assert body["rule_config_version"] == alert["rule_config_version"]
    assert body["rule_config"] == CONFIG.describe()
    events = body["evidence"]
    assert [e["notification_id"] for e in events] == alert["positions"]
    assert events[-1]["hash"] == alert["chain_head"]
    assert events[-1]["timestamp"] == alert["raised_at"]
    for event in events:
        assert set(event) == {
            "notification_id",
            "version",
            "event_type",
            "timestamp",
            "transaction_id",
            "payload",
            "hash",
            "previous_hash",
            "actor",
            "correlation_id",
        }
        assert event["actor"] == {"subject": "teller-e2e", "role": "teller"}
        assert event["correlation_id"] == "corr-alerts"


def test_stats_count_open_alerts_by_severity_without_closed_cases(
    alerts_env: AlertsEnv,
) -> None:
    response = alerts_env.get("/v1/stats/overview", "viewer")
    assert response.status_code == 200, response.text
    assert response.json()["open_alerts_by_severity"] == {"high": 2, "medium": 3}
