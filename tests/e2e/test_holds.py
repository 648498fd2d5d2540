"""Holds and reversals over real HTTP: place, capture (all or part), void, reverse; the
available balance; idempotent retries; every new refusal as problem+json; who may call."""

from __future__ import annotations

import threading
import uuid
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import pytest

from tests.e2e.conftest import Account, Bank, assert_problem

pytestmark = pytest.mark.e2e


def place(
    bank: Bank, account: Account, amount: str, expect: int = 201, **fields: Any
) -> httpx.Response:
    body = {"account_id": account.account_id, "amount": amount, "currency": "GBP", **fields}
    response = bank.client.post("/v1/holds", json=body, headers=bank.teller(account.branch))
    assert response.status_code == expect, response.text
    return response


def capture(
    bank: Bank, hold_id: str, headers: dict[str, str] | None = None, **body: Any
) -> httpx.Response:
    return bank.client.post(
        f"/v1/holds/{hold_id}/capture", json=body, headers=headers or bank.teller()
    )


def void(bank: Bank, hold_id: str, headers: dict[str, str] | None = None) -> httpx.Response:
    return bank.client.post(
        f"/v1/holds/{hold_id}/void",
        json={"reason": "customer cancelled"},
        headers=headers or bank.teller(),
    )


def reverse(bank: Bank, transaction_id: str, **body: Any) -> httpx.Response:
    return bank.client.post(
        f"/v1/transactions/{transaction_id}/reversal",
        json={"reason": "teller error", **body},
        headers=bank.admin(),
    )


def test_a_hold_reserves_available_balance_and_a_partial_capture_releases_the_rest(
    bank: Bank,
) -> None:
    source, payee = bank.funded_account("100.00"), bank.open_account()
    hold = place(bank, source, "60.00", to_account_id=payee.account_id).json()
    assert hold["status"] == "pending"
    assert (hold["balance"], hold["available_balance"]) == ("100.00", "40.00")
    assert hold["to_account_id"] == payee.account_id
    assert hold["expires_at"].endswith("Z")
    # What the hold reserves is not available to anything else.
    response = bank.client.post(
        f"/v1/accounts/{source.account_id}/withdrawals",
        json={"amount": "40.01", "currency": "GBP"},
        headers=bank.teller(),
    )
    assert_problem(response, 409, "insufficient_funds")
    place(bank, source, "40.01", expect=409)

    captured = capture(bank, hold["hold_id"], amount="45.00")
    assert captured.status_code == 200, captured.text
    body = captured.json()
    assert body["status"] == "captured"
    assert body["captured_amount"] == "45.00"
    assert (body["balance"], body["available_balance"]) == ("55.00", "55.00")
    assert body["transaction_id"] == str(
        uuid.uuid5(uuid.UUID("dfe5cc1e-19d8-5d0e-b581-34b49d199699"), f"{hold['hold_id']}:capture")
    )
    # A retried capture replays the first reply and moves nothing again.
    again = capture(bank, hold["hold_id"], amount="45.00")
    assert again.status_code == 200, again.text
    assert again.json() == body
    assert again.headers["Idempotent-Replayed"] == "true"
    # The payee got the captured part: a deposit shows its balance.
    assert bank.deposit(payee, "1.00")["balance"] == "46.00"
    # Any other action on a captured hold.
    assert_problem(void(bank, hold["hold_id"]), 409, "hold_not_pending")
    assert_problem(capture(bank, hold["hold_id"], amount="1.00"), 409, "transaction_conflict")


def test_a_capture_without_a_payee_is_a_card_withdrawal_and_a_void_moves_nothing(
    bank: Bank,
) -> None:
    account = bank.funded_account("50.00")
    first = place(bank, account, "20.00").json()
    second = place(bank, account, "10.00").json()
    assert second["available_balance"] == "20.00"
    body = capture(bank, first["hold_id"]).json()
    assert (body["captured_amount"], body["balance"], body["available_balance"]) == (
        "20.00",
        "30.00",
        "20.00",
    )
    voided = void(bank, second["hold_id"])
    assert voided.status_code == 200, voided.text
    assert voided.json()["status"] == "voided"
    assert (voided.json()["balance"], voided.json()["available_balance"]) == ("30.00", "30.00")
    # Replayed, not voided twice: the void's id is derived from the hold's.
    assert void(bank, second["hold_id"]).headers.get("Idempotent-Replayed") == "true"


