"""The query API over real HTTP: read-your-writes (`min_version`) and the Redis cache.

Each test plays the projection's part (rows, NOTIFY, Redis entries) itself
(tests/e2e/query_support.py).
"""

from __future__ import annotations

import threading
import time
import uuid
from typing import Any

import httpx
import orjson
import pytest
import redis

from infrastructure.readmodels.balances_cache import account_cache_key
from tests.conftest import start_query_api
from tests.e2e.conftest import HTTP_TIMEOUT_S, assert_problem, bearer, make_token
from tests.e2e.query_support import QueryEnv, insert_account, route_path

pytestmark = pytest.mark.e2e


# --- Read your writes -----------------------------------------------------------------


def test_min_version_already_projected_answers_at_once(query_env: QueryEnv) -> None:
    main = query_env.seed.main
    started = time.monotonic()
    account = query_env.get(f"/v1/accounts/{main}", min_version=7)
    statement = query_env.get(f"/v1/accounts/{main}/transactions", min_version=6)
    assert (account.status_code, statement.status_code) == (200, 200)
    assert account.json()["projected_version"] == 7
    assert time.monotonic() - started < 1.0


def test_statement_min_version_of_an_event_without_a_line_is_met_by_the_position(
    query_env: QueryEnv,
) -> None:
    # Version 7 made no line; the statements projection has applied it (position = head).
    response = query_env.get(f"/v1/accounts/{query_env.seed.main}/transactions", min_version=7)
    assert response.status_code == 200, response.text
    assert response.json()["items"][0]["version"] == 6


@pytest.mark.parametrize("route", ["account", "transactions"])
def test_min_version_never_projected_is_lagging_after_two_seconds(
    query_env: QueryEnv, route: str
) -> None:
    started = time.monotonic()
    response = query_env.get(route_path(query_env, route), min_version=8)
    elapsed_s = time.monotonic() - started
    assert_problem(response, 503, "projection_lagging")
    assert response.headers["Retry-After"] == "1"
    assert 1.9 <= elapsed_s < 3.5


@pytest.mark.parametrize("route", ["/v1/accounts/{}", "/v1/accounts/{}/transactions"])
def test_min_version_for_an_account_not_yet_projected_is_lagging(
    query_env: QueryEnv, route: str
) -> None:
    """Opened in the event store, not yet in the read model: the wait may find it."""
    account_id = uuid.uuid4()
    with query_env.connect() as conn:
        conn.execute(
            "INSERT INTO ledger_events (originator_id, originator_version, topic, state) "
            "VALUES (%s, 1, 'domain.account:Account.AccountOpened', '\\x00')",
            (account_id,),
        )
    try:
        started = time.monotonic()
        response = query_env.get(route.format(account_id), min_version=1)
        assert_problem(response, 503, "projection_lagging")
        assert time.monotonic() - started >= 1.9
    finally:
        # The store is shared with the other query tests, which know its head.
        with query_env.connect() as conn:
            conn.execute("ALTER TABLE ledger_events DISABLE TRIGGER USER")
            conn.execute("DELETE FROM ledger_events WHERE originator_id = %s", (account_id,))
            conn.execute("ALTER TABLE ledger_events ENABLE TRIGGER USER")


@pytest.mark.parametrize("route", ["/v1/accounts/{}", "/v1/accounts/{}/transactions"])
def test_min_version_for_an_account_the_store_never_held_is_not_found_at_once(
    query_env: QueryEnv, route: str
) -> None:
    """No wait can find it: 404 (a teller: 403, as for another branch's), without the wait."""
    path = route.format(uuid.uuid4())
    started = time.monotonic()
    assert_problem(query_env.get(path, min_version=1), 404, "account_not_found")
    assert_problem(query_env.get(path, "teller_009", min_version=1), 403, "forbidden")
    assert time.monotonic() - started < 1.5


