"""Screening in the money path over real HTTP: a transfer, withdrawal, hold or batch item
that hits the `[screening]` rules is answered 202 and held for review with a case; only
compliance releases (it posts) or rejects (nothing moves) it; nobody can step around it
by capturing or voiding the hold; a replay returns the same 202."""

from __future__ import annotations

import uuid
from typing import Any

import httpx
import pytest

from tests.e2e.conftest import Account, Bank, assert_problem

pytestmark = pytest.mark.e2e

NAMESPACE = uuid.UUID("dfe5cc1e-19d8-5d0e-b581-34b49d199699")
THRESHOLD = "250000.00"  # the default screening hold_at_or_above, GBP


def transfer(
    bank: Bank, source: Account, target: Account, amount: str, **headers: str
) -> httpx.Response:
    return bank.client.post(
        "/v1/transfers",
        json={
            "from_account_id": source.account_id,
            "to_account_id": target.account_id,
            "amount": amount,
            "currency": "GBP",
        },
        headers={**bank.teller(), **headers},
    )


def decide(
    bank: Bank, case_id: str, action: str, role: str = "compliance", **headers: str
) -> httpx.Response:
    return bank.client.post(
        f"/v1/cases/{case_id}/{action}",
        json={"note": f"{action}d after a call to the customer"},
        headers={**bank.headers(role), **headers},
    )


def held(response: httpx.Response, rule: str = "screening_amount") -> dict[str, Any]:
    assert response.status_code == 202, response.text
    body: dict[str, Any] = response.json()
    assert (body["status"], body["rule"]) == ("held_for_review", rule)
    hold_id = uuid.uuid5(NAMESPACE, f"{body['transaction_id']}:review")
    assert body["hold_id"] == str(hold_id)
    alert_id = uuid.uuid5(NAMESPACE, f"{rule}:{hold_id}")
    assert body["case_id"] == str(uuid.uuid5(NAMESPACE, str(alert_id)))
    return body


def probe(bank: Bank, account: Account) -> str:
    """The account's balance now, through a one-penny deposit."""
    balance: str = bank.deposit(account, "0.01")["balance"]
    return balance


def test_a_transfer_at_the_threshold_is_held_and_released_by_compliance(bank: Bank) -> None:
    source = bank.funded_account("300000.00")
    target = bank.open_account()
    key = {"Idempotency-Key": f"screen-{uuid.uuid4()}"}
    body = held(transfer(bank, source, target, THRESHOLD, **key))
    # A retry replays the 202; nothing moved.
    again = transfer(bank, source, target, THRESHOLD, **key)
    assert again.status_code == 202, again.text
    assert again.json() == body
    assert again.headers["Idempotent-Replayed"] == "true"
    assert probe(bank, target) == "0.01"
    # The money is reserved: only 50,000.00 is available.
    response = bank.client.post(
        f"/v1/accounts/{source.account_id}/withdrawals",
        json={"amount": "50000.01", "currency": "GBP"},
        headers=bank.teller(),
    )
    assert_problem(response, 409, "insufficient_funds")
    # Nobody steps around the review: capture and void are refused, release is compliance's.
    for headers in (bank.teller(), bank.admin()):
        capture = bank.client.post(f"/v1/holds/{body['hold_id']}/capture", json={}, headers=headers)
        assert_problem(capture, 409, "hold_under_review")
    for role in ("teller", "admin", "compliance"):
        headers = bank.teller() if role == "teller" else bank.headers(role)
        void = bank.client.post(
            f"/v1/holds/{body['hold_id']}/void", json={"reason": "no"}, headers=headers
        )
        assert_problem(void, 409, "hold_under_review")
    assert_problem(decide(bank, body["case_id"], "release", "admin"), 403, "forbidden")
    teller = bank.client.post(
        f"/v1/cases/{body['case_id']}/release", json={"note": "mine"}, headers=bank.teller()
    )
    assert_problem(teller, 403, "forbidden")
    released = decide(bank, body["case_id"], "release")
    assert released.status_code == 200, released.text
    case = released.json()
    assert (case["case_id"], case["status"], case["resolution"]) == (
        body["case_id"],
        "closed",
        "released",
    )
    assert case["rule"] == "screening_amount"
    assert case["severity"] == "high"
    assert case["hold"]["status"] == "captured"
    assert case["hold"]["transaction_id"] == body["transaction_id"]
    assert case["hold"]["balance"] == "50000.00"
    # Both balances moved, once; a retried release replays.
    assert probe(bank, target) == "250000.02"
    replay = decide(bank, body["case_id"], "release")
    assert replay.status_code == 200, replay.text
    assert replay.json() == case
    assert probe(bank, target) == "250000.03"
    # The original transfer's id was posted: it can be reversed like any transfer.
    reversal = bank.client.post(
        f"/v1/transactions/{body['transaction_id']}/reversal",
        json={"reason": "check", "amount": "0.01"},
        headers=bank.admin(),
    )
    assert reversal.status_code == 201, reversal.text