def test_hold_refusals_are_problems_and_change_nothing(bank: Bank) -> None:
    account = bank.funded_account("10.00")
    assert_problem(place(bank, account, "10.01", expect=409), 409, "insufficient_funds")
    assert_problem(place(bank, account, "0.00", expect=422), 422, "invalid_amount")
    assert_problem(
        place(bank, account, "1.00", expect=422, expires_in_s=0), 422, "validation_error"
    )
    assert_problem(
        place(bank, account, "1.00", expect=422, expires_in_s=2_592_001), 422, "validation_error"
    )
    assert_problem(
        place(bank, account, "1.00", expect=404, to_account_id=str(uuid.uuid4())),
        404,
        "account_not_found",
    )
    missing = str(uuid.uuid4())
    assert_problem(capture(bank, missing, headers=bank.admin()), 404, "hold_not_found")
    assert_problem(void(bank, missing, headers=bank.admin()), 404, "hold_not_found")
    # A teller cannot tell a missing hold from another branch's: 403 for both.
    assert_problem(capture(bank, missing), 403, "forbidden")
    assert_problem(void(bank, missing), 403, "forbidden")
    hold = place(bank, account, "5.00").json()
    assert_problem(capture(bank, hold["hold_id"], amount="5.01"), 422, "invalid_amount")
    # An account with a pending hold cannot be closed.
    response = bank.client.post(
        f"/v1/accounts/{account.account_id}/close", json={"reason": "x"}, headers=bank.admin()
    )
    assert_problem(response, 409, "account_has_holds")
    bank.change_status(account, "freeze")
    assert_problem(capture(bank, hold["hold_id"]), 409, "account_frozen")
    assert_problem(place(bank, account, "1.00", expect=409), 409, "account_frozen")
    bank.change_status(account, "unfreeze")
    assert capture(bank, hold["hold_id"]).json()["balance"] == "5.00"


def test_a_capture_after_expires_at_is_hold_expired(bank: Bank) -> None:
    account = bank.funded_account("10.00")
    hold = place(bank, account, "5.00", expires_in_s=1).json()
    threading.Event().wait(1.2)
    assert_problem(capture(bank, hold["hold_id"]), 409, "hold_expired")
    # The money is still reserved until the sweep expires it; nothing moved.
    assert bank.deposit(account, "1.00")["balance"] == "11.00"


def test_concurrent_holds_and_withdrawals_never_exceed_what_is_available(bank: Bank) -> None:
    account = bank.funded_account("500.00")

    def attempt(index: int) -> tuple[int, str | None]:
        if index % 2:
            body = {"account_id": account.account_id, "amount": "20.00", "currency": "GBP"}
            response = bank.client.post("/v1/holds", json=body, headers=bank.teller())
        else:
            response = bank.client.post(
                f"/v1/accounts/{account.account_id}/withdrawals",
                json={"amount": "20.00", "currency": "GBP"},
                headers=bank.teller(),
            )
        code = response.json().get("code") if response.status_code >= 400 else None
        return response.status_code, code

    with ThreadPoolExecutor(max_workers=16) as pool:
        results = list(pool.map(attempt, range(50)))
    accepted = [r for r in results if r[0] == 201]
    refused = [r for r in results if r[0] != 201]
    assert len(accepted) == 25, results  # 500.00 / 20.00
    assert all(r == (409, "insufficient_funds") for r in refused), refused
    assert_problem(place(bank, account, "0.01", expect=409), 409, "insufficient_funds")