def test_min_version_is_answered_as_soon_as_the_projection_notifies(
    query_env: QueryEnv,
) -> None:
    with query_env.connect() as conn:
        account_id = insert_account(conn, branch="009", balance_minor=100)

    def project_deposit() -> None:
        time.sleep(0.3)
        with query_env.connect() as conn, conn.transaction():
            conn.execute(
                "UPDATE readmodel.accounts SET version = 2, balance_minor = 600 "
                "WHERE account_id = %s",
                (account_id,),
            )
            conn.execute("SELECT pg_notify('readmodel_accounts', %s)", (f"{account_id}:2",))

    projector = threading.Thread(target=project_deposit)
    started = time.monotonic()
    projector.start()
    try:
        response = query_env.get(f"/v1/accounts/{account_id}", "teller_009", min_version=2)
    finally:
        projector.join()
    elapsed_s = time.monotonic() - started
    assert response.status_code == 200, response.text
    assert (response.json()["projected_version"], response.json()["balance"]) == (2, "6.00")
    assert 0.3 <= elapsed_s < 1.0


# --- Redis cache ----------------------------------------------------------------------


def _cache_entry(account_id: str, version: int, balance_minor: int) -> bytes:
    return orjson.dumps(
        {
            "account_id": account_id,
            "owner": f"owner-{account_id[:8]}",
            "branch": "009",
            "currency": "GBP",
            "status": "open",
            "balance_minor": balance_minor,
            "overdraft_limit_minor": 0,
            "version": version,
            "opened_at": "2026-01-05T09:00:00Z",
            "updated_at": "2026-01-07T10:30:00.250000+00:00",
            "last_transaction_at": "2026-01-07T10:30:00.250000Z",
        }
    )


def test_a_newer_cached_account_is_served_from_redis(
    query_env: QueryEnv, redis_client: redis.Redis
) -> None:
    with query_env.connect() as conn:
        account_id = insert_account(conn, branch="009", balance_minor=1_000, version=3)
    key = account_cache_key(query_env.settings.redis_key_prefix, account_id)
    redis_client.set(key, _cache_entry(account_id, version=5, balance_minor=2_500))
    path = f"/v1/accounts/{account_id}"

    body = query_env.get(path, "teller_009").json()
    assert (body["projected_version"], body["balance"]) == (5, "25.00")
    assert body["updated_at"] == "2026-01-07T10:30:00.250000Z"
    started = time.monotonic()
    assert query_env.get(path, min_version=5).json()["projected_version"] == 5
    assert time.monotonic() - started < 1.0
    assert_problem(query_env.get(path, "teller_001"), 403, "forbidden")


def test_an_older_or_unreadable_cache_entry_falls_back_to_postgres(
    query_env: QueryEnv, redis_client: redis.Redis
) -> None:
    with query_env.connect() as conn:
        account_id = insert_account(conn, branch="009", balance_minor=1_000, version=3)
    key = account_cache_key(query_env.settings.redis_key_prefix, account_id)
    path = f"/v1/accounts/{account_id}"
    redis_client.set(key, _cache_entry(account_id, version=2, balance_minor=1))
    body = query_env.get(path, min_version=3).json()
    assert (body["projected_version"], body["balance"]) == (3, "10.00")
    redis_client.set(key, b"{not json")
    assert query_env.get(path).json()["projected_version"] == 3


def test_redis_is_never_required(query_env: QueryEnv, tmp_path: Any) -> None:
    settings = query_env.settings.model_copy(update={"redis_url": "redis://127.0.0.1:1/0"})
    server = start_query_api(settings, tmp_path / "logs")
    try:
        with httpx.Client(base_url=server.url, timeout=HTTP_TIMEOUT_S) as client:
            ready = client.get("/health/ready")
            assert ready.status_code == 200, ready.text
            assert ready.json()["status"] == "degraded"
            assert ready.json()["checks"]["redis"] != "ok"
            token = make_token(settings, "admin")
            for _ in range(3):
                response = client.get(
                    f"/v1/accounts/{query_env.seed.main}",
                    params={"min_version": 7},
                    headers=bearer(token),
                )
                assert response.status_code == 200, response.text
    finally:
        server.stop()