def test_a_rejected_withdrawal_moves_nothing_and_closes_its_case(bank: Bank) -> None:
    account = bank.funded_account("300000.00")
    response = bank.client.post(
        f"/v1/accounts/{account.account_id}/withdrawals",
        json={"amount": "260000.00", "currency": "GBP", "channel": "wire"},
        headers=bank.teller(),
    )
    body = held(response)
    rejected = decide(bank, body["case_id"], "reject")
    assert rejected.status_code == 200, rejected.text
    assert (rejected.json()["resolution"], rejected.json()["hold"]["status"]) == (
        "rejected",
        "voided",
    )
    assert rejected.json()["hold"]["available_balance"] == "300000.00"
    assert probe(bank, account) == "300000.01"
    assert_problem(decide(bank, body["case_id"], "release"), 409, "invalid_transition")


def test_a_released_withdrawal_posts_with_its_channel(bank: Bank) -> None:
    account = bank.funded_account("300000.00")
    response = bank.client.post(
        f"/v1/accounts/{account.account_id}/withdrawals",
        json={"amount": "250000.00", "currency": "GBP", "channel": "wire"},
        headers=bank.teller(),
    )
    body = held(response)
    released = decide(bank, body["case_id"], "release")
    assert released.status_code == 200, released.text
    assert released.json()["hold"]["balance"] == "50000.00"


def test_a_hold_paying_a_watchlisted_account_is_held_for_review(bank: Bank) -> None:
    source, payee = bank.funded_account("100.00"), bank.open_account()
    listed = bank.client.post(
        "/v1/watchlist",
        json={"account_id": payee.account_id, "reason": "sanctions hit"},
        headers=bank.headers("compliance"),
    )
    assert listed.status_code == 201, listed.text
    response = bank.client.post(
        "/v1/holds",
        json={
            "account_id": source.account_id,
            "amount": "10.00",
            "currency": "GBP",
            "to_account_id": payee.account_id,
        },
        headers=bank.teller(),
    )
    body = held(response, "screening_watchlist")
    released = decide(bank, body["case_id"], "release")
    assert released.status_code == 200, released.text
    case = released.json()
    assert case["severity"] == "critical"
    # Released, it is the hold it was asked to be, under the client's id.
    assert (case["hold"]["hold_id"], case["hold"]["status"]) == (body["transaction_id"], "pending")
    captured = bank.client.post(
        f"/v1/holds/{body['transaction_id']}/capture", json={}, headers=bank.teller()
    )
    assert captured.status_code == 200, captured.text
    assert probe(bank, payee) == "10.01"


def test_a_batch_item_at_the_threshold_is_held_and_the_rest_post(bank: Bank) -> None:
    source, target = bank.funded_account("300000.00"), bank.open_account()
    items = [
        {
            "type": "transfer",
            "from_account_id": source.account_id,
            "to_account_id": target.account_id,
            "amount": amount,
            "currency": "GBP",
        }
        for amount in ("10.00", THRESHOLD)
    ]
    response = bank.client.post("/v1/batches", json={"items": items}, headers=bank.teller())
    assert response.status_code == 200, response.text
    first, second = response.json()["results"]
    assert first["status"] == "ok"
    assert (second["status"], second["rule"]) == ("held_for_review", "screening_amount")
    assert second["hold_id"] == str(uuid.uuid5(NAMESPACE, f"{second['transaction_id']}:review"))
    assert probe(bank, target) == "10.01"


def test_release_and_reject_refuse_what_is_not_a_review(bank: Bank) -> None:
    assert_problem(decide(bank, str(uuid.uuid4()), "release"), 404, "case_not_found")
    blank = bank.client.post(
        f"/v1/cases/{uuid.uuid4()}/reject", json={"note": " "}, headers=bank.headers("compliance")
    )
    assert_problem(blank, 422, "validation_error")
