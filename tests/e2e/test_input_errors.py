"""Every refusal of the command API's input, caused over real HTTP, as
application/problem+json: 422 validation errors (malformed bodies, batches, ids), 422 money
errors (amounts, currencies) and 413 for bodies over the limit.

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

from tests.e2e.commands import deposit, transfer
from tests.e2e.conftest import Bank, assert_problem

pytestmark = pytest.mark.e2e

BODY_MAX_BYTES = 1_048_576


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
    response = deposit(http, bank, account, amount=amount, currency=currency)
    assert_problem(response, 422, "invalid_amount")
    bank.assert_unchanged(account)


def test_an_amount_at_the_ceiling_is_accepted(bank: Bank, http: httpx.Client) -> None:
    account = bank.open_account()
    response = deposit(http, bank, account, amount="100000000.00", currency="GBP")
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
    assert_problem(transfer(http, bank, source, target, "0.00"), 422, "invalid_amount")
    bank.assert_unchanged(source)
    bank.assert_unchanged(target)


def test_a_deposit_in_another_currency_is_currency_mismatch_and_changes_nothing(
    bank: Bank, http: httpx.Client
) -> None:
    account = bank.funded_account("10.00")
    response = deposit(http, bank, account, amount="1.00", currency="EUR")
    assert_problem(response, 422, "currency_mismatch")
    bank.assert_unchanged(account)


def test_a_transfer_between_currencies_is_currency_mismatch_and_changes_neither(
    bank: Bank, http: httpx.Client
) -> None:
    source, target = bank.funded_account("10.00"), bank.open_account(currency="EUR")
    assert_problem(transfer(http, bank, source, target, "1.00"), 422, "currency_mismatch")
    bank.assert_unchanged(source)
    bank.assert_unchanged(target)


def test_a_transfer_to_the_same_account_is_refused_and_changes_nothing(
    bank: Bank, http: httpx.Client
) -> None:
    account = bank.funded_account("10.00")
    assert_problem(transfer(http, bank, account, account, "1.00"), 422, "validation_error")
    bank.assert_unchanged(account)


def test_a_deposit_in_an_unknown_currency_is_unknown_currency_and_changes_nothing(
    bank: Bank, http: httpx.Client
) -> None:
    account = bank.funded_account("10.00")
    response = deposit(http, bank, account, amount="1.00", currency="XYZ")
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
