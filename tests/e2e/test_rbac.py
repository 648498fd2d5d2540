"""Who may call which command route, over real HTTP: the API contract's matrix, row by row.

The matrix is written out here on purpose, not derived from `interfaces.api.http.auth.PERMISSIONS`:
if the table in the code drifts from the contract, these tests say so.
"""

from __future__ import annotations

import uuid
from typing import Any

import httpx
import pytest

from tests.e2e.conftest import Account, Bank, assert_problem

pytestmark = pytest.mark.e2e

# Callers: a role and, for tellers, a branch. Every account below lives in branch 001.
CALLERS: dict[str, tuple[str, str | None]] = {
    "teller_001": ("teller", "001"),
    "teller_002": ("teller", "002"),
    "admin": ("admin", None),
    "auditor": ("auditor", None),
    "compliance": ("compliance", None),
    "viewer": ("viewer", None),
}

# route -> callers allowed, on a branch 001 account (or opening one in branch 001).
ALLOWED: dict[str, frozenset[str]] = {
    "open_account": frozenset({"teller_001", "admin"}),
    "deposit": frozenset({"teller_001"}),
    "withdraw": frozenset({"teller_001"}),
    "transfer": frozenset({"teller_001"}),
    "batch": frozenset({"teller_001"}),
    "freeze": frozenset({"admin", "compliance"}),
    "unfreeze": frozenset({"admin"}),
    "close": frozenset({"admin"}),
}

SUCCESS_STATUS = {
    "open_account": 201,
    "deposit": 201,
    "withdraw": 201,
    "transfer": 201,
    "batch": 200,
    "freeze": 200,
    "unfreeze": 200,
    "close": 200,
}

CASES = [
    pytest.param(
        route,
        caller,
        caller in allowed,
        id=f"{route}-{caller}-{'allowed' if caller in allowed else 'denied'}",
    )
    for route, allowed in ALLOWED.items()
    for caller in CALLERS
]


def _request(bank: Bank, route: str) -> tuple[str, dict[str, Any], Account | None]:
    """The route's path and a body that would succeed for an allowed caller."""
    if route == "open_account":
        return (
            "/v1/accounts",
            {"owner": f"rbac-{uuid.uuid4()}", "branch": "001", "currency": "GBP"},
            None,
        )
    if route == "deposit":
        account = bank.open_account()
        return f"/v1/accounts/{account.account_id}/deposits", _money("5.00"), account
    if route == "withdraw":
        account = bank.funded_account("20.00")
        return f"/v1/accounts/{account.account_id}/withdrawals", _money("5.00"), account
    if route == "transfer":
        source, target = bank.funded_account("20.00"), bank.open_account()
        body = {
            "from_account_id": source.account_id,
            "to_account_id": target.account_id,
            **_money("5.00"),
        }
        return "/v1/transfers", body, source
    if route == "batch":
        account = bank.open_account()
        item = {"type": "deposit", "account_id": account.account_id, **_money("5.00")}
        return "/v1/batches", {"items": [item]}, account
    account = bank.open_account()
    if route == "unfreeze":
        bank.change_status(account, "freeze")
    # close: a new account holds nothing, so only the role decides.
    return f"/v1/accounts/{account.account_id}/{route}", {"reason": "rbac check"}, account


def _money(amount: str) -> dict[str, str]:
    return {"amount": amount, "currency": "GBP"}


@pytest.mark.parametrize(("route", "caller", "allowed"), CASES)
def test_each_role_may_call_exactly_the_routes_the_contract_gives_it(
    bank: Bank, http: httpx.Client, route: str, caller: str, allowed: bool
) -> None:
    path, body, account = _request(bank, route)
    role, branch = CALLERS[caller]
    response = http.post(path, json=body, headers=bank.headers(role, branch=branch))
    if allowed:
        assert response.status_code == SUCCESS_STATUS[route], response.text
        if route == "batch":
            results = response.json()["results"]
            assert [r["status"] for r in results] == ["ok"], results
        return
    if route == "batch" and caller == "teller_002":
        # A teller may submit batches; the item for another branch is what is refused.
        assert response.status_code == 200, response.text
        [result] = response.json()["results"]
        assert (result["status"], result["code"]) == ("error", "forbidden"), result
    else:
        assert_problem(response, 403, "forbidden")
    if account is not None and account.status == "open":
        bank.assert_unchanged(account)


def test_teller_cannot_open_an_account_in_another_branch(bank: Bank, http: httpx.Client) -> None:
    body = {"owner": f"rbac-{uuid.uuid4()}", "branch": "002", "currency": "GBP"}
    response = http.post("/v1/accounts", json=body, headers=bank.teller("001"))
    assert_problem(response, 403, "forbidden")


