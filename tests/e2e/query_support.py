"""Shared by the query API's e2e tests (test_query_*.py): the callers and the routes they
may read, and the read-model rows written here with SQL before the server starts.

The projections are not running: each test plays the projection's part (rows, NOTIFY,
Redis entries) so that what the API answers can be checked exactly. The server and its
seeded database are the session fixture `query_env` (tests/e2e/conftest.py).
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import psycopg
import pytest

from infrastructure.readmodels.schema import ensure_read_models
from infrastructure.settings import Settings
from tests.conftest import ApiServer, Databases, start_query_api
from tests.e2e.conftest import HTTP_TIMEOUT_S, bearer, make_token

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
    # The hour the recent KPI rows were written for: the clock may pass an hour boundary
    # between seeding and a test, so tests find the buckets by hour, not by position.
    kpi_hour: datetime | None = None


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


def seed_kpis(conn: psycopg.Connection[Any]) -> datetime:
    """KPI rows for this hour, two hours ago and 30 hours ago; returns this hour."""
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
    return now_hour


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
    result.kpi_hour = seed_kpis(conn)
    result.head = seed_positions(conn, main)
    return result


@contextmanager
def serve_query_env(
    databases: Databases, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[QueryEnv]:
    """A query API on a fresh database seeded by `seed`, stopped on leaving."""
    var_dir = tmp_path_factory.mktemp("var-query")
    # Scrapes carry a token here, as in production (the command API's session has none).
    settings = databases.settings_for(
        databases.fresh(), var_dir, metrics_token="query-scrape-" + "s" * 32
    )
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


def route_path(env: QueryEnv, route: str) -> str:
    return {
        "account": f"/v1/accounts/{env.seed.main}",
        "accounts": "/v1/accounts?branch=001",
        "transactions": f"/v1/accounts/{env.seed.main}/transactions",
        "stats": "/v1/stats/overview",
        "projections": "/v1/projections",
    }[route]
