"""The command API's money and status requests, as the e2e error tests send them: each
with the headers of the teller of the account's branch (status changes: an admin)."""

from __future__ import annotations

from typing import Any

import httpx

from tests.e2e.conftest import Account, Bank


def deposit(http: httpx.Client, bank: Bank, account: Account, **body: Any) -> httpx.Response:
    return http.post(
        f"/v1/accounts/{account.account_id}/deposits",
        json=body,
        headers=bank.teller(account.branch),
    )


def withdraw(http: httpx.Client, bank: Bank, account: Account, **body: Any) -> httpx.Response:
    return http.post(
        f"/v1/accounts/{account.account_id}/withdrawals",
        json=body,
        headers=bank.teller(account.branch),
    )


def transfer(
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


def change_status(http: httpx.Client, bank: Bank, account: Account, action: str) -> httpx.Response:
    return http.post(
        f"/v1/accounts/{account.account_id}/{action}",
        json={"reason": f"e2e {action}"},
        headers=bank.admin(),
    )
