"""Helpers for real-HTTP tests against the session's `vigil api command` process.

Every test opens accounts of its own (unique owners, fresh ids): the server and its
database are shared by all e2e tests of the run.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from decimal import Decimal
from typing import TYPE_CHECKING, Any

import httpx
import pytest
import redis

from application.ledger import Ledger
from infrastructure.eventstore.ledger import open_ledger
from infrastructure.settings import Settings
from interfaces.api.http.tokens import issue_token
from tests.conftest import ApiServer, Databases

if TYPE_CHECKING:
    from tests.e2e.query_support import QueryEnv

PROBLEM_MEDIA_TYPE = "application/problem+json"
HTTP_TIMEOUT_S = 15.0
# The smallest amount each currency can carry, for the "nothing changed" probe.
PROBE_AMOUNTS = {"GBP": "0.01", "EUR": "0.01", "USD": "0.01", "JPY": "1", "BHD": "0.001"}

TokenMaker = Callable[..., str]


def make_token(
    settings: Settings,
    role: str,
    branch: str | None = None,
    subject: str | None = None,
    **kwargs: Any,
) -> str:
    """A valid token; tellers default to branch 001."""
    if role == "teller" and branch is None:
        branch = "001"
    return issue_token(settings, role=role, branch=branch, subject=subject, **kwargs)


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def assert_problem(response: httpx.Response, status: int, code: str) -> dict[str, Any]:
    """The reply is an RFC 9457 problem with the contract's fields and this code."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith(PROBLEM_MEDIA_TYPE), response.headers
    body: dict[str, Any] = response.json()
    assert body["code"] == code, body
    assert body["status"] == status
    assert isinstance(body["type"], str)
    assert body["type"]
    assert isinstance(body["title"], str)
    assert body["title"]
    assert isinstance(body["detail"], str)
    if code == "validation_error":
        assert isinstance(body.get("errors"), list), body
    return body


def amount_plus(balance: str, amount: str) -> str:
    """Decimal string arithmetic keeping the currency's places (test-side bookkeeping)."""
    places = max(len(text.partition(".")[2]) for text in (balance, amount))
    total = Decimal(balance) + Decimal(amount)
    return f"{total:.{places}f}"


@dataclass
class Account:
    """What the test knows of an account: the last reply's version and balance."""

    account_id: str
    branch: str
    currency: str
    version: int
    balance: str
    status: str = "open"


class Bank:
    """Drives the command API as a teller or admin would, keeping track of the state."""

    def __init__(self, client: httpx.Client, settings: Settings) -> None:
        self.client = client
        self.settings = settings

    def headers(
        self, role: str, branch: str | None = None, subject: str | None = None
    ) -> dict[str, str]:
        return bearer(make_token(self.settings, role, branch=branch, subject=subject))

    def teller(self, branch: str = "001") -> dict[str, str]:
        return self.headers("teller", branch=branch)

    def admin(self) -> dict[str, str]:
        return self.headers("admin")

    def open_account(
        self, branch: str = "001", currency: str = "GBP", overdraft_limit: str | None = None
    ) -> Account:
        body: dict[str, Any] = {
            "owner": f"e2e-owner-{uuid.uuid4()}",
            "branch": branch,
            "currency": currency,
        }
        if overdraft_limit is not None:
            body["overdraft_limit"] = overdraft_limit
        response = self.client.post("/v1/accounts", json=body, headers=self.admin())
        assert response.status_code == 201, response.text
        reply = response.json()
        return Account(
            reply["account_id"],
            branch,
            currency,
            reply["version"],
            reply["balance"],
            reply["status"],
        )

    def funded_account(self, amount: str = "100.00", **kwargs: Any) -> Account:
        account = self.open_account(**kwargs)
        self.deposit(account, amount)
        return account

    def _move(self, kind: str, account: Account, amount: str, **fields: Any) -> dict[str, Any]:
        body = {"amount": amount, "currency": account.currency, **fields}
        response = self.client.post(
            f"/v1/accounts/{account.account_id}/{kind}",
            json=body,
            headers=self.teller(account.branch),
        )
        assert response.status_code == 201, response.text
        reply: dict[str, Any] = response.json()
        account.version, account.balance = reply["version"], reply["balance"]
        return reply

    def deposit(self, account: Account, amount: str, **fields: Any) -> dict[str, Any]:
        return self._move("deposits", account, amount, **fields)

    def withdraw(self, account: Account, amount: str, **fields: Any) -> dict[str, Any]:
        return self._move("withdrawals", account, amount, **fields)

    def change_status(self, account: Account, action: str, role: str = "admin") -> dict[str, Any]:
        response = self.client.post(
            f"/v1/accounts/{account.account_id}/{action}",
            json={"reason": f"e2e {action}"},
            headers=self.headers(role),
        )
        assert response.status_code == 200, response.text
        reply: dict[str, Any] = response.json()
        account.version, account.status = reply["version"], reply["status"]
        return reply

    def assert_unchanged(self, account: Account) -> None:
        """Nothing happened since the test last saw the account: the next deposit proves it.

        Needs an open account (frozen and closed ones take no deposit); callers thaw
        a frozen one first through `change_status`, which keeps the version in step.
        """
        assert account.status == "open", "probe deposits need an open account"
        probe = PROBE_AMOUNTS[account.currency]
        expected_version = account.version + 1
        expected_balance = amount_plus(account.balance, probe)
        reply = self.deposit(account, probe)
        assert (reply["version"], reply["balance"]) == (expected_version, expected_balance)


@pytest.fixture(scope="session")
def api_settings(command_api: ApiServer) -> Settings:
    return command_api.settings


@pytest.fixture(scope="session")
def http(command_api: ApiServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=command_api.url, timeout=HTTP_TIMEOUT_S) as client:
        yield client


@pytest.fixture(scope="session")
def token(api_settings: Settings) -> TokenMaker:
    """`token("teller", branch="002")`: a valid token for the session's server."""

    def make(
        role: str, branch: str | None = None, subject: str | None = None, **kwargs: Any
    ) -> str:
        return make_token(api_settings, role, branch=branch, subject=subject, **kwargs)

    return make


@pytest.fixture(scope="session")
def event_store(api_settings: Settings) -> Iterator[Ledger]:
    """The ledger application on the server's database, for reads the API cannot make
    yet (a closed account takes no probe deposit). Never used to write."""
    ledger = open_ledger(api_settings)
    yield ledger
    ledger.close()


def stored_state(ledger: Ledger, account_id: str) -> tuple[int, int, str]:
    """(version, balance in minor units, status) as the event store has it."""
    account = ledger.get_account(uuid.UUID(account_id))
    return account.version, account.balance_minor, account.status.value


@pytest.fixture(scope="session")
def bank(http: httpx.Client, api_settings: Settings) -> Bank:
    return Bank(http, api_settings)


@pytest.fixture(scope="session")
def query_env(
    databases: Databases, tmp_path_factory: pytest.TempPathFactory, redis_client: redis.Redis
) -> Iterator[QueryEnv]:
    """The query API on a database seeded by `query_support.seed`, started once for all
    the test_query_*.py modules (the projections are not running)."""
    from tests.e2e.query_support import serve_query_env  # imported here: it imports us

    with serve_query_env(databases, tmp_path_factory) as env:
        yield env
