"""Every refusal of the command API by the state of the ledger, caused over real HTTP, as
application/problem+json: 404 for what does not exist, 409 for what the accounts refuse.

After each refusal the account is probed (a deposit of the smallest unit): its version
and balance must be exactly what they would be had the refused request never been sent.
"""

from __future__ import annotations

import uuid

import httpx
import pytest

from application.ledger import Ledger
from tests.e2e.commands import change_status, deposit, transfer, withdraw
from tests.e2e.conftest import Account, Bank, assert_problem, stored_state

pytestmark = pytest.mark.e2e

BODY_MAX_BYTES = 1_048_576


# --- 404 ------------------------------------------------------------------------------


def test_a_tellers_deposit_to_an_unknown_account_is_forbidden_as_another_branchs_would_be(
    bank: Bank, http: httpx.Client
) -> None:
    response = http.post(
        f"/v1/accounts/{uuid.uuid4()}/deposits",
        json={"amount": "1.00", "currency": "GBP"},
        headers=bank.teller(),
    )
    assert_problem(response, 403, "forbidden")


def test_freezing_an_unknown_account_is_account_not_found(bank: Bank, http: httpx.Client) -> None:
    response = http.post(
        f"/v1/accounts/{uuid.uuid4()}/freeze", json={"reason": "x"}, headers=bank.admin()
    )
    assert_problem(response, 404, "account_not_found")


def test_transfer_to_an_unknown_account_is_account_not_found_and_changes_nothing(
    bank: Bank, http: httpx.Client
) -> None:
    source = bank.funded_account("10.00")
    ghost = Account(str(uuid.uuid4()), "001", "GBP", 0, "0.00")
    assert_problem(transfer(http, bank, source, ghost, "1.00"), 404, "account_not_found")
    bank.assert_unchanged(source)


@pytest.mark.parametrize("action", ["freeze", "unfreeze", "close"])
def test_status_change_of_an_unknown_account_is_account_not_found(
    bank: Bank, http: httpx.Client, action: str
) -> None:
    ghost = Account(str(uuid.uuid4()), "001", "GBP", 0, "0.00")
    assert_problem(change_status(http, bank, ghost, action), 404, "account_not_found")


def test_an_unknown_route_is_a_not_found_problem(http: httpx.Client) -> None:
    assert_problem(http.get("/v1/no-such-route"), 404, "not_found")


def test_an_unknown_method_is_a_method_not_allowed_problem(bank: Bank, http: httpx.Client) -> None:
    response = http.get(f"/v1/accounts/{uuid.uuid4()}/deposits", headers=bank.teller())
    assert_problem(response, 405, "method_not_allowed")


# --- 409 ------------------------------------------------------------------------------


def test_withdrawal_beyond_balance_is_insufficient_funds_and_changes_nothing(
    bank: Bank, http: httpx.Client
) -> None:
    account = bank.funded_account("10.00")
    response = withdraw(http, bank, account, amount="10.01", currency="GBP")
    assert_problem(response, 409, "insufficient_funds")
    bank.assert_unchanged(account)


def test_withdrawal_beyond_the_overdraft_is_insufficient_funds_and_changes_nothing(
    bank: Bank, http: httpx.Client
) -> None:
    account = bank.open_account(overdraft_limit="50.00")
    bank.withdraw(account, "50.00")
    assert account.balance == "-50.00"
    response = withdraw(http, bank, account, amount="0.01", currency="GBP")
    assert_problem(response, 409, "insufficient_funds")
    bank.assert_unchanged(account)


def test_transfer_beyond_balance_is_insufficient_funds_and_changes_neither_account(
    bank: Bank, http: httpx.Client
) -> None:
    source, target = bank.funded_account("5.00"), bank.funded_account("1.00")
    assert_problem(transfer(http, bank, source, target, "5.01"), 409, "insufficient_funds")
    bank.assert_unchanged(source)
    bank.assert_unchanged(target)


def test_deposit_to_a_frozen_account_is_account_frozen_and_changes_nothing(
    bank: Bank, http: httpx.Client
) -> None:
    account = bank.funded_account("10.00")
    bank.change_status(account, "freeze")
    assert_problem(
        deposit(http, bank, account, amount="1.00", currency="GBP"), 409, "account_frozen"
    )
    assert_problem(
        withdraw(http, bank, account, amount="1.00", currency="GBP"), 409, "account_frozen"
    )
    bank.change_status(account, "unfreeze")
    bank.assert_unchanged(account)


def test_transfer_into_a_frozen_account_is_account_frozen_and_changes_neither(
    bank: Bank, http: httpx.Client
) -> None:
    source, target = bank.funded_account("10.00"), bank.open_account()
    bank.change_status(target, "freeze")
    assert_problem(transfer(http, bank, source, target, "1.00"), 409, "account_frozen")
    bank.assert_unchanged(source)
    bank.change_status(target, "unfreeze")
    bank.assert_unchanged(target)


def test_freezing_a_frozen_account_is_account_frozen_and_changes_nothing(
    bank: Bank, http: httpx.Client
) -> None:
    account = bank.open_account()
    bank.change_status(account, "freeze")
    assert_problem(change_status(http, bank, account, "freeze"), 409, "account_frozen")
    unfrozen = bank.change_status(account, "unfreeze")
    assert unfrozen["status"] == "open"
    bank.assert_unchanged(account)


