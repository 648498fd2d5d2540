"""Idempotent commands over real HTTP: replays, keys, failed commands, concurrent
duplicates, and a killed-and-restarted server in between."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from uuid import uuid5

import httpx
import pytest
import redis

from domain.ids import NAMESPACE
from tests.conftest import ApiServer, start_command_api
from tests.e2e.conftest import HTTP_TIMEOUT_S, Account, Bank, assert_problem, bearer, make_token

pytestmark = pytest.mark.e2e

REPLAYED = "Idempotent-Replayed"
CONCURRENT_SUBMISSIONS = 20
CONCURRENT_ROUNDS = 5


def _post_deposit(
    http: httpx.Client, headers: dict[str, str], account: Account, **body: Any
) -> httpx.Response:
    return http.post(
        f"/v1/accounts/{account.account_id}/deposits",
        json={"currency": account.currency, **body},
        headers=headers,
    )


def _teller(bank: Bank, subject: str | None = None, branch: str = "001") -> dict[str, str]:
    return bank.headers("teller", branch=branch, subject=subject)


def test_repeating_a_deposit_replays_the_original_reply(bank: Bank, http: httpx.Client) -> None:
    account = bank.open_account()
    transaction_id = str(uuid.uuid4())
    headers = bank.teller()
    first = _post_deposit(http, headers, account, amount="7.50", transaction_id=transaction_id)
    assert first.status_code == 201, first.text
    assert REPLAYED not in first.headers
    assert first.json()["transaction_id"] == transaction_id

    second = _post_deposit(http, headers, account, amount="7.50", transaction_id=transaction_id)
    assert second.status_code == 201, second.text
    assert second.headers[REPLAYED] == "true"
    assert second.content == first.content

    account.version, account.balance = first.json()["version"], first.json()["balance"]
    bank.assert_unchanged(account)


def test_a_replay_still_answers_after_the_account_was_frozen(
    bank: Bank, http: httpx.Client
) -> None:
    """The reply is the one the command earned; later state does not rewrite it."""
    account = bank.open_account()
    transaction_id = str(uuid.uuid4())
    first = _post_deposit(
        http, bank.teller(), account, amount="3.00", transaction_id=transaction_id
    )
    assert first.status_code == 201, first.text
    bank.change_status(account, "freeze")
    again = _post_deposit(
        http, bank.teller(), account, amount="3.00", transaction_id=transaction_id
    )
    assert again.status_code == 201, again.text
    assert again.headers[REPLAYED] == "true"
    assert again.content == first.content


def test_an_idempotency_key_names_the_transaction_for_its_subject(
    bank: Bank, http: httpx.Client
) -> None:
    account = bank.open_account()
    subject, key = f"teller-{uuid.uuid4()}", f"key-{uuid.uuid4()}"
    headers = {**_teller(bank, subject), "Idempotency-Key": key}
    first = _post_deposit(http, headers, account, amount="2.00")
    assert first.status_code == 201, first.text
    assert REPLAYED not in first.headers
    assert first.json()["transaction_id"] == str(uuid5(NAMESPACE, f"{subject}:{key}"))

    second = _post_deposit(http, headers, account, amount="2.00")
    assert second.status_code == 201, second.text
    assert second.headers[REPLAYED] == "true"
    assert second.content == first.content

    # The id the key names, sent as transaction_id, is the same command.
    explicit = _post_deposit(
        http,
        _teller(bank, subject),
        account,
        amount="2.00",
        transaction_id=first.json()["transaction_id"],
    )
    assert explicit.headers.get(REPLAYED) == "true"
    assert explicit.content == first.content

    account.version, account.balance = first.json()["version"], first.json()["balance"]
    bank.assert_unchanged(account)


def test_a_transaction_id_and_idempotency_key_naming_the_same_id_are_accepted(
    bank: Bank, http: httpx.Client
) -> None:
    account = bank.open_account()
    subject, key = f"teller-{uuid.uuid4()}", f"key-{uuid.uuid4()}"
    transaction_id = str(uuid5(NAMESPACE, f"{subject}:{key}"))
    headers = {**_teller(bank, subject), "Idempotency-Key": key}
    response = _post_deposit(http, headers, account, amount="1.00", transaction_id=transaction_id)
    assert response.status_code == 201, response.text
    assert response.json()["transaction_id"] == transaction_id


def test_the_same_idempotency_key_from_two_subjects_names_two_transactions(
    bank: Bank, http: httpx.Client
) -> None:
    account = bank.open_account()
    key = f"shared-{uuid.uuid4()}"
    replies = []
    for subject in (f"alice-{uuid.uuid4()}", f"bob-{uuid.uuid4()}"):
        headers = {**_teller(bank, subject), "Idempotency-Key": key}
        response = _post_deposit(http, headers, account, amount="1.00")
        assert response.status_code == 201, response.text
        assert REPLAYED not in response.headers
        replies.append(response.json())
    assert replies[0]["transaction_id"] != replies[1]["transaction_id"]
    assert replies[1]["balance"] == "2.00"


def test_without_an_id_each_request_is_a_new_transaction(bank: Bank, http: httpx.Client) -> None:
    account = bank.open_account()
    first = _post_deposit(http, bank.teller(), account, amount="1.00")
    second = _post_deposit(http, bank.teller(), account, amount="1.00")
    assert first.json()["transaction_id"] != second.json()["transaction_id"]
    assert second.json()["balance"] == "2.00"
    assert REPLAYED not in second.headers


def test_a_replay_is_refused_to_a_teller_of_another_branch(bank: Bank, http: httpx.Client) -> None:
    """Auth and RBAC come before any replay: the reply is not leaked."""
    account = bank.open_account(branch="001")
    transaction_id = str(uuid.uuid4())
    first = _post_deposit(
        http, bank.teller("001"), account, amount="4.00", transaction_id=transaction_id
    )
    assert first.status_code == 201, first.text
    stranger = _post_deposit(
        http, bank.teller("002"), account, amount="4.00", transaction_id=transaction_id
    )
    assert_problem(stranger, 403, "forbidden")
    viewer = _post_deposit(
        http, bank.headers("viewer"), account, amount="4.00", transaction_id=transaction_id
    )
    assert_problem(viewer, 403, "forbidden")
    anonymous = http.post(
        f"/v1/accounts/{account.account_id}/deposits",
        json={"amount": "4.00", "currency": "GBP", "transaction_id": transaction_id},
    )
    assert_problem(anonymous, 401, "unauthorized")


def test_a_failed_command_records_nothing_so_its_retry_is_judged_afresh(
    bank: Bank, http: httpx.Client
) -> None:
    account = bank.open_account()
    transaction_id = str(uuid.uuid4())
    refused = http.post(
        f"/v1/accounts/{account.account_id}/withdrawals",
        json={"amount": "5.00", "currency": "GBP", "transaction_id": transaction_id},
        headers=bank.teller(),
    )
    assert_problem(refused, 409, "insufficient_funds")
    bank.deposit(account, "5.00")

    retried = http.post(
        f"/v1/accounts/{account.account_id}/withdrawals",
        json={"amount": "5.00", "currency": "GBP", "transaction_id": transaction_id},
        headers=bank.teller(),
    )
    assert retried.status_code == 201, retried.text
    assert REPLAYED not in retried.headers
    assert retried.json()["transaction_id"] == transaction_id
    assert retried.json()["balance"] == "0.00"
    assert retried.json()["version"] == account.version + 1


def test_a_failed_command_does_not_reserve_its_id_for_another_body(
    bank: Bank, http: httpx.Client
) -> None:
    account = bank.open_account()
    transaction_id = str(uuid.uuid4())
    refused = http.post(
        f"/v1/accounts/{account.account_id}/withdrawals",
        json={"amount": "5.00", "currency": "GBP", "transaction_id": transaction_id},
        headers=bank.teller(),
    )
    assert_problem(refused, 409, "insufficient_funds")
    other = _post_deposit(
        http, bank.teller(), account, amount="1.00", transaction_id=transaction_id
    )
    assert other.status_code == 201, other.text


def test_opening_an_account_twice_with_an_idempotency_key_gives_the_same_account(
    bank: Bank, http: httpx.Client
) -> None:
    subject, key = f"admin-{uuid.uuid4()}", f"open-{uuid.uuid4()}"
    headers = {**bank.headers("admin", subject=subject), "Idempotency-Key": key}
    body = {"owner": f"idem-{uuid.uuid4()}", "branch": "001", "currency": "GBP"}
    first = http.post("/v1/accounts", json=body, headers=headers)
    assert first.status_code == 201, first.text
    assert REPLAYED not in first.headers
    assert first.json()["account_id"] == str(uuid5(NAMESPACE, f"{subject}:{key}"))

    second = http.post("/v1/accounts", json=body, headers=headers)
    assert second.status_code == 201, second.text
    assert second.headers[REPLAYED] == "true"
    assert second.content == first.content

    account = Account(first.json()["account_id"], "001", "GBP", first.json()["version"], "0.00")
    bank.assert_unchanged(account)


def test_a_retried_batch_replays_its_ok_items_and_judges_failed_ones_afresh(
    bank: Bank, http: httpx.Client
) -> None:
    account = bank.open_account()
    subject, key = f"teller-{uuid.uuid4()}", f"batch-{uuid.uuid4()}"
    headers = {**_teller(bank, subject), "Idempotency-Key": key}
    own_id = str(uuid.uuid4())
    items = [
        {"type": "deposit", "account_id": account.account_id, "amount": "10.00", "currency": "GBP"},
        {
            "type": "withdrawal",
            "account_id": account.account_id,
            "amount": "25.00",
            "currency": "GBP",
        },
        {
            "type": "deposit",
            "account_id": account.account_id,
            "amount": "1.00",
            "currency": "GBP",
            "transaction_id": own_id,
        },
    ]
    first = http.post("/v1/batches", json={"items": items}, headers=headers)
    assert first.status_code == 200, first.text
    results = first.json()["results"]
    assert [r["status"] for r in results] == ["ok", "error", "ok"], results
    assert results[1]["code"] == "insufficient_funds"
    assert results[0]["transaction_id"] == str(uuid5(NAMESPACE, f"{subject}:{key}:0"))
    assert results[2]["transaction_id"] == own_id, "an item's own id wins over the batch key"
    assert not any(r.get("replayed") for r in results)
    assert results[2]["balance"] == "11.00"
    account.version, account.balance = results[2]["version"], "11.00"
    bank.deposit(account, "20.00")

    retried = http.post("/v1/batches", json={"items": items}, headers=headers)
    assert retried.status_code == 200, retried.text
    again = retried.json()["results"]
    assert [r["status"] for r in again] == ["ok", "ok", "ok"], again
    assert again[0] == {**results[0], "replayed": True}
    assert again[2] == {**results[2], "replayed": True}
    assert "replayed" not in again[1]
    assert again[1]["transaction_id"] == str(uuid5(NAMESPACE, f"{subject}:{key}:1"))
    assert again[1]["balance"] == "6.00"
    assert again[1]["version"] == account.version + 1
    account.version, account.balance = again[1]["version"], again[1]["balance"]
    bank.assert_unchanged(account)


def test_a_repeated_id_within_one_batch_is_applied_once(bank: Bank, http: httpx.Client) -> None:
    account = bank.open_account()
    transaction_id = str(uuid.uuid4())
    item = {
        "type": "deposit",
        "account_id": account.account_id,
        "amount": "1.00",
        "currency": "GBP",
        "transaction_id": transaction_id,
    }
    conflicting = {**item, "amount": "2.00"}
    response = http.post(
        "/v1/batches", json={"items": [item, item, conflicting]}, headers=bank.teller()
    )
    assert response.status_code == 200, response.text
    results = response.json()["results"]
    assert [r["status"] for r in results] == ["ok", "ok", "error"], results
    assert results[1]["replayed"] is True
    assert results[1]["balance"] == results[0]["balance"] == "1.00"
    assert results[2]["code"] == "transaction_conflict"
    account.version, account.balance = results[0]["version"], "1.00"
    bank.assert_unchanged(account)


def _submit_concurrently(
    url: str, body: dict[str, Any], headers: dict[str, str]
) -> list[httpx.Response]:
    """The same request from CONCURRENT_SUBMISSIONS threads at once, each its own client."""
    barrier = threading.Barrier(CONCURRENT_SUBMISSIONS)
    outcomes: list[httpx.Response | BaseException | None] = [None] * CONCURRENT_SUBMISSIONS

    def submit(index: int) -> None:
        try:
            with httpx.Client(timeout=HTTP_TIMEOUT_S) as client:
                barrier.wait(timeout=HTTP_TIMEOUT_S)
                outcomes[index] = client.post(url, json=body, headers=headers)
        except BaseException as error:
            outcomes[index] = error

    threads = [threading.Thread(target=submit, args=(i,)) for i in range(CONCURRENT_SUBMISSIONS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(HTTP_TIMEOUT_S * 2)
    replies = [outcome for outcome in outcomes if isinstance(outcome, httpx.Response)]
    assert len(replies) == CONCURRENT_SUBMISSIONS, outcomes
    return replies


def test_concurrent_duplicates_of_one_deposit_are_booked_once(
    bank: Bank, command_api: ApiServer
) -> None:
    # A race is a matter of timing: several rounds, each a fresh account and id.
    for _ in range(CONCURRENT_ROUNDS):
        account = bank.open_account()
        body = {"amount": "9.99", "currency": "GBP", "transaction_id": str(uuid.uuid4())}
        url = f"{command_api.url}/v1/accounts/{account.account_id}/deposits"
        replies = _submit_concurrently(url, body, bank.teller())
        statuses = [(r.status_code, r.text) for r in replies if r.status_code != 201]
        assert not statuses, statuses
        assert len({r.content for r in replies}) == 1, {r.content for r in replies}
        originals = [r for r in replies if r.headers.get(REPLAYED) != "true"]
        assert len(originals) == 1, "one submission booked the deposit; the rest replayed it"
        reply = replies[0].json()
        assert (reply["version"], reply["balance"]) == (account.version + 1, "9.99")
        account.version, account.balance = reply["version"], reply["balance"]
        bank.assert_unchanged(account)


def test_concurrent_distinct_deposits_to_one_account_are_each_booked_once(
    bank: Bank, command_api: ApiServer
) -> None:
    """Losing a version race is no outage: the ledger judges the loser again (201, not 503)."""
    for _ in range(CONCURRENT_ROUNDS):
        account = bank.open_account()
        url = f"{command_api.url}/v1/accounts/{account.account_id}/deposits"
        replies = _submit_concurrently(url, {"amount": "1.00", "currency": "GBP"}, bank.teller())
        statuses = [(r.status_code, r.text) for r in replies if r.status_code != 201]
        assert not statuses, statuses
        versions = sorted(r.json()["version"] for r in replies)
        assert versions == list(
            range(account.version + 1, account.version + CONCURRENT_SUBMISSIONS + 1)
        )
        assert len({r.json()["transaction_id"] for r in replies}) == CONCURRENT_SUBMISSIONS
        account.version, account.balance = versions[-1], f"{CONCURRENT_SUBMISSIONS}.00"
        bank.assert_unchanged(account)


# --- restart ----------------------------------------------------------------------------


@pytest.fixture
def own_server(settings_factory: Any, tmp_path: Path) -> Iterator[list[ApiServer]]:
    """A command API of this test's own, on a fresh database; the list holds each start."""
    servers = [start_command_api(settings_factory(), tmp_path / "logs")]
    yield servers
    for server in servers:
        server.stop()


