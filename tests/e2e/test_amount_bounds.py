"""The ceilings over real HTTP: overdrafts a teller may not grant (403), overdrafts nobody
may grant (422), credits that would take a balance above the ceiling (409); each refusal
changes nothing. A command API of this module's own, with ceilings a few requests reach."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis

from application.ledger import Ledger
from domain.errors import AccountNotFound
from domain.ids import id_from_idempotency_key
from infrastructure.eventstore.ledger import open_ledger
from tests.conftest import ApiServer, Databases, start_command_api
from tests.e2e.conftest import HTTP_TIMEOUT_S, Bank, TokenMaker, assert_problem

pytestmark = pytest.mark.e2e

# Major units, as the settings take them: teller overdraft <= overdraft <= amount <= balance.
CEILINGS = {
    "amount_max": 1_000,
    "overdraft_max": 500,
    "teller_overdraft_max": 100,
    "balance_max": 2_000,
}


@pytest.fixture(scope="module")
def bounded_api(
    databases: Databases, tmp_path_factory: pytest.TempPathFactory, redis_client: redis.Redis
) -> Iterator[ApiServer]:
    var_dir: Path = tmp_path_factory.mktemp("var-bounds")
    settings = databases.settings_for(databases.fresh(), var_dir, **CEILINGS)
    server = start_command_api(settings, var_dir / "logs")
    yield server
    server.stop()


@pytest.fixture(scope="module")
def client(bounded_api: ApiServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=bounded_api.url, timeout=HTTP_TIMEOUT_S) as client:
        yield client


@pytest.fixture(scope="module")
def bank(client: httpx.Client, bounded_api: ApiServer) -> Bank:
    return Bank(client, bounded_api.settings)


@pytest.fixture(scope="module")
def store(bounded_api: ApiServer) -> Iterator[Ledger]:
    """The server's event store, to see that a refused opening stored nothing."""
    ledger = open_ledger(bounded_api.settings)
    yield ledger
    ledger.close()


def _open(
    bank: Bank, role: str, overdraft_limit: str, key: str | None = None
) -> tuple[httpx.Response, str]:
    """Open in branch 001 with an Idempotency-Key; returns the reply and the subject."""
    subject = f"e2e-{role}-{uuid.uuid4()}"
    headers = bank.headers(role, branch="001" if role == "teller" else None, subject=subject)
    headers["Idempotency-Key"] = key or str(uuid.uuid4())
    body = {"owner": "e2e owner", "branch": "001", "currency": "GBP"}
    body["overdraft_limit"] = overdraft_limit
    return bank.client.post("/v1/accounts", json=body, headers=headers), subject


def _assert_not_opened(store: Ledger, subject: str, key: str) -> None:
    with pytest.raises(AccountNotFound):
        store.get_account(id_from_idempotency_key(subject, key))


def test_a_teller_granting_an_overdraft_above_its_ceiling_is_forbidden_and_opens_nothing(
    bank: Bank, store: Ledger
) -> None:
    response, subject = _open(bank, "teller", "100.01", key="too-generous")
    body = assert_problem(response, 403, "forbidden")
    assert "100.00 GBP" in body["detail"]
    _assert_not_opened(store, subject, "too-generous")
    for allowed in ("100.00", "0.00"):
        response, _ = _open(bank, "teller", allowed)
        assert response.status_code == 201, response.text
        assert response.json()["overdraft_limit"] == allowed


def test_an_overdraft_above_the_ceiling_is_invalid_amount_for_anyone(
    bank: Bank, store: Ledger
) -> None:
    for role in ("admin", "teller"):
        response, subject = _open(bank, role, "500.01", key="beyond")
        assert_problem(response, 422, "invalid_amount")
        _assert_not_opened(store, subject, "beyond")
    for beyond_bigint in ("90000000000000000.00", "99999999999999999.00"):
        response, _ = _open(bank, "admin", beyond_bigint)
        assert_problem(response, 422, "invalid_amount")
    response, _ = _open(bank, "admin", "500.00")
    assert response.status_code == 201, response.text


def test_a_deposit_above_the_balance_ceiling_is_refused_and_changes_nothing(bank: Bank) -> None:
    account = bank.funded_account("1000.00")
    bank.deposit(account, "500.00")
    response = bank.client.post(
        f"/v1/accounts/{account.account_id}/deposits",
        json={"amount": "500.01", "currency": "GBP"},
        headers=bank.teller(),
    )
    body = assert_problem(response, 409, "balance_limit_exceeded")
    assert "2000.00 GBP" in body["detail"]
    bank.assert_unchanged(account)
    bank.deposit(account, "499.99")
    assert account.balance == "2000.00"


def test_a_transfer_above_the_targets_ceiling_is_refused_and_changes_neither_account(
    bank: Bank,
) -> None:
    source, target = bank.funded_account("1000.00"), bank.funded_account("1000.00")
    bank.deposit(target, "999.00")
    response = bank.client.post(
        "/v1/transfers",
        json={
            "from_account_id": source.account_id,
            "to_account_id": target.account_id,
            "amount": "1.01",
            "currency": "GBP",
        },
        headers=bank.teller(),
    )
    assert_problem(response, 409, "balance_limit_exceeded")
    bank.assert_unchanged(source)
    bank.assert_unchanged(target)


def test_a_batch_item_above_the_ceiling_is_that_items_error_alone(bank: Bank) -> None:
    full, other = bank.funded_account("1000.00"), bank.funded_account("10.00")
    bank.deposit(full, "1000.00")

    def deposit(account_id: str, amount: str) -> dict[str, Any]:
        return {"type": "deposit", "account_id": account_id, "amount": amount, "currency": "GBP"}

    items = [deposit(other.account_id, "1.00"), deposit(full.account_id, "0.01")]
    items.append(deposit(other.account_id, "2.00"))
    response = bank.client.post("/v1/batches", json={"items": items}, headers=bank.teller())
    assert response.status_code == 200, response.text
    results = response.json()["results"]
    assert [r["status"] for r in results] == ["ok", "error", "ok"]
    assert results[1]["code"] == "balance_limit_exceeded"
    assert results[2]["balance"] == "13.00"
    other.version, other.balance = results[2]["version"], results[2]["balance"]
    bank.assert_unchanged(other)
    response = bank.client.post(
        f"/v1/accounts/{full.account_id}/withdrawals",
        json={"amount": "0.01", "currency": "GBP"},
        headers=bank.teller(),
    )
    assert response.json()["balance"] == "1999.99", "the refused item left the balance at 2000"


def test_the_default_ceilings_reject_the_reported_overdrafts(
    http: httpx.Client, token: TokenMaker
) -> None:
    """On the session's server (default settings): the overdrafts of the incident report."""
    headers = {"Authorization": f"Bearer {token('teller')}"}
    body = {"owner": "e2e owner", "branch": "001", "currency": "GBP"}
    for limit, status, code in (
        ("90000000000000000.00", 422, "invalid_amount"),
        ("99999999999999999.00", 422, "invalid_amount"),
        ("100000000.01", 422, "invalid_amount"),
        ("10000.01", 403, "forbidden"),
    ):
        response = http.post(
            "/v1/accounts", json={**body, "overdraft_limit": limit}, headers=headers
        )
        assert_problem(response, status, code)
    admin = {"Authorization": f"Bearer {token('admin')}"}
    response = http.post(
        "/v1/accounts", json={**body, "overdraft_limit": "10000.01"}, headers=admin
    )
    assert response.status_code == 201, response.text