@pytest.mark.parametrize("action", ["deposits", "withdrawals", "freeze", "unfreeze", "close"])
def test_any_command_on_a_closed_account_is_account_closed_and_changes_nothing(
    bank: Bank, http: httpx.Client, event_store: Ledger, action: str
) -> None:
    account = bank.open_account()
    closed = bank.change_status(account, "close")
    assert closed["status"] == "closed"
    if action in ("deposits", "withdrawals"):
        response = http.post(
            f"/v1/accounts/{account.account_id}/{action}",
            json={"amount": "1.00", "currency": "GBP"},
            headers=bank.teller(),
        )
    else:
        response = change_status(http, bank, account, action)
    assert_problem(response, 409, "account_closed")
    # A closed account takes no probe deposit: read its last version from the store.
    assert stored_state(event_store, account.account_id) == (account.version, 0, "closed")


def test_unfreezing_an_open_account_is_account_not_frozen_and_changes_nothing(
    bank: Bank, http: httpx.Client
) -> None:
    account = bank.open_account()
    assert_problem(change_status(http, bank, account, "unfreeze"), 409, "account_not_frozen")
    bank.assert_unchanged(account)


def test_closing_an_account_with_a_balance_is_account_not_empty_and_changes_nothing(
    bank: Bank, http: httpx.Client
) -> None:
    account = bank.funded_account("0.01")
    assert_problem(change_status(http, bank, account, "close"), 409, "account_not_empty")
    bank.assert_unchanged(account)


def test_closing_an_overdrawn_account_is_account_not_empty(bank: Bank, http: httpx.Client) -> None:
    account = bank.open_account(overdraft_limit="10.00")
    bank.withdraw(account, "1.00")
    assert_problem(change_status(http, bank, account, "close"), 409, "account_not_empty")
    bank.assert_unchanged(account)


def test_reusing_a_transaction_id_with_another_amount_is_transaction_conflict(
    bank: Bank, http: httpx.Client
) -> None:
    account = bank.open_account()
    transaction_id = str(uuid.uuid4())
    bank.deposit(account, "5.00", transaction_id=transaction_id)
    response = deposit(
        http, bank, account, amount="6.00", currency="GBP", transaction_id=transaction_id
    )
    assert_problem(response, 409, "transaction_conflict")
    bank.assert_unchanged(account)


def test_reusing_a_transaction_id_for_a_withdrawal_is_transaction_conflict(
    bank: Bank, http: httpx.Client
) -> None:
    account = bank.open_account()
    transaction_id = str(uuid.uuid4())
    bank.deposit(account, "5.00", transaction_id=transaction_id)
    response = withdraw(
        http, bank, account, amount="5.00", currency="GBP", transaction_id=transaction_id
    )
    assert_problem(response, 409, "transaction_conflict")
    bank.assert_unchanged(account)


def test_reusing_an_idempotency_key_with_another_body_is_transaction_conflict(
    bank: Bank, http: httpx.Client
) -> None:
    account = bank.open_account()
    headers = {**bank.teller(), "Idempotency-Key": f"key-{uuid.uuid4()}"}
    url = f"/v1/accounts/{account.account_id}/deposits"
    first = http.post(url, json={"amount": "5.00", "currency": "GBP"}, headers=headers)
    assert first.status_code == 201, first.text
    account.version, account.balance = first.json()["version"], first.json()["balance"]
    second = http.post(
        url, json={"amount": "5.00", "currency": "GBP", "reference": "other"}, headers=headers
    )
    assert_problem(second, 409, "transaction_conflict")
    bank.assert_unchanged(account)


def test_opening_again_with_an_idempotency_key_and_another_body_is_transaction_conflict(
    bank: Bank, http: httpx.Client
) -> None:
    headers = {**bank.admin(), "Idempotency-Key": f"open-{uuid.uuid4()}"}
    body = {"owner": f"conflict-{uuid.uuid4()}", "branch": "001", "currency": "GBP"}
    assert http.post("/v1/accounts", json=body, headers=headers).status_code == 201
    response = http.post("/v1/accounts", json={**body, "currency": "EUR"}, headers=headers)
    assert_problem(response, 409, "transaction_conflict")


# --- Headers a request may carry once -------------------------------------------------


def test_two_authorization_headers_are_refused_even_when_both_are_valid(
    bank: Bank, http: httpx.Client, event_store: Ledger
) -> None:
    account = bank.open_account()
    before = stored_state(event_store, account.account_id)
    token = bank.teller()["Authorization"]
    response = http.post(
        f"/v1/accounts/{account.account_id}/deposits",
        json={"amount": "1.00", "currency": "GBP"},
        headers=[("Authorization", token), ("Authorization", token)],
    )
    assert_problem(response, 401, "unauthorized")
    assert stored_state(event_store, account.account_id) == before


def test_two_idempotency_keys_are_refused_and_change_nothing(
    bank: Bank, http: httpx.Client, event_store: Ledger
) -> None:
    account = bank.open_account()
    before = stored_state(event_store, account.account_id)
    response = http.post(
        f"/v1/accounts/{account.account_id}/deposits",
        json={"amount": "1.00", "currency": "GBP"},
        headers=[
            *bank.teller().items(),
            ("Idempotency-Key", f"k-{uuid.uuid4()}"),
            ("Idempotency-Key", f"k-{uuid.uuid4()}"),
        ],
    )
    assert_problem(response, 422, "validation_error")
    assert response.json()["errors"] == [
        {
            "field": "header.Idempotency-Key",
            "message": "the Idempotency-Key header is given more than once",
        }
    ]
    assert stored_state(event_store, account.account_id) == before
