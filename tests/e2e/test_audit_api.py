"""The audit routes over real HTTP, against a `vigil api query` process on a store written
here under a controlled clock: who may call them, the history pages, the store in
notification order with filters, point-in-time state, exports, and the access log."""

from __future__ import annotations

import itertools
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from uuid import UUID, uuid4

import httpx
import pytest
import redis

from application.commands import ChangeStatus, Deposit, OpenAccount, Submission, Transfer, Withdraw
from domain.integrity import Actor
from domain.money import Money
from infrastructure.audit.export import verify_export
from infrastructure.eventstore.ledger import open_ledger
from infrastructure.settings import Settings
from tests.conftest import ApiServer, Databases, settings_env, start_query_api
from tests.e2e.conftest import assert_problem, bearer, make_token

pytestmark = pytest.mark.e2e

HTTP_TIMEOUT_S = 30.0
T0 = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)
MINUTE = timedelta(minutes=1)
ISO = "%Y-%m-%dT%H:%M:%S.%fZ"
ROLES = ("teller", "viewer", "admin", "auditor", "compliance")


class Clock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> datetime:
        self.now += MINUTE
        return self.now


@dataclass
class AuditEnv:
    settings: Settings
    server: ApiServer
    client: httpx.Client
    a: str  # 09:01 opened, 09:02 +100.00, 09:03 -30.00, 09:05 -> B 20.00, 09:06 frozen
    b: str  # 09:04 opened, 09:05 +20.00

    def get(self, path: str, role: str = "auditor", **params: Any) -> httpx.Response:
        return self.client.get(path, params=params or None, headers=self.headers(role))

    def headers(self, role: str) -> dict[str, str]:
        branch = "001" if role == "teller" else None
        token = make_token(self.settings, role, branch=branch, subject=f"{role}-audit-e2e")
        return bearer(token)


def _write_history(settings: Settings) -> tuple[UUID, UUID]:
    ledger = open_ledger(settings)
    ledger.options.clock = Clock()
    a, b = uuid4(), uuid4()
    teller = Actor("tina", "teller")
    commands = [
        OpenAccount(a, "Ada", "001", "GBP", 0),
        Deposit(a, Money(10_000, "GBP"), uuid4()),
        Withdraw(a, Money(3_000, "GBP"), uuid4()),
        OpenAccount(b, "Bob", "001", "GBP", 0),
        Transfer(a, b, Money(2_000, "GBP"), uuid4()),
        ChangeStatus(a, "freeze", "review"),
    ]
    try:
        for command in commands:
            actor = Actor("carol", "compliance") if isinstance(command, ChangeStatus) else teller
            outcome = ledger.execute([Submission(command, actor, "corr-audit")])[0]
            assert outcome.error is None, outcome.error
    finally:
        ledger.close()
    return a, b


@pytest.fixture(scope="module")
def env(
    databases: Databases, tmp_path_factory: pytest.TempPathFactory, redis_client: redis.Redis
) -> Iterator[AuditEnv]:
    var_dir = tmp_path_factory.mktemp("var-audit")
    settings = databases.settings_for(databases.fresh(), var_dir)
    a, b = _write_history(settings)
    server = start_query_api(settings, var_dir / "logs")
    try:
        with httpx.Client(base_url=server.url, timeout=HTTP_TIMEOUT_S) as client:
            yield AuditEnv(settings, server, client, str(a), str(b))
    finally:
        server.stop()


def _routes(env: AuditEnv) -> dict[str, str]:
    return {
        "account_events": f"/v1/audit/accounts/{env.a}/events",
        "events": "/v1/audit/events",
        "state": f"/v1/audit/accounts/{env.a}/state?version=1",
        "exports": "/v1/audit/exports",
        "access_log": "/v1/audit/access-log",
        "verify": "/v1/audit/verify",
    }


@pytest.mark.parametrize("role", ROLES)
def test_only_auditors_and_compliance_reach_the_audit_routes(env: AuditEnv, role: str) -> None:
    for name, path in _routes(env).items():
        allowed = {"auditor"} if name == "access_log" else {"auditor", "compliance"}
        response = env.client.get(path, headers=env.headers(role))
        if role in allowed:
            assert response.status_code == 200, (name, response.text)
        else:
            assert_problem(response, 403, "forbidden")
    body = {"from": T0.isoformat(), "to": (T0 + MINUTE).isoformat()}
    response = env.client.post("/v1/audit/exports", json=body, headers=env.headers(role))
    if role in ("auditor", "compliance"):
        assert response.status_code == 201, response.text
    else:
        assert_problem(response, 403, "forbidden")


