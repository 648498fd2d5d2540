"""What a caller may not read stays unread, over real HTTP: a teller's transfer to another
branch shows no balance, a teller cannot tell a missing account from another branch's,
refusals name no cause, every reply carries the security headers, and an idempotency key
reused by another role is a conflict, not someone else's reply."""

from __future__ import annotations

import re
import uuid
from typing import Any

import httpx
import pytest

from tests.e2e.conftest import Bank, assert_problem, bearer
from tests.e2e.query_support import QueryEnv

UUIDS = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")

pytestmark = pytest.mark.e2e

HIDDEN = {"version": None, "balance": None}


def _money(amount: str) -> dict[str, str]:
    return {"amount": amount, "currency": "GBP"}


def test_a_transfer_to_another_branch_shows_the_teller_no_foreign_balance(
    bank: Bank, http: httpx.Client
) -> None:
    source = bank.funded_account("10.00", branch="002")
    foreign = bank.funded_account("29498.01", branch="001")
    body = {"from_account_id": source.account_id, "to_account_id": foreign.account_id}
    headers = {**bank.teller("002"), "Idempotency-Key": f"leak-{uuid.uuid4()}"}

    reply = http.post("/v1/transfers", json=body | _money("0.01"), headers=headers)
    assert reply.status_code == 201, reply.text
    assert reply.json()["to"] == {"account_id": foreign.account_id, **HIDDEN}
    assert reply.json()["from"]["balance"] == "9.99"
    assert "29498" not in reply.text

    replay = http.post("/v1/transfers", json=body | _money("0.01"), headers=headers)
    assert replay.headers["Idempotent-Replayed"] == "true"
    assert replay.json() == reply.json()


def test_a_transfer_within_the_branch_shows_both_balances(bank: Bank, http: httpx.Client) -> None:
    source = bank.funded_account("10.00", branch="002")
    target = bank.funded_account("5.00", branch="002")
    body = {"from_account_id": source.account_id, "to_account_id": target.account_id}
    reply = http.post("/v1/transfers", json=body | _money("1.00"), headers=bank.teller("002"))
    assert reply.status_code == 201, reply.text
    assert reply.json()["to"]["balance"] == "6.00"


def test_a_batch_transfer_to_another_branch_shows_no_foreign_balance(
    bank: Bank, http: httpx.Client
) -> None:
    source = bank.funded_account("10.00", branch="002")
    foreign = bank.funded_account("777.77", branch="001")
    item = {
        "type": "transfer",
        "from_account_id": source.account_id,
        "to_account_id": foreign.account_id,
        **_money("0.01"),
    }
    reply = http.post("/v1/batches", json={"items": [item]}, headers=bank.teller("002"))
    assert reply.status_code == 200, reply.text
    [result] = reply.json()["results"]
    assert result["status"] == "ok", result
    assert result["to"] == {"account_id": foreign.account_id, **HIDDEN}
    # Ids are random hex and may hold "777" themselves: look past them for the balance.
    assert "777" not in UUIDS.sub("<id>", reply.text)


@pytest.mark.parametrize("route", ["deposits", "withdrawals"])
def test_a_teller_gets_the_same_403_for_a_missing_account_as_for_another_branchs(
    bank: Bank, http: httpx.Client, route: str
) -> None:
    foreign = bank.funded_account("10.00", branch="001")
    missing = http.post(
        f"/v1/accounts/{uuid.uuid4()}/{route}", json=_money("1.00"), headers=bank.teller("002")
    )
    other = http.post(
        f"/v1/accounts/{foreign.account_id}/{route}",
        json=_money("1.00"),
        headers=bank.teller("002"),
    )
    assert_problem(missing, 403, "forbidden")
    assert_problem(other, 403, "forbidden")
    assert missing.json()["detail"] == other.json()["detail"]
    bank.assert_unchanged(foreign)


def test_a_transfer_from_a_missing_account_is_403_for_a_teller_and_404_for_none_else(
    bank: Bank, http: httpx.Client
) -> None:
    target = bank.open_account(branch="002")
    body = {"from_account_id": str(uuid.uuid4()), "to_account_id": target.account_id}
    refused = http.post("/v1/transfers", json=body | _money("1.00"), headers=bank.teller("002"))
    assert_problem(refused, 403, "forbidden")
    # A missing receiving account stays 404: a teller may pay into any branch.
    source = bank.funded_account("10.00", branch="002")
    body = {"from_account_id": source.account_id, "to_account_id": str(uuid.uuid4())}
    missing_target = http.post(
        "/v1/transfers", json=body | _money("1.00"), headers=bank.teller("002")
    )
    assert_problem(missing_target, 404, "account_not_found")
    frozen = http.post(
        f"/v1/accounts/{uuid.uuid4()}/freeze", json={"reason": "x"}, headers=bank.admin()
    )
    assert_problem(frozen, 404, "account_not_found")