def test_a_killed_and_restarted_server_replays_identically_and_books_once(
    own_server: list[ApiServer], redis_client: redis.Redis, tmp_path: Path
) -> None:
    first_server = own_server[0]
    settings = first_server.settings
    with httpx.Client(base_url=first_server.url, timeout=HTTP_TIMEOUT_S) as client:
        bank = Bank(client, settings)
        account = bank.open_account()
        transaction_id = str(uuid.uuid4())
        original = _post_deposit(
            client, bank.teller(), account, amount="12.34", transaction_id=transaction_id
        )
        assert original.status_code == 201, original.text

    first_server.kill()
    assert first_server.process.returncode == -9
    # Replies live in PostgreSQL with the events; Redis is only a cache. Forget it.
    redis_client.delete(f"{settings.redis_key_prefix}reply:{transaction_id}")

    second_server = start_command_api(settings, tmp_path / "logs")
    own_server.append(second_server)
    with httpx.Client(base_url=second_server.url, timeout=HTTP_TIMEOUT_S) as client:
        bank = Bank(client, settings)
        replay = _post_deposit(
            client, bank.teller(), account, amount="12.34", transaction_id=transaction_id
        )
        assert replay.status_code == 201, replay.text
        assert replay.headers[REPLAYED] == "true"
        assert replay.content == original.content
        account.version, account.balance = original.json()["version"], "12.34"
        bank.assert_unchanged(account)


def test_tokens_need_no_server_state_to_survive_a_restart(
    own_server: list[ApiServer], tmp_path: Path
) -> None:
    """A token issued before a restart still works after it (same keys, no sessions)."""
    first_server = own_server[0]
    token = make_token(first_server.settings, "admin", subject=f"restart-{uuid.uuid4()}")
    first_server.kill()
    second_server = start_command_api(first_server.settings, tmp_path / "logs")
    own_server.append(second_server)
    body = {"owner": f"restart-{uuid.uuid4()}", "branch": "001", "currency": "GBP"}
    response = httpx.post(
        f"{second_server.url}/v1/accounts", json=body, headers=bearer(token), timeout=HTTP_TIMEOUT_S
    )
    assert response.status_code == 201, response.text