def test_full_and_partial_reversals_are_bounded_by_the_original(bank: Bank) -> None:
    source, target = bank.funded_account("100.00"), bank.open_account()
    response = bank.client.post(
        "/v1/transfers",
        json={
            "from_account_id": source.account_id,
            "to_account_id": target.account_id,
            "amount": "30.00",
            "currency": "GBP",
        },
        headers=bank.teller(),
    )
    assert response.status_code == 201, response.text
    transfer_id = response.json()["transaction_id"]
    key = {"Idempotency-Key": f"rev-{uuid.uuid4()}", **bank.admin()}
    first = bank.client.post(
        f"/v1/transactions/{transfer_id}/reversal",
        json={"reason": "wrong payee", "amount": "10.00"},
        headers=key,
    )
    assert first.status_code == 201, first.text
    body = first.json()
    assert (body["reverses"], body["amount"], body["currency"]) == (transfer_id, "10.00", "GBP")
    balances = {a["account_id"]: a["balance"] for a in body["accounts"]}
    assert balances == {source.account_id: "80.00", target.account_id: "20.00"}
    # The same key replays the first reply: money moves once.
    again = bank.client.post(
        f"/v1/transactions/{transfer_id}/reversal",
        json={"reason": "wrong payee", "amount": "10.00"},
        headers=key,
    )
    assert again.status_code == 201, again.text
    assert again.json() == body
    assert again.headers["Idempotent-Replayed"] == "true"
    assert_problem(reverse(bank, transfer_id, amount="20.01"), 409, "reversal_exceeds_original")
    rest = reverse(bank, transfer_id)
    assert rest.status_code == 201, rest.text
    assert rest.json()["amount"] == "20.00"
    assert_problem(reverse(bank, transfer_id, amount="0.01"), 409, "reversal_exceeds_original")
    assert_problem(reverse(bank, rest.json()["transaction_id"]), 409, "not_reversible")
    assert_problem(reverse(bank, str(uuid.uuid4())), 404, "transaction_not_found")
    assert_problem(reverse(bank, source.account_id), 409, "not_reversible")  # an opening


def test_deposits_withdrawals_and_captures_reverse(bank: Bank) -> None:
    account = bank.funded_account("100.00")
    deposit = bank.deposit(account, "25.00")
    assert reverse(bank, deposit["transaction_id"]).json()["accounts"][0]["balance"] == "100.00"
    withdrawal = bank.withdraw(account, "40.00")
    body = reverse(bank, withdrawal["transaction_id"], amount="15.00").json()
    assert body["accounts"][0]["balance"] == "75.00"
    hold = place(bank, account, "30.00").json()
    captured = capture(bank, hold["hold_id"]).json()
    assert captured["balance"] == "45.00"
    body = reverse(bank, captured["transaction_id"]).json()
    assert (body["amount"], body["accounts"][0]["balance"]) == ("30.00", "75.00")
    # A reversal that would take the account below its limit.
    emptied = bank.funded_account("10.00")
    deposit = bank.deposit(emptied, "50.00")
    bank.withdraw(emptied, "55.00")
    assert_problem(reverse(bank, deposit["transaction_id"]), 409, "insufficient_funds")


ROLE_HEADERS = ("teller_001", "teller_002", "admin", "auditor", "compliance", "viewer")


def _headers(bank: Bank, caller: str) -> dict[str, str]:
    if caller.startswith("teller"):
        return bank.teller(caller.split("_")[1])
    return bank.headers(caller)


@pytest.mark.parametrize("caller", ROLE_HEADERS)
def test_who_may_place_capture_void_and_reverse(bank: Bank, caller: str) -> None:
    account = bank.funded_account("100.00")
    headers = _headers(bank, caller)
    placed = bank.client.post(
        "/v1/holds",
        json={"account_id": account.account_id, "amount": "1.00", "currency": "GBP"},
        headers=headers,
    )
    if caller == "teller_001":
        assert placed.status_code == 201, placed.text
    else:
        assert_problem(placed, 403, "forbidden")
    hold_id = place(bank, account, "2.00").json()["hold_id"]
    captured = capture(bank, hold_id, headers=headers)
    if caller in ("teller_001", "admin"):
        assert captured.status_code == 200, captured.text
    else:
        assert_problem(captured, 403, "forbidden")
    hold_id = place(bank, account, "3.00").json()["hold_id"]
    voided = void(bank, hold_id, headers=headers)
    if caller in ("teller_001", "admin", "compliance"):
        assert voided.status_code == 200, voided.text
    else:
        assert_problem(voided, 403, "forbidden")
    deposit = bank.deposit(account, "1.00")
    reversed_ = bank.client.post(
        f"/v1/transactions/{deposit['transaction_id']}/reversal",
        json={"reason": "rbac"},
        headers=headers,
    )
    if caller == "admin":
        assert reversed_.status_code == 201, reversed_.text
    else:
        assert_problem(reversed_, 403, "forbidden")
