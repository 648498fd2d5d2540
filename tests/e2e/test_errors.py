"""Every error code of the command API, caused over real HTTP, as application/problem+json.

After each refusal the account is probed (a deposit of the smallest unit): its version
and balance must be exactly what they would be had the refused request never been sent.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from application.ledger import Ledger
from tests.e2e.conftest import Account, Bank, assert_problem, stored_state

pytestmark = pytest.mark.e2e

BODY_MAX_BYTES = 1_048_576


def _deposit(http: httpx.Client, bank: Bank, account: Account, **body: Any) -> httpx.Response:
    return http.post(
        f"/v1/accounts/{account.account_id}/deposits",
        json=body,
        headers=bank.teller(account.branch),
    )


def _withdraw(http: httpx.Client, bank: Bank, account: Account, **body: Any) -> httpx.Response:
    return http.post(
        f"/v1/accounts/{account.account_id}/withdrawals",
        json=body,
        headers=bank.teller(account.branch),
    )


def _transfer(
    http: httpx.Client, bank: Bank, source: Account, target: Account, amount: str, **extra: Any
) -> httpx.Response:
    body = {
        "from_account_id": source.account_id,
        "to_account_id": target.account_id,
        "amount": amount,
        "currency": source.currency,
        **extra,
    }
    return http.post("/v1/transfers", json=body, headers=bank.teller(source.branch))


def _status(http: httpx.Client, bank: Bank, account: Account, action: str) -> httpx.Response:
    return http.post(
        f"/v1/accounts/{account.account_id}/{action}",
        json={"reason": f"e2e {action}"},
        headers=bank.admin(),
    )


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
    assert_problem(_transfer(http, bank, source, ghost, "1.00"), 404, "account_not_found")
    bank.assert_unchanged(source)


@pytest.mark.parametrize("action", ["freeze", "unfreeze", "close"])
def test_status_change_of_an_unknown_account_is_account_not_found(
    bank: Bank, http: httpx.Client, action: str
) -> None:
    ghost = Account(str(uuid.uuid4()), "001", "GBP", 0, "0.00")
    assert_problem(_status(http, bank, ghost, action), 404, "account_not_found")


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
    response = _withdraw(http, bank, account, amount="10.01", currency="GBP")
    assert_problem(response, 409, "insufficient_funds")
    bank.assert_unchanged(account)


def test_withdrawal_beyond_the_overdraft_is_insufficient_funds_and_changes_nothing(
    bank: Bank, http: httpx.Client
) -> None:
    account = bank.open_account(overdraft_limit="50.00")
    bank.withdraw(account, "50.00")
    assert account.balance == "-50.00"
    response = _withdraw(http, bank, account, amount="0.01", currency="GBP")
    assert_problem(response, 409, "insufficient_funds")
    bank.assert_unchanged(account)


def test_transfer_beyond_balance_is_insufficient_funds_and_changes_neither_account(
    bank: Bank, http: httpx.Client
) -> None:
    source, target = bank.funded_account("5.00"), bank.funded_account("1.00")
    assert_problem(_transfer(http, bank, source, target, "5.01"), 409, "insufficient_funds")
    bank.assert_unchanged(source)
    bank.assert_unchanged(target)


def test_deposit_to_a_frozen_account_is_account_frozen_and_changes_nothing(
    bank: Bank, http: httpx.Client
) -> None:
    account = bank.funded_account("10.00")
    bank.change_status(account, "freeze")
    assert_problem(
        _deposit(http, bank, account, amount="1.00", currency="GBP"), 409, "account_frozen"
    )
    assert_problem(
        _withdraw(http, bank, account, amount="1.00", currency="GBP"), 409, "account_frozen"
    )
    bank.change_status(account, "unfreeze")
    bank.assert_unchanged(account)


def test_transfer_into_a_frozen_account_is_account_frozen_and_changes_neither(
    bank: Bank, http: httpx.Client
) -> None:
    source, target = bank.funded_account("10.00"), bank.open_account()
    bank.change_status(target, "freeze")
    assert_problem(_transfer(http, bank, source, target, "1.00"), 409, "account_frozen")
    bank.assert_unchanged(source)
    bank.change_status(target, "unfreeze")
    bank.assert_unchanged(target)


def test_freezing_a_frozen_account_is_account_frozen_and_changes_nothing(
    bank: Bank, http: httpx.Client
) -> None:
    account = bank.open_account()
    bank.change_status(account, "freeze")
    assert_problem(_status(http, bank, account, "freeze"), 409, "account_frozen")
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
        response = _status(http, bank, account, action)
    assert_problem(response, 409, "account_closed")
    # A closed account takes no probe deposit: read its last version from the store.
    assert stored_state(event_store, account.account_id) == (account.version, 0, "closed")


def test_unfreezing_an_open_account_is_account_not_frozen_and_changes_nothing(
    bank: Bank, http: httpx.Client
) -> None:
    account = bank.open_account()
    assert_problem(_status(http, bank, account, "unfreeze"), 409, "account_not_frozen")
    bank.assert_unchanged(account)


def test_closing_an_account_with_a_balance_is_account_not_empty_and_changes_nothing(
    bank: Bank, http: httpx.Client
) -> None:
    account = bank.funded_account("0.01")
    assert_problem(_status(http, bank, account, "close"), 409, "account_not_empty")
    bank.assert_unchanged(account)


def test_closing_an_overdrawn_account_is_account_not_empty(bank: Bank, http: httpx.Client) -> None:
    account = bank.open_account(overdraft_limit="10.00")
    bank.withdraw(account, "1.00")
    assert_problem(_status(http, bank, account, "close"), 409, "account_not_empty")
    bank.assert_unchanged(account)


def test_reusing_a_transaction_id_with_another_amount_is_transaction_conflict(
    bank: Bank, http: httpx.Client
) -> None:
    account = bank.open_account()
    transaction_id = str(uuid.uuid4())
    bank.deposit(account, "5.00", transaction_id=transaction_id)
    response = _deposit(
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
    response = _withdraw(
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


# --- 422 validation_error -------------------------------------------------------------

MALFORMED_DEPOSITS: dict[str, tuple[bytes, str]] = {
    # name: (raw body, a field the errors must name)
    "unknown_field": (b'{"amount": "1.00", "currency": "GBP", "colour": "red"}', "colour"),
    "missing_amount": (b'{"currency": "GBP"}', "amount"),
    "missing_currency": (b'{"amount": "1.00"}', "currency"),
    "float_amount": (b'{"amount": 12.5, "currency": "GBP"}', "amount"),
    "integer_amount": (b'{"amount": 12, "currency": "GBP"}', "amount"),
    "malformed_json": (b'{"amount": "1.00", "currency": ', "body"),
    "empty_body": (b"", "body"),
    "array_body": (b'["1.00", "GBP"]', "body"),
    "transaction_id_not_a_uuid": (
        b'{"amount": "1.00", "currency": "GBP", "transaction_id": "tx-1"}',
        "transaction_id",
    ),
    "unknown_channel": (b'{"amount": "1.00", "currency": "GBP", "channel": "pigeon"}', "channel"),
    "reference_too_long": (
        json.dumps({"amount": "1.00", "currency": "GBP", "reference": "r" * 141}).encode(),
        "reference",
    ),
}


@pytest.mark.parametrize("case", list(MALFORMED_DEPOSITS))
def test_a_malformed_deposit_is_a_validation_error_listing_the_field_and_changes_nothing(
    bank: Bank, http: httpx.Client, case: str
) -> None:
    account = bank.funded_account("10.00")
    raw, field = MALFORMED_DEPOSITS[case]
    response = http.post(
        f"/v1/accounts/{account.account_id}/deposits",
        content=raw,
        headers={**bank.teller(), "Content-Type": "application/json"},
    )
    problem = assert_problem(response, 422, "validation_error")
    assert problem["errors"], problem
    assert any(field in error["field"] for error in problem["errors"]), problem["errors"]
    assert all(set(error) == {"field", "message"} for error in problem["errors"])
    bank.assert_unchanged(account)


def test_an_account_id_that_is_not_a_uuid_is_a_validation_error(
    bank: Bank, http: httpx.Client
) -> None:
    response = http.post(
        "/v1/accounts/not-a-uuid/deposits",
        json={"amount": "1.00", "currency": "GBP"},
        headers=bank.teller(),
    )
    problem = assert_problem(response, 422, "validation_error")
    assert any("account_id" in error["field"] for error in problem["errors"]), problem


def test_transaction_id_and_idempotency_key_naming_different_ids_is_a_validation_error(
    bank: Bank, http: httpx.Client
) -> None:
    account = bank.funded_account("10.00")
    response = http.post(
        f"/v1/accounts/{account.account_id}/deposits",
        json={"amount": "1.00", "currency": "GBP", "transaction_id": str(uuid.uuid4())},
        headers={**bank.teller(), "Idempotency-Key": f"key-{uuid.uuid4()}"},
    )
    assert_problem(response, 422, "validation_error")
    bank.assert_unchanged(account)


def test_a_batch_of_1001_items_is_refused_whole_and_changes_nothing(
    bank: Bank, http: httpx.Client
) -> None:
    account = bank.funded_account("10.00")
    item = {
        "type": "deposit",
        "account_id": account.account_id,
        "amount": "0.01",
        "currency": "GBP",
    }
    response = http.post("/v1/batches", json={"items": [item] * 1001}, headers=bank.teller())
    assert_problem(response, 422, "validation_error")
    bank.assert_unchanged(account)


def test_a_batch_of_1000_items_is_accepted(bank: Bank, http: httpx.Client) -> None:
    account = bank.open_account()
    item = {
        "type": "deposit",
        "account_id": account.account_id,
        "amount": "0.01",
        "currency": "GBP",
    }
    response = http.post("/v1/batches", json={"items": [item] * 1000}, headers=bank.teller())
    assert response.status_code == 200, response.text
    results = response.json()["results"]
    assert len(results) == 1000
    assert all(result["status"] == "ok" for result in results)
    assert results[-1]["balance"] == "10.00"
    assert results[-1]["version"] == account.version + 1000


@pytest.mark.parametrize(
    "envelope",
    [
        pytest.param({"items": []}, id="no_items"),
        pytest.param({}, id="items_missing"),
        pytest.param({"items": "deposit"}, id="items_not_a_list"),
        pytest.param({"items": [], "atomic": True}, id="unknown_envelope_field"),
    ],
)
def test_a_malformed_batch_envelope_is_refused_whole(
    bank: Bank, http: httpx.Client, envelope: dict[str, Any]
) -> None:
    response = http.post("/v1/batches", json=envelope, headers=bank.teller())
    problem = assert_problem(response, 422, "validation_error")
    assert problem["errors"], problem


def test_a_malformed_batch_item_is_that_items_validation_error(
    bank: Bank, http: httpx.Client
) -> None:
    account = bank.open_account()
    good = {
        "type": "deposit",
        "account_id": account.account_id,
        "amount": "1.00",
        "currency": "GBP",
    }
    items = [
        good,
        {**good, "colour": "red"},
        {**good, "type": "refund"},
        {**good, "amount": 1.5},
        {**good, "amount": "1.5"},
        good,
    ]
    response = http.post("/v1/batches", json={"items": items}, headers=bank.teller())
    assert response.status_code == 200, response.text
    results = response.json()["results"]
    assert [r["status"] for r in results] == ["ok", "error", "error", "error", "error", "ok"]
    assert [r["code"] for r in results[1:5]] == [
        "validation_error",
        "validation_error",
        "validation_error",
        "invalid_amount",
    ]
    assert results[5]["balance"] == "2.00"
    assert results[5]["version"] == account.version + 2


def test_validation_errors_raised_by_the_app_still_name_the_offending_field(
    bank: Bank, http: httpx.Client
) -> None:
    """The API contract: a validation_error carries `errors` listing fields, whoever raised it."""
    account = bank.open_account()
    mismatched_ids = http.post(
        f"/v1/accounts/{account.account_id}/deposits",
        json={"amount": "1.00", "currency": "GBP", "transaction_id": str(uuid.uuid4())},
        headers={**bank.teller(), "Idempotency-Key": f"key-{uuid.uuid4()}"},
    )
    item = {
        "type": "deposit",
        "account_id": account.account_id,
        "amount": "0.01",
        "currency": "GBP",
    }
    too_many = http.post("/v1/batches", json={"items": [item] * 1001}, headers=bank.teller())
    for response in (mismatched_ids, too_many):
        problem = assert_problem(response, 422, "validation_error")
        assert problem["errors"], f"validation_error without fields: {problem}"


# --- 422 money ------------------------------------------------------------------------

INVALID_AMOUNTS = [
    pytest.param("0.00", "GBP", id="zero"),
    pytest.param("-1.00", "GBP", id="negative"),
    pytest.param("1.0", "GBP", id="one_place_for_gbp"),
    pytest.param("1.000", "GBP", id="three_places_for_gbp"),
    pytest.param("1", "GBP", id="no_places_for_gbp"),
    pytest.param("1.00", "JPY", id="two_places_for_jpy"),
    pytest.param("1.", "JPY", id="bare_point_for_jpy"),
    pytest.param("1.00", "BHD", id="two_places_for_bhd"),
    pytest.param("100000000.01", "GBP", id="over_the_ceiling"),
    pytest.param("1e2", "GBP", id="exponent"),
    pytest.param("1,00", "GBP", id="comma"),
    pytest.param(" 1.00", "GBP", id="leading_space"),
    pytest.param("+1.00", "GBP", id="plus_sign"),
    pytest.param("NaN", "GBP", id="nan"),
    pytest.param("1.00\n", "GBP", id="trailing_newline"),
    pytest.param("\u0661.\u0660\u0660", "GBP", id="arabic_indic_digits"),
    pytest.param("\uff11.\uff10\uff10", "GBP", id="fullwidth_digits"),
]


@pytest.mark.parametrize(("amount", "currency"), INVALID_AMOUNTS)
def test_an_invalid_amount_is_refused_and_changes_nothing(
    bank: Bank, http: httpx.Client, amount: str, currency: str
) -> None:
    account = bank.open_account(currency=currency)
    response = _deposit(http, bank, account, amount=amount, currency=currency)
    assert_problem(response, 422, "invalid_amount")
    bank.assert_unchanged(account)


def test_an_amount_at_the_ceiling_is_accepted(bank: Bank, http: httpx.Client) -> None:
    account = bank.open_account()
    response = _deposit(http, bank, account, amount="100000000.00", currency="GBP")
    assert response.status_code == 201, response.text
    assert response.json()["balance"] == "100000000.00"


def test_an_invalid_overdraft_limit_is_refused(bank: Bank, http: httpx.Client) -> None:
    body = {
        "owner": f"e2e-{uuid.uuid4()}",
        "branch": "001",
        "currency": "GBP",
        "overdraft_limit": "5",
    }
    assert_problem(
        http.post("/v1/accounts", json=body, headers=bank.admin()), 422, "invalid_amount"
    )


def test_a_transfer_of_an_invalid_amount_changes_neither_account(
    bank: Bank, http: httpx.Client
) -> None:
    source, target = bank.funded_account("10.00"), bank.funded_account("1.00")
    assert_problem(_transfer(http, bank, source, target, "0.00"), 422, "invalid_amount")
    bank.assert_unchanged(source)
    bank.assert_unchanged(target)


def test_a_deposit_in_another_currency_is_currency_mismatch_and_changes_nothing(
    bank: Bank, http: httpx.Client
) -> None:
    account = bank.funded_account("10.00")
    response = _deposit(http, bank, account, amount="1.00", currency="EUR")
    assert_problem(response, 422, "currency_mismatch")
    bank.assert_unchanged(account)


def test_a_transfer_between_currencies_is_currency_mismatch_and_changes_neither(
    bank: Bank, http: httpx.Client
) -> None:
    source, target = bank.funded_account("10.00"), bank.open_account(currency="EUR")
    assert_problem(_transfer(http, bank, source, target, "1.00"), 422, "currency_mismatch")
    bank.assert_unchanged(source)
    bank.assert_unchanged(target)


def test_a_transfer_to_the_same_account_is_refused_and_changes_nothing(
    bank: Bank, http: httpx.Client
) -> None:
    account = bank.funded_account("10.00")
    assert_problem(_transfer(http, bank, account, account, "1.00"), 422, "validation_error")
    bank.assert_unchanged(account)


def test_a_deposit_in_an_unknown_currency_is_unknown_currency_and_changes_nothing(
    bank: Bank, http: httpx.Client
) -> None:
    account = bank.funded_account("10.00")
    response = _deposit(http, bank, account, amount="1.00", currency="XYZ")
    assert_problem(response, 422, "unknown_currency")
    bank.assert_unchanged(account)


def test_opening_an_account_in_an_unknown_currency_is_unknown_currency(
    bank: Bank, http: httpx.Client
) -> None:
    body = {"owner": f"e2e-{uuid.uuid4()}", "branch": "001", "currency": "XYZ"}
    assert_problem(
        http.post("/v1/accounts", json=body, headers=bank.admin()), 422, "unknown_currency"
    )


# --- 413 ------------------------------------------------------------------------------


def _oversized_deposit() -> bytes:
    body = {"amount": "1.00", "currency": "GBP", "reference": "x" * BODY_MAX_BYTES}
    return json.dumps(body).encode()


def test_a_body_over_the_limit_is_payload_too_large_and_changes_nothing(
    bank: Bank, http: httpx.Client
) -> None:
    account = bank.funded_account("10.00")
    raw = _oversized_deposit()
    assert len(raw) > BODY_MAX_BYTES
    response = http.post(
        f"/v1/accounts/{account.account_id}/deposits",
        content=raw,
        headers={**bank.teller(), "Content-Type": "application/json"},
    )
    assert_problem(response, 413, "payload_too_large")
    bank.assert_unchanged(account)


def test_a_chunked_body_over_the_limit_is_payload_too_large_and_changes_nothing(
    bank: Bank, http: httpx.Client
) -> None:
    account = bank.funded_account("10.00")
    raw = _oversized_deposit()

    def chunks() -> Iterator[bytes]:
        for start in range(0, len(raw), 64 * 1024):
            yield raw[start : start + 64 * 1024]

    response = http.post(
        f"/v1/accounts/{account.account_id}/deposits",
        content=chunks(),
        headers={**bank.teller(), "Content-Type": "application/json"},
    )
    assert response.request.headers.get("transfer-encoding") == "chunked"
    assert "content-length" not in response.request.headers
    assert_problem(response, 413, "payload_too_large")
    bank.assert_unchanged(account)


def test_a_body_just_under_the_limit_is_judged_on_its_content(
    bank: Bank, http: httpx.Client
) -> None:
    """The limit is on bytes, not on meaning: under it, the usual validation answers."""
    account = bank.funded_account("10.00")
    filler = "x" * (BODY_MAX_BYTES - 200)
    raw = json.dumps({"amount": "1.00", "currency": "GBP", "reference": filler}).encode()
    assert len(raw) <= BODY_MAX_BYTES
    response = http.post(
        f"/v1/accounts/{account.account_id}/deposits",
        content=raw,
        headers={**bank.teller(), "Content-Type": "application/json"},
    )
    assert_problem(response, 422, "validation_error")
    bank.assert_unchanged(account)