def test_an_unauthenticated_audit_read_is_401(env: AuditEnv) -> None:
    assert_problem(env.client.get("/v1/audit/events"), 401, "unauthorized")


def test_an_accounts_history_pages_through_every_event_in_version_order(env: AuditEnv) -> None:
    items: list[dict[str, Any]] = []
    cursor: str | None = None
    pages = 0
    while True:
        params: dict[str, Any] = {"limit": 2, **({"cursor": cursor} if cursor else {})}
        reply = env.get(f"/v1/audit/accounts/{env.a}/events", **params)
        assert reply.status_code == 200, reply.text
        page = reply.json()
        items += page["items"]
        pages += 1
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert pages == 3
    assert [i["version"] for i in items] == [1, 2, 3, 4, 5]
    assert [i["event_type"] for i in items] == [
        "AccountOpened",
        "Deposited",
        "Withdrawn",
        "TransferredOut",
        "Frozen",
    ]
    assert [i["timestamp"] for i in items] == [
        (T0 + m * MINUTE).strftime(ISO) for m in (1, 2, 3, 5, 6)
    ]
    assert items[0]["previous_hash"] == "0" * 64
    for before, after in itertools.pairwise(items):
        assert after["previous_hash"] == before["hash"]
        assert after["notification_id"] > before["notification_id"]
    assert set(items[0]) == {
        "version",
        "notification_id",
        "event_type",
        "timestamp",
        "actor",
        "correlation_id",
        "transaction_id",
        "payload",
        "hash",
        "previous_hash",
    }
    assert items[4]["actor"] == {"subject": "carol", "role": "compliance"}
    assert items[1]["payload"]["amount_minor"] == 10_000


def test_an_unknown_account_has_no_history_and_no_state(env: AuditEnv) -> None:
    unknown = uuid4()
    assert_problem(env.get(f"/v1/audit/accounts/{unknown}/events"), 404, "account_not_found")
    reply = env.get(f"/v1/audit/accounts/{unknown}/state", version=1)
    assert_problem(reply, 404, "account_not_found")


def test_the_store_pages_in_notification_order_with_filters(env: AuditEnv) -> None:
    everything = env.get("/v1/audit/events", limit=500).json()
    assert everything["index"] is True
    assert everything["next_cursor"] is None
    ids = [e["notification_id"] for e in everything["items"]]
    assert ids == sorted(ids)
    assert len(ids) == 7
    first = env.get("/v1/audit/events", limit=4).json()
    rest = env.get("/v1/audit/events", limit=4, cursor=first["next_cursor"]).json()
    assert [e["notification_id"] for e in first["items"] + rest["items"]] == ids
    assert rest["next_cursor"] is None
    deposits = env.get("/v1/audit/events", type="Deposited").json()["items"]
    assert [(e["account_id"], e["payload"]["amount_minor"]) for e in deposits] == [(env.a, 10_000)]
    of_b = env.get("/v1/audit/events", account_id=env.b).json()["items"]
    assert [e["event_type"] for e in of_b] == ["AccountOpened", "TransferredIn"]
    by_carol = env.get("/v1/audit/events", actor="carol").json()["items"]
    assert [e["event_type"] for e in by_carol] == ["Frozen"]
    window = env.get(
        "/v1/audit/events", **{"from": (T0 + 3 * MINUTE).isoformat()}, to=(T0 + 5 * MINUTE)
    ).json()["items"]
    assert [e["event_type"] for e in window] == ["Withdrawn", "AccountOpened"]
    for event in everything["items"]:
        assert {"hash", "previous_hash", "mac", "aggregate_type", "timestamp"} <= set(event)