def test_an_idempotency_key_reused_by_another_role_is_a_conflict(
    bank: Bank, http: httpx.Client
) -> None:
    subject = f"shared-{uuid.uuid4()}"
    body = {"owner": f"leak-{uuid.uuid4()}", "branch": "001", "currency": "GBP"}
    key = {"Idempotency-Key": f"k-{uuid.uuid4()}"}
    teller = {**bank.headers("teller", branch="001", subject=subject), **key}
    admin = {**bank.headers("admin", subject=subject), **key}
    assert http.post("/v1/accounts", json=body, headers=teller).status_code == 201
    assert_problem(http.post("/v1/accounts", json=body, headers=admin), 409, "transaction_conflict")
    again = http.post("/v1/accounts", json=body, headers=teller)
    assert again.headers.get("Idempotent-Replayed") == "true"


@pytest.mark.parametrize(
    "authorization",
    [None, "Bearer not-a-token", "Bearer a.b.c", "Basic dXNlcjpwYXNz"],
)
def test_every_401_says_the_same_and_names_no_cause(
    http: httpx.Client, authorization: str | None
) -> None:
    headers = {} if authorization is None else {"Authorization": authorization}
    body = assert_problem(http.post("/v1/transfers", json={}, headers=headers), 401, "unauthorized")
    assert body["detail"] == "the bearer token is missing or not valid"


def _assert_security_headers(response: httpx.Response) -> None:
    assert response.headers["cache-control"] == "no-store", response.headers
    assert response.headers["x-content-type-options"] == "nosniff"
    assert "server" not in response.headers


def test_every_reply_of_the_command_api_carries_the_security_headers(
    bank: Bank, http: httpx.Client
) -> None:
    account = bank.open_account()
    replies: list[httpx.Response] = [
        http.get("/health/live"),
        http.get("/no/such/route"),
        http.post("/v1/transfers", json={}),
        http.post(f"/v1/accounts/{account.account_id}/deposits", json={}, headers=bank.teller()),
        http.post(
            f"/v1/accounts/{account.account_id}/deposits",
            json=_money("1.00"),
            headers=bank.teller(),
        ),
    ]
    for response in replies:
        _assert_security_headers(response)


def test_docs_in_development_load_swagger_ui_from_the_api_itself(http: httpx.Client) -> None:
    page = http.get("/docs")
    assert page.status_code == 200
    assert "cdn" not in page.text.lower()
    assert "/docs/assets/swagger-ui-bundle.js" in page.text
    script = http.get("/docs/assets/swagger-ui-bundle.js")
    assert script.status_code == 200
    assert len(script.content) > 100_000
    assert http.get("/openapi.json").json()["info"]["title"] == "Vigil command API"


def test_a_teller_reading_a_missing_account_gets_the_403_of_another_branch(
    query_env: QueryEnv,
) -> None:
    foreign = query_env.seed.by_branch["002"][0]
    missing = str(uuid.uuid4())
    for path in ("/v1/accounts/{}", "/v1/accounts/{}/transactions"):
        other = query_env.get(path.format(foreign), "teller_001")
        absent = query_env.get(path.format(missing), "teller_001")
        assert_problem(other, 403, "forbidden")
        assert_problem(absent, 403, "forbidden")
        assert other.json()["detail"] == absent.json()["detail"]
        assert_problem(query_env.get(path.format(missing), "admin"), 404, "account_not_found")
        _assert_security_headers(absent)


def _get(env: QueryEnv, path: str, **headers: Any) -> httpx.Response:
    return env.client.get(path, headers=headers)


def test_metrics_need_the_scrape_token_when_one_is_set(query_env: QueryEnv) -> None:
    # The session's query API runs with a metrics token (query_support); the command
    # API's without one, as in development.
    token = query_env.settings.metrics_token
    assert token is not None
    assert_problem(_get(query_env, "/metrics"), 401, "unauthorized")
    wrong = _get(query_env, "/metrics", Authorization="Bearer nope")
    assert_problem(wrong, 401, "unauthorized")
    scraped = _get(query_env, "/metrics", **bearer(token.get_secret_value()))
    assert scraped.status_code == 200
    assert "vigil_http" in scraped.text or "python_info" in scraped.text
