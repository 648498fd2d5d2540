"""The access trail over real HTTP: account and statement reads and every 401/403, on both
APIs, land in the append-only audit-access log with subject, role, route, account id,
result and correlation id, and auditors read them back."""

from __future__ import annotations

import time
import uuid
from typing import Any

import httpx
import psycopg
import pytest

from infrastructure.settings import Settings
from tests.e2e.conftest import Bank, bearer, make_token
from tests.e2e.query_support import QueryEnv

pytestmark = pytest.mark.e2e

FLUSHED_WITHIN_S = 10.0


def _get(env: QueryEnv, path: str, role: str, branch: str | None, correlation_id: str) -> int:
    token = make_token(env.settings, role, branch=branch, subject=f"trail-{role}")
    headers = {**bearer(token), "X-Correlation-ID": correlation_id}
    return env.client.get(path, headers=headers).status_code


def _trail(env: QueryEnv, correlation_id: str) -> list[dict[str, Any]]:
    """The auditor's view of the access log, filtered to one correlation id, once there."""
    deadline = time.monotonic() + FLUSHED_WITHIN_S
    while True:
        reply = env.get("/v1/audit/access-log", "auditor", limit=500)
        assert reply.status_code == 200, reply.text
        found = [i for i in reply.json()["items"] if i["correlation_id"] == correlation_id]
        if found or time.monotonic() > deadline:
            return found
        time.sleep(0.2)


@pytest.mark.parametrize(
    ("path", "caller", "status"),
    [
        ("/v1/accounts/{main}", ("teller", "001"), 200),
        ("/v1/accounts/{main}/transactions", ("viewer", None), 200),
        ("/v1/accounts/{main}", ("teller", "002"), 403),
        ("/v1/accounts/{missing}", ("admin", None), 404),
        ("/v1/alerts", ("viewer", None), 403),
    ],
)
def test_each_read_of_customer_data_and_each_refusal_is_in_the_access_log(
    query_env: QueryEnv, path: str, caller: tuple[str, str | None], status: int
) -> None:
    account_id = query_env.seed.main if "{main}" in path else str(uuid.uuid4())
    correlation_id = f"trail-{uuid.uuid4()}"
    route = path.replace("{main}", "{account_id}").replace("{missing}", "{account_id}")
    concrete = path.format(main=account_id, missing=account_id)
    role, branch = caller
    assert _get(query_env, concrete, role, branch, correlation_id) == status
    [entry] = _trail(query_env, correlation_id)
    assert entry["subject"] == f"trail-{role}"
    assert entry["role"] == role
    assert entry["action"] == ("refused" if status == 403 else "read")
    assert entry["detail"]["route"] == route
    assert entry["detail"]["status"] == status
    if "{account_id}" in route:
        assert entry["detail"]["account_id"] == account_id


def test_a_request_without_a_valid_token_is_recorded_with_its_address(
    query_env: QueryEnv,
) -> None:
    correlation_id = f"trail-{uuid.uuid4()}"
    reply = query_env.client.get(
        f"/v1/accounts/{query_env.seed.main}",
        headers={"Authorization": "Bearer x.y.z", "X-Correlation-ID": correlation_id},
    )
    assert reply.status_code == 401
    [entry] = _trail(query_env, correlation_id)
    assert (entry["subject"], entry["role"], entry["action"]) == ("anonymous", "none", "refused")
    assert entry["detail"]["client"] == "127.0.0.1"


def _command_trail(settings: Settings, correlation_id: str) -> list[tuple[Any, ...]]:
    deadline = time.monotonic() + FLUSHED_WITHIN_S
    while True:
        with psycopg.connect(settings.resolved_database_url(), autocommit=True) as conn:
            rows = conn.execute(
                "SELECT subject, role, action, detail FROM public.audit_access_log "
                "WHERE correlation_id = %s",
                (correlation_id,),
            ).fetchall()
        if rows or time.monotonic() > deadline:
            return rows
        time.sleep(0.2)


def test_a_refusal_on_the_command_api_is_in_the_access_log(
    bank: Bank, http: httpx.Client, api_settings: Settings
) -> None:
    account = bank.open_account(branch="001")
    correlation_id = f"trail-{uuid.uuid4()}"
    headers = {**bank.headers("teller", "002", "trail-teller"), "X-Correlation-ID": correlation_id}
    reply = http.post(
        f"/v1/accounts/{account.account_id}/deposits",
        json={"amount": "1.00", "currency": "GBP"},
        headers=headers,
    )
    assert reply.status_code == 403
    [(subject, role, action, detail)] = _command_trail(api_settings, correlation_id)
    assert (subject, role, action) == ("trail-teller", "teller", "refused")
    assert detail["account_id"] == account.account_id
    assert detail["status"] == 403


def test_the_access_log_is_append_only(query_env: QueryEnv) -> None:
    with (
        query_env.connect() as conn,
        pytest.raises(psycopg.Error, match=r"append-only|not allowed|refuse"),
    ):
        conn.execute("DELETE FROM public.audit_access_log")


def test_auditors_filter_the_access_log_by_subject_action_and_account(
    query_env: QueryEnv,
) -> None:
    main = query_env.seed.main
    correlation_id = f"trail-{uuid.uuid4()}"
    assert _get(query_env, f"/v1/accounts/{main}", "viewer", None, correlation_id) == 200
    _trail(query_env, correlation_id)  # flushed
    reply = query_env.get(
        "/v1/audit/access-log", "auditor", subject="trail-viewer", action="read", account_id=main
    )
    assert reply.status_code == 200, reply.text
    items = reply.json()["items"]
    assert items
    assert correlation_id in {item["correlation_id"] for item in items}
    for item in items:
        assert (item["subject"], item["action"]) == ("trail-viewer", "read")
        assert item["detail"]["account_id"] == main
    none = query_env.get("/v1/audit/access-log", "auditor", subject="nobody-at-all")
    assert none.json()["items"] == []
    bad = query_env.get("/v1/audit/access-log", "auditor", subject="a\x00b")
    assert bad.status_code == 422