def test_the_state_is_the_account_as_it_was(env: AuditEnv) -> None:
    expected = {
        1: ("0.00", "open"),
        2: ("100.00", "open"),
        3: ("70.00", "open"),
        4: ("50.00", "open"),
        5: ("50.00", "frozen"),
    }
    for version, (balance, status) in expected.items():
        reply = env.get(f"/v1/audit/accounts/{env.a}/state", version=version)
        assert reply.status_code == 200, reply.text
        view = reply.json()
        assert (view["version"], view["balance"], view["status"]) == (version, balance, status)
    moment = (T0 + 4 * MINUTE + timedelta(seconds=30)).isoformat()
    view = env.get(f"/v1/audit/accounts/{env.a}/state", as_of=moment).json()
    assert (view["version"], view["balance"], view["available_balance"]) == (3, "70.00", "70.00")
    assert view["as_of"] == (T0 + 4 * MINUTE + timedelta(seconds=30)).strftime(ISO)
    assert set(view) >= {"account_id", "owner", "branch", "currency", "overdraft_limit"}
    assert len(view["last_hash"]) == 64
    before = env.get(f"/v1/audit/accounts/{env.a}/state", as_of=T0.isoformat())
    assert_problem(before, 404, "account_not_found")
    assert_problem(env.get(f"/v1/audit/accounts/{env.a}/state"), 422, "validation_error")
    both = env.get(f"/v1/audit/accounts/{env.a}/state", version=1, as_of=T0.isoformat())
    assert_problem(both, 422, "validation_error")
    naive = env.get(f"/v1/audit/accounts/{env.a}/state", as_of="2026-03-02T09:00:00")
    assert_problem(naive, 422, "validation_error")


def test_pages_beyond_the_limit_or_foreign_cursors_are_refused(env: AuditEnv) -> None:
    assert_problem(env.get("/v1/audit/events", limit=501), 422, "validation_error")
    page = env.get(f"/v1/audit/accounts/{env.a}/events", limit=1).json()
    foreign = env.get("/v1/audit/events", cursor=page["next_cursor"])
    assert_problem(foreign, 422, "validation_error")


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"from": "0001-01-01T00:00:00+14:00", "to": "2026-01-01T00:00:00Z"}, "body.from"),
        ({"from": "2026-01-01T00:00:00Z", "to": "9999-12-31T23:59:59-14:00"}, "body.to"),
    ],
)
def test_an_export_range_outside_the_years_once_in_utc_is_refused(
    env: AuditEnv, body: dict[str, str], field: str
) -> None:
    reply = env.client.post("/v1/audit/exports", json=body, headers=env.headers("auditor"))
    problem = assert_problem(reply, 422, "validation_error")
    assert [error["field"] for error in problem["errors"]] == [field], problem


def test_an_export_made_over_http_verifies_and_is_listed(env: AuditEnv) -> None:
    body = {
        "from": T0.isoformat(),
        "to": (T0 + timedelta(hours=1)).isoformat(),
        "account_id": env.a,
        "format": "csv",
    }
    reply = env.client.post("/v1/audit/exports", json=body, headers=env.headers("compliance"))
    assert reply.status_code == 201, reply.text
    created = reply.json()
    manifest = created["manifest"]
    assert manifest["total"] == 5
    assert manifest["exported_by"] == {"subject": "compliance-audit-e2e", "role": "compliance"}
    directory = Path(env.settings.var_dir) / "exports" / created["export_id"]
    assert verify_export(directory).problems == []
    listed = env.get("/v1/audit/exports", role="auditor", limit=500).json()["items"]
    mine = [item for item in listed if item["export_id"] == created["export_id"]]
    assert mine == [
        {
            "export_id": created["export_id"],
            "range": {"from": T0.strftime(ISO), "to": (T0 + timedelta(hours=1)).strftime(ISO)},
            "account_id": env.a,
            "format": "csv",
            "total": 5,
            "exported_by": {"subject": "compliance-audit-e2e", "role": "compliance"},
            "exported_at": manifest["exported_at"],
        }
    ]
    bad = {"from": body["to"], "to": body["from"]}
    response = env.client.post("/v1/audit/exports", json=bad, headers=env.headers("auditor"))
    assert_problem(response, 422, "validation_error")