def test_teller_may_open_an_account_in_their_own_branch(bank: Bank, http: httpx.Client) -> None:
    body = {"owner": f"rbac-{uuid.uuid4()}", "branch": "002", "currency": "GBP"}
    response = http.post("/v1/accounts", json=body, headers=bank.teller("002"))
    assert response.status_code == 201, response.text
    assert response.json()["branch"] == "002"


def test_teller_of_another_branch_cannot_deposit(bank: Bank, http: httpx.Client) -> None:
    account = bank.open_account(branch="001")
    response = http.post(
        f"/v1/accounts/{account.account_id}/deposits",
        json=_money("1.00"),
        headers=bank.teller("002"),
    )
    assert_problem(response, 403, "forbidden")
    bank.assert_unchanged(account)


def test_teller_of_another_branch_cannot_withdraw(bank: Bank, http: httpx.Client) -> None:
    account = bank.funded_account("10.00", branch="001")
    response = http.post(
        f"/v1/accounts/{account.account_id}/withdrawals",
        json=_money("1.00"),
        headers=bank.teller("002"),
    )
    assert_problem(response, 403, "forbidden")
    bank.assert_unchanged(account)


def test_transfer_is_judged_by_the_branch_of_the_source_account(
    bank: Bank, http: httpx.Client
) -> None:
    source = bank.funded_account("10.00", branch="002")
    target = bank.open_account(branch="001")
    body = {"from_account_id": source.account_id, "to_account_id": target.account_id}
    body |= _money("4.00")

    refused = http.post("/v1/transfers", json=body, headers=bank.teller("001"))
    assert_problem(refused, 403, "forbidden")

    accepted = http.post("/v1/transfers", json=body, headers=bank.teller("002"))
    assert accepted.status_code == 201, accepted.text
    assert accepted.json()["from"]["balance"] == "6.00"
    # The receiving account is another branch's: its state is not the teller's to read.
    assert accepted.json()["to"] == {
        "account_id": target.account_id,
        "version": None,
        "balance": None,
    }


def test_batch_item_for_another_branch_is_forbidden_while_the_others_succeed(
    bank: Bank, http: httpx.Client
) -> None:
    own = bank.funded_account("10.00", branch="002")
    other = bank.funded_account("10.00", branch="001")
    items = [
        {"type": "deposit", "account_id": own.account_id, **_money("1.00")},
        {"type": "deposit", "account_id": other.account_id, **_money("1.00")},
        {"type": "withdrawal", "account_id": other.account_id, **_money("1.00")},
        {
            "type": "transfer",
            "from_account_id": other.account_id,
            "to_account_id": own.account_id,
            **_money("1.00"),
        },
        {
            "type": "transfer",
            "from_account_id": own.account_id,
            "to_account_id": other.account_id,
            **_money("2.00"),
        },
    ]
    response = http.post("/v1/batches", json={"items": items}, headers=bank.teller("002"))
    assert response.status_code == 200, response.text
    results = response.json()["results"]
    assert [r["index"] for r in results] == [0, 1, 2, 3, 4]
    assert [r["status"] for r in results] == ["ok", "error", "error", "error", "ok"], results
    assert [r.get("code") for r in results[1:4]] == ["forbidden"] * 3
    assert results[4]["from"]["balance"] == "9.00"
    # The receiving account is another branch's: the teller sees no balance of it.
    assert (results[4]["to"]["version"], results[4]["to"]["balance"]) == (None, None)
    # Only the transfer into it touched the other branch's account.
    other.version, other.balance = other.version + 1, "12.00"
    bank.assert_unchanged(other)


@pytest.mark.parametrize("role", ["admin", "auditor", "compliance", "viewer"])
def test_only_tellers_may_submit_batches(bank: Bank, http: httpx.Client, role: str) -> None:
    account = bank.open_account()
    items = [{"type": "deposit", "account_id": account.account_id, **_money("1.00")}]
    response = http.post("/v1/batches", json={"items": items}, headers=bank.headers(role))
    assert_problem(response, 403, "forbidden")
    bank.assert_unchanged(account)


@pytest.mark.parametrize("action", ["freeze", "unfreeze", "close"])
def test_teller_of_the_account_branch_cannot_change_its_status(
    bank: Bank, http: httpx.Client, action: str
) -> None:
    account = bank.open_account(branch="001")
    response = http.post(
        f"/v1/accounts/{account.account_id}/{action}",
        json={"reason": "teller tries"},
        headers=bank.teller("001"),
    )
    assert_problem(response, 403, "forbidden")
    bank.assert_unchanged(account)


def test_forbidden_is_decided_before_the_account_is_looked_up(
    bank: Bank, http: httpx.Client
) -> None:
    """A role that may never deposit learns nothing about which accounts exist."""
    response = http.post(
        f"/v1/accounts/{uuid.uuid4()}/deposits", json=_money("1.00"), headers=bank.headers("viewer")
    )
    assert_problem(response, 403, "forbidden")
