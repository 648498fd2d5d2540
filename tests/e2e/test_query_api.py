"""The query API over real HTTP, against read-model rows written here with SQL.

The projections are not running: each test plays the projection's part (rows, NOTIFY,
Redis entries) so that what the API answers can be checked exactly.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import orjson
import psycopg
import pytest
import redis

from infrastructure.readmodel_schema import PROJECTIONS, ensure_read_models
from infrastructure.settings import Settings
from interfaces.api.query.cache import account_cache_key
from tests.conftest import ApiServer, Databases, start_query_api
from tests.e2e.conftest import assert_problem, bearer, make_token

pytestmark = pytest.mark.e2e

HTTP_TIMEOUT_S = 15.0
OPENED_AT = datetime(2026, 1, 5, 9, 0, tzinfo=UTC)
STATEMENT_START = datetime(2026, 1, 6, 8, 0, tzinfo=UTC)

CALLERS: dict[str, tuple[str, str | None]] = {
    "teller_001": ("teller", "001"),
    "teller_002": ("teller", "002"),
    "admin": ("admin", None),
    "auditor": ("auditor", None),
    "compliance": ("compliance", None),
    "viewer": ("viewer", None),
}
ACCOUNT_READERS = frozenset({"teller_001", "admin", "auditor", "compliance", "viewer"})
# route -> callers allowed; every account named below is in branch 001.
ALLOWED: dict[str, frozenset[str]] = {
    "account": ACCOUNT_READERS,
    "accounts": ACCOUNT_READERS,
    "transactions": ACCOUNT_READERS,
    "stats": frozenset({"viewer", "admin", "auditor", "compliance"}),
    "projections": frozenset({"admin", "auditor"}),
}


@dataclass
class Seed:
    """What was written before the server started."""

    main: str  # branch 001, GBP, version 7, with five statement lines (versions 2-6)
    by_branch: dict[str, list[str]] = field(default_factory=dict)
    lines: list[dict[str, Any]] = field(default_factory=list)
    head: int = 0


@dataclass
class QueryEnv:
    settings: Settings
    server: ApiServer
    client: httpx.Client
    seed: Seed

    def get(self, path: str, caller: str = "admin", **params: Any) -> httpx.Response:
        role, branch = CALLERS.get(caller, ("teller", caller.removeprefix("teller_")))
        token = make_token(self.settings, role, branch=branch, subject=f"{caller}-e2e")
        # An empty `params` would drop a query string written into `path`.
        return self.client.get(path, params=params or None, headers=bearer(token))

    def connect(self) -> psycopg.Connection[Any]:
        return psycopg.connect(self.settings.resolved_database_url(), autocommit=True)


def insert_account(
    conn: psycopg.Connection[Any],
    *,
    branch: str,
    currency: str = "GBP",
    status: str = "open",
    balance_minor: int = 0,
    overdraft_limit_minor: int = 0,
    version: int = 1,
) -> str:
    account_id = str(uuid.uuid4())
    conn.execute(
        "INSERT INTO readmodel.accounts (account_id, owner, branch, currency, status, "
        "balance_minor, overdraft_limit_minor, version, opened_at, updated_at, "
        "last_transaction_at, notification_id) "
        "VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, 1)",
        (
            account_id,
            f"owner-{account_id[:8]}",
            branch,
            currency,
            status,
            balance_minor,
            overdraft_limit_minor,
            version,
            OPENED_AT,
            OPENED_AT + timedelta(hours=1),
            None if version == 1 else OPENED_AT + timedelta(hours=1),
        ),
    )
    return account_id


def insert_line(conn: psycopg.Connection[Any], line: dict[str, Any]) -> None:
    conn.execute(
        "INSERT INTO readmodel.transactions (account_id, version, transaction_id, "
        "counterparty_account_id, direction, kind, amount_minor, balance_after_minor, "
        "currency, reference, channel, actor_subject, actor_role, occurred_at, "
        "correlation_id, notification_id) VALUES (%(account_id)s, %(version)s, "
        "%(transaction_id)s, %(counterparty_account_id)s, %(direction)s, %(kind)s, "
        "%(amount_minor)s, %(balance_after_minor)s, 'GBP', %(reference)s, %(channel)s, "
        "'teller-e2e', 'teller', %(occurred_at)s, %(correlation_id)s, 1)",
        line,
    )


def insert_event(conn: psycopg.Connection[Any], originator_id: str, version: int) -> int:
    cursor = conn.execute(
        "INSERT INTO ledger_events (originator_id, originator_version, topic, state) "
        "VALUES (%s, %s, 'e2e', '\\x00') RETURNING notification_id",
        (originator_id, version),
    )
    row = cursor.fetchone()
    assert row is not None
    return int(row[0])


def seed_statement(
    conn: psycopg.Connection[Any], account_id: str, other: str
) -> list[dict[str, Any]]:
    """Five movements, one hour apart: 3 credits and 2 debits, balance ending at 100.00."""
    moves = [
        ("credit", "deposit", 5000, None),
        ("credit", "deposit", 7000, None),
        ("debit", "withdrawal", 2000, None),
        ("credit", "transfer", 3000, other),
        ("debit", "transfer", 3000, other),
    ]
    lines, balance = [], 0
    for index, (direction, kind, amount, counterparty) in enumerate(moves):
        balance += amount if direction == "credit" else -amount
        line = {
            "account_id": account_id,
            "version": index + 2,
            "transaction_id": str(uuid.uuid4()),
            "counterparty_account_id": counterparty,
            "direction": direction,
            "kind": kind,
            "amount_minor": amount,
            "balance_after_minor": balance,
            "reference": f"ref-{index}",
            "channel": "cash" if kind != "transfer" else None,
            "occurred_at": STATEMENT_START + timedelta(hours=index),
            "correlation_id": f"corr-{index}",
        }
        insert_line(conn, line)
        lines.append(line)
    assert balance == 10_000
    return lines


def seed_kpis(conn: psycopg.Connection[Any]) -> None:
    now_hour = datetime.now(UTC).replace(minute=0, second=0, microsecond=0)
    hourly = [
        (now_hour, "GBP", "deposits", 2, 12_000),
        (now_hour, "GBP", "accounts_opened", 3, 0),
        (now_hour - timedelta(hours=2), "GBP", "withdrawals", 1, 2_000),
        (now_hour - timedelta(hours=2), "JPY", "deposits", 1, 1250),
        # Outside the 24-hour series, inside the totals.
        (now_hour - timedelta(hours=30), "GBP", "transfers", 1, 3_000),
    ]
    for row in hourly:
        conn.execute(
            "INSERT INTO readmodel.kpis_hourly (hour, currency, metric, count, sum_minor) "
            "VALUES (%s, %s, %s, %s, %s)",
            row,
        )
    branch_rows = [
        ("001", "GBP", "deposits", 2, 12_000),
        ("001", "GBP", "withdrawals", 1, 2_000),
        ("002", "JPY", "deposits", 1, 1250),
    ]
    for branch_row in branch_rows:
        conn.execute(
            "INSERT INTO readmodel.kpis_branch (branch, currency, metric, count, sum_minor) "
            "VALUES (%s, %s, %s, %s, %s)",
            branch_row,
        )


def seed_positions(conn: psycopg.Connection[Any], main: str) -> int:
    """Ten stored events (the tenth is the main account's version 7, which makes no
    statement line); balances and statements caught up, kpis four events behind."""
    for _ in range(9):
        insert_event(conn, str(uuid.uuid4()), 1)
    head = insert_event(conn, main, 7)
    conn.execute(
        "UPDATE readmodel.projection_positions SET position = %s, updated_at = now() "
        "WHERE projection IN ('balances', 'statements')",
        (head,),
    )
    conn.execute(
        "UPDATE readmodel.projection_positions SET position = %s, "
        "updated_at = now() - interval '10 seconds' WHERE projection = 'kpis'",
        (head - 4,),
    )
    return head


def seed(conn: psycopg.Connection[Any]) -> Seed:
    main = insert_account(conn, branch="001", balance_minor=10_000, overdraft_limit_minor=5_000)
    other = insert_account(conn, branch="002", balance_minor=3_000, version=3)
    result = Seed(main=main)
    result.by_branch = {
        "001": [
            main,
            insert_account(conn, branch="001", currency="EUR", status="frozen"),
            insert_account(conn, branch="001", currency="JPY", status="closed"),
        ],
        "002": [other, insert_account(conn, branch="002", currency="BHD", balance_minor=1250)],
        "003": [insert_account(conn, branch="003") for _ in range(5)],
    }
    # Five movements (versions 2 to 6), then one event with no statement line (7).
    result.lines = seed_statement(conn, main, other)
    conn.execute(
        "UPDATE readmodel.accounts SET version = 7, last_transaction_at = %s, updated_at = %s "
        "WHERE account_id = %s",
        (result.lines[-1]["occurred_at"], STATEMENT_START + timedelta(hours=6), main),
    )
    seed_kpis(conn)
    result.head = seed_positions(conn, main)
    return result


@pytest.fixture(scope="module")
def query_env(
    databases: Databases, tmp_path_factory: pytest.TempPathFactory, redis_client: redis.Redis
) -> Iterator[QueryEnv]:
    var_dir = tmp_path_factory.mktemp("var-query")
    settings = databases.settings_for(databases.fresh(), var_dir)
    with psycopg.connect(settings.resolved_database_url(), autocommit=True) as conn:
        ensure_read_models(conn)
        with conn.transaction():
            seeded = seed(conn)
    server = start_query_api(settings, var_dir / "logs")
    try:
        with httpx.Client(base_url=server.url, timeout=HTTP_TIMEOUT_S) as client:
            yield QueryEnv(settings, server, client, seeded)
    finally:
        server.stop()


def _route(env: QueryEnv, route: str) -> str:
    return {
        "account": f"/v1/accounts/{env.seed.main}",
        "accounts": "/v1/accounts?branch=001",
        "transactions": f"/v1/accounts/{env.seed.main}/transactions",
        "stats": "/v1/stats/overview",
        "projections": "/v1/projections",
    }[route]


# --- RBAC -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("route", "caller"),
    [(route, caller) for route in ALLOWED for caller in CALLERS],
)
def test_each_query_route_answers_exactly_the_roles_the_contract_allows(
    query_env: QueryEnv, route: str, caller: str
) -> None:
    response = query_env.get(_route(query_env, route), caller)
    if caller in ALLOWED[route]:
        assert response.status_code == 200, response.text
    else:
        assert_problem(response, 403, "forbidden")


@pytest.mark.parametrize("route", list(ALLOWED))
def test_each_query_route_refuses_a_request_without_a_token(
    query_env: QueryEnv, route: str
) -> None:
    response = query_env.client.get(_route(query_env, route))
    assert_problem(response, 401, "unauthorized")


def test_a_teller_sees_another_branch_account_list_or_statement_as_forbidden(
    query_env: QueryEnv,
) -> None:
    other = query_env.seed.by_branch["002"][0]
    for path in (f"/v1/accounts/{other}", f"/v1/accounts/{other}/transactions"):
        assert_problem(query_env.get(path, "teller_001"), 403, "forbidden")
        assert query_env.get(path, "teller_002").status_code == 200
    assert_problem(query_env.get("/v1/accounts", "teller_001", branch="002"), 403, "forbidden")


def test_a_teller_list_without_a_branch_filter_shows_only_their_branch(
    query_env: QueryEnv,
) -> None:
    response = query_env.get("/v1/accounts", "teller_002")
    assert response.status_code == 200, response.text
    items = response.json()["items"]
    assert {item["branch"] for item in items} == {"002"}
    assert sorted(item["account_id"] for item in items) == sorted(query_env.seed.by_branch["002"])


# --- One account ----------------------------------------------------------------------


def test_an_account_reads_with_decimal_amounts_utc_times_and_its_projected_version(
    query_env: QueryEnv,
) -> None:
    response = query_env.get(f"/v1/accounts/{query_env.seed.main}", "viewer")
    assert response.status_code == 200, response.text
    body = response.json()
    assert body == {
        "account_id": query_env.seed.main,
        "owner": f"owner-{query_env.seed.main[:8]}",
        "branch": "001",
        "currency": "GBP",
        "status": "open",
        "balance": "100.00",
        "available_balance": "150.00",
        "overdraft_limit": "50.00",
        "projected_version": 7,
        "opened_at": "2026-01-05T09:00:00.000000Z",
        "updated_at": "2026-01-06T14:00:00.000000Z",
        "last_transaction_at": "2026-01-06T12:00:00.000000Z",
    }


def test_amounts_carry_each_currency_exponent(query_env: QueryEnv) -> None:
    bhd = query_env.seed.by_branch["002"][1]
    assert query_env.get(f"/v1/accounts/{bhd}").json()["balance"] == "1.250"
    jpy = query_env.seed.by_branch["001"][2]
    assert query_env.get(f"/v1/accounts/{jpy}").json()["balance"] == "0"


def test_an_unknown_account_and_its_statement_are_not_found(query_env: QueryEnv) -> None:
    unknown = uuid.uuid4()
    assert_problem(query_env.get(f"/v1/accounts/{unknown}"), 404, "account_not_found")
    assert_problem(query_env.get(f"/v1/accounts/{unknown}/transactions"), 404, "account_not_found")


# --- Lists: pagination, filters, validation -------------------------------------------


def _all_pages(env: QueryEnv, path: str, **params: Any) -> list[list[dict[str, Any]]]:
    pages: list[list[dict[str, Any]]] = []
    cursor: str | None = None
    for _ in range(10):
        query = dict(params, **({"cursor": cursor} if cursor else {}))
        response = env.get(path, **query)
        assert response.status_code == 200, response.text
        body = response.json()
        pages.append(body["items"])
        cursor = body["next_cursor"]
        if cursor is None:
            return pages
    pytest.fail("pagination did not end")


def test_accounts_page_through_in_three_pages_without_duplicates(query_env: QueryEnv) -> None:
    pages = _all_pages(query_env, "/v1/accounts", branch="003", limit=2)
    assert [len(page) for page in pages] == [2, 2, 1]
    ids = [item["account_id"] for page in pages for item in page]
    assert len(set(ids)) == 5
    assert sorted(ids) == sorted(query_env.seed.by_branch["003"])


def test_statement_pages_through_newest_first_without_duplicates(query_env: QueryEnv) -> None:
    pages = _all_pages(query_env, f"/v1/accounts/{query_env.seed.main}/transactions", limit=2)
    assert [len(page) for page in pages] == [2, 2, 1]
    versions = [item["version"] for page in pages for item in page]
    assert versions == [6, 5, 4, 3, 2]


def test_a_statement_line_carries_the_contract_fields(query_env: QueryEnv) -> None:
    response = query_env.get(f"/v1/accounts/{query_env.seed.main}/transactions", limit=1)
    (line,) = response.json()["items"]
    seeded = query_env.seed.lines[-1]
    assert line == {
        "transaction_id": seeded["transaction_id"],
        "account_id": query_env.seed.main,
        "counterparty_account_id": query_env.seed.by_branch["002"][0],
        "direction": "debit",
        "kind": "transfer",
        "amount": "30.00",
        "balance_after": "100.00",
        "currency": "GBP",
        "reference": "ref-4",
        "channel": None,
        "actor": {"subject": "teller-e2e", "role": "teller"},
        "timestamp": "2026-01-06T12:00:00.000000Z",
        "correlation_id": "corr-4",
        "version": 6,
    }


@pytest.mark.parametrize(
    ("params", "expected_branches", "count"),
    [
        ({"status": "frozen"}, {"001"}, 1),
        ({"status": "closed"}, {"001"}, 1),
        ({"currency": "BHD"}, {"002"}, 1),
        ({"branch": "002"}, {"002"}, 2),
        ({"branch": "001", "currency": "GBP", "status": "open"}, {"001"}, 1),
        ({"branch": "004"}, set(), 0),
    ],
)
def test_accounts_filter_by_status_currency_and_branch(
    query_env: QueryEnv, params: dict[str, str], expected_branches: set[str], count: int
) -> None:
    response = query_env.get("/v1/accounts", **params)
    assert response.status_code == 200, response.text
    items = response.json()["items"]
    assert len(items) == count
    assert {item["branch"] for item in items} == expected_branches
    for name in ("status", "currency"):
        if name in params:
            assert {item[name] for item in items} == {params[name]}


@pytest.mark.parametrize(
    ("params", "versions"),
    [
        ({"direction": "debit"}, [6, 4]),
        ({"direction": "credit"}, [5, 3, 2]),
        # Lines are at 08:00 + version-2 hours; `from` inclusive, `to` exclusive.
        ({"from": "2026-01-06T09:00:00Z", "to": "2026-01-06T11:00:00Z"}, [4, 3]),
        ({"from": "2026-01-06T10:00:00+01:00"}, [6, 5, 4, 3]),
        ({"to": "2026-01-06T09:00:00Z", "direction": "credit"}, [2]),
    ],
)
def test_statement_filters_by_direction_and_time_range(
    query_env: QueryEnv, params: dict[str, str], versions: list[int]
) -> None:
    response = query_env.get(f"/v1/accounts/{query_env.seed.main}/transactions", **params)
    assert response.status_code == 200, response.text
    assert [item["version"] for item in response.json()["items"]] == versions


def _statement_cursor(env: QueryEnv) -> str:
    response = env.get(f"/v1/accounts/{env.seed.main}/transactions", limit=1)
    cursor: str = response.json()["next_cursor"]
    return cursor


@pytest.mark.parametrize(
    ("path", "params"),
    [
        ("/v1/accounts/not-a-uuid", {}),
        ("/v1/accounts", {"limit": "501"}),
        ("/v1/accounts", {"limit": "0"}),
        ("/v1/accounts", {"status": "dormant"}),
        ("/v1/accounts", {"currency": "XYZ"}),
        ("/v1/accounts", {"currency": "gbp"}),
        ("/v1/accounts", {"branch": "../001"}),
        ("/v1/accounts", {"cursor": "!!!"}),
        ("/v1/accounts", {"cursor": "bm90LWpzb24"}),
        ("/v1/accounts", {"cursor": "STATEMENT"}),
        ("MAIN/transactions", {"direction": "sideways"}),
        ("MAIN/transactions", {"from": "2026-01-06T09:00:00"}),
        ("MAIN/transactions", {"from": "yesterday"}),
        ("MAIN/transactions", {"from": "2026-01-07T00:00:00Z", "to": "2026-01-06T00:00:00Z"}),
        ("MAIN/transactions", {"limit": "501"}),
        ("MAIN/transactions", {"min_version": "0"}),
        ("MAIN", {"min_version": "seven"}),
    ],
)
def test_malformed_query_parameters_are_validation_errors(
    query_env: QueryEnv, path: str, params: dict[str, str]
) -> None:
    path = path.replace("MAIN", f"/v1/accounts/{query_env.seed.main}")
    if params.get("cursor") == "STATEMENT":
        params = {"cursor": _statement_cursor(query_env)}  # another list's cursor
    body = assert_problem(query_env.get(path, **params), 422, "validation_error")
    assert body["errors"], body


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
    response = query_env.get(_route(query_env, route), min_version=8)
    elapsed_s = time.monotonic() - started
    assert_problem(response, 503, "projection_lagging")
    assert response.headers["Retry-After"] == "1"
    assert 1.9 <= elapsed_s < 3.5


def test_min_version_for_an_account_not_yet_projected_is_lagging(query_env: QueryEnv) -> None:
    response = query_env.get(f"/v1/accounts/{uuid.uuid4()}", min_version=1)
    assert_problem(response, 503, "projection_lagging")


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


# --- Projections and stats ------------------------------------------------------------


def test_projections_show_the_store_head_positions_and_lag(query_env: QueryEnv) -> None:
    response = query_env.get("/v1/projections", "auditor")
    assert response.status_code == 200, response.text
    body = response.json()
    head = query_env.seed.head
    assert body["head"] == head
    items = {item["name"]: item for item in body["items"]}
    assert set(items) == set(PROJECTIONS)
    for name in ("balances", "statements"):
        assert items[name] == {"name": name, "position": head, "lag_events": 0, "lag_s": 0.0}
    assert (items["kpis"]["position"], items["kpis"]["lag_events"]) == (head - 4, 4)
    assert 10.0 <= items["kpis"]["lag_s"] < 600


def _metric(count: int, total: str) -> dict[str, Any]:
    return {"count": count, "sum": total}


def test_stats_overview_sums_totals_series_and_branches(query_env: QueryEnv) -> None:
    response = query_env.get("/v1/stats/overview", "viewer")
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["totals"] == {
        "GBP": {
            "accounts_opened": _metric(3, "0.00"),
            "deposits": _metric(2, "120.00"),
            "withdrawals": _metric(1, "20.00"),
            "transfers": _metric(1, "30.00"),
        },
        "JPY": {
            "accounts_opened": _metric(0, "0"),
            "deposits": _metric(1, "1250"),
            "withdrawals": _metric(0, "0"),
            "transfers": _metric(0, "0"),
        },
    }
    hourly = body["hourly"]
    assert len(hourly) == 24
    assert all(bucket["hour"].endswith(":00:00.000000Z") for bucket in hourly)
    assert hourly[-1]["currencies"]["GBP"]["deposits"] == _metric(2, "120.00")
    assert hourly[-3]["currencies"]["GBP"]["withdrawals"] == _metric(1, "20.00")
    assert hourly[-3]["currencies"]["JPY"]["deposits"] == _metric(1, "1250")
    # The transfer 30 hours ago is in the totals, not in the series.
    assert all(
        b["currencies"].get("GBP", {}).get("transfers", {}).get("count", 0) == 0 for b in hourly
    )
    assert body["branches"]["001"]["GBP"]["deposits"] == _metric(2, "120.00")
    assert body["branches"]["002"]["JPY"]["deposits"] == _metric(1, "1250")
    assert body["open_alerts_by_severity"] == {}