def test_an_export_is_fetched_over_http_as_one_archive_that_verify_export_accepts(
    env: AuditEnv, tmp_path: Path
) -> None:
    body = {"from": T0.isoformat(), "to": (T0 + timedelta(hours=1)).isoformat()}
    reply = env.client.post("/v1/audit/exports", json=body, headers=env.headers("auditor"))
    assert reply.status_code == 201, reply.text
    export_id = reply.json()["export_id"]
    listed = env.get("/v1/audit/exports", role="compliance", limit=500).json()["items"]
    assert export_id in [item["export_id"] for item in listed]
    manifest = env.get(f"/v1/audit/exports/{export_id}", role="compliance")
    assert manifest.status_code == 200, manifest.text
    assert manifest.json() == reply.json()["manifest"]

    archive = env.get(f"/v1/audit/exports/{export_id}/archive", role="auditor")

    assert archive.status_code == 200, archive.text
    assert archive.headers["content-type"] == "application/gzip"
    assert f"export-{export_id}.tar.gz" in archive.headers["content-disposition"]
    (tmp_path / "trail.tar.gz").write_bytes(archive.content)
    subprocess.run(["tar", "xzf", "trail.tar.gz"], cwd=tmp_path, check=True)
    unpacked = tmp_path / f"export-{export_id}"
    assert sorted(p.name for p in unpacked.iterdir()) == [
        "events.jsonl",
        "manifest.json",
        "public-keys.pem",
    ]
    verified = subprocess.run(
        [sys.executable, "-m", "interfaces.cli", "audit", "verify-export", str(unpacked)],
        capture_output=True,
        text=True,
        env={**settings_env(env.settings)},
        check=False,
    )
    assert verified.returncode == 0, verified.stdout + verified.stderr
    assert verified.stdout.startswith(f"OK: {manifest.json()['total']} events")
    log = env.get("/v1/audit/access-log", limit=20).json()["items"]
    actions = {(e["action"], e["detail"].get("export_id")) for e in log}
    assert ("audit.export_manifest", export_id) in actions
    assert ("audit.export_archive", export_id) in actions


@pytest.mark.parametrize("role", ["teller", "viewer", "admin"])
def test_only_auditors_and_compliance_fetch_exports(env: AuditEnv, role: str) -> None:
    for path in (f"/v1/audit/exports/{uuid4()}", f"/v1/audit/exports/{uuid4()}/archive"):
        assert_problem(env.get(path, role=role), 403, "forbidden")


def test_an_unknown_export_is_404_not_found(env: AuditEnv) -> None:
    for path in (f"/v1/audit/exports/{uuid4()}", f"/v1/audit/exports/{uuid4()}/archive"):
        assert_problem(env.get(path, role="auditor"), 404, "not_found")


def test_the_access_log_lists_the_audit_reads(env: AuditEnv) -> None:
    env.get(f"/v1/audit/accounts/{env.b}/events", role="compliance")
    env.get(f"/v1/audit/accounts/{env.b}/state", role="compliance", version=2)
    env.get("/v1/audit/events", role="compliance", type="Frozen")
    seen: list[dict[str, Any]] = []
    cursor = None
    while True:
        params: dict[str, Any] = {"limit": 50, **({"cursor": cursor} if cursor else {})}
        page = env.get("/v1/audit/access-log", **params).json()
        seen += page["items"]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    # Its own read is the newest audit read. Refusals (an earlier test's 403s) are written
    # in batches a fraction of a second later, so one may be newer still.
    audit_reads = [e for e in seen if e["action"].startswith("audit.")]
    assert audit_reads[0]["action"] == "audit.access_log"
    assert [e["id"] for e in seen] == sorted((e["id"] for e in seen), reverse=True)
    compliance = [e for e in seen if e["subject"] == "compliance-audit-e2e"]
    reads = {(e["action"], e["detail"].get("account_id")) for e in compliance}
    assert ("audit.account_events", env.b) in reads
    assert ("audit.account_state", env.b) in reads
    assert ("audit.events", None) in reads
    frozen = [e for e in compliance if e["action"] == "audit.events"]
    assert any(e["detail"]["type"] == "Frozen" for e in frozen)
    for entry in seen:
        # Beside audit reads, the trail records refusals of any caller (action `refused`).
        if entry["action"].startswith("audit."):
            assert entry["role"] in ("auditor", "compliance")
        else:
            assert entry["action"] in ("read", "refused"), entry
        assert entry["at"].endswith("Z")
        assert entry["correlation_id"]
