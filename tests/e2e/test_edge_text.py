"""The edge refuses text and bodies the record cannot hold, over real HTTP: each refusal
is a 422 (415 for a body that is not JSON, 401 for a token whose subject is not text)
naming the field, and the account is probed afterwards to show nothing changed."""

from __future__ import annotations

import json
import unicodedata
import uuid
from typing import Any

import httpx
import pytest

from tests.e2e.conftest import Bank, TokenMaker, assert_problem, bearer
from tests.e2e.query_support import QueryEnv

pytestmark = pytest.mark.e2e


def deposit_raw(
    http: httpx.Client, bank: Bank, account_id: str, content: str | bytes, **headers: str
) -> httpx.Response:
    return http.post(
        f"/v1/accounts/{account_id}/deposits",
        content=content,
        headers={**bank.teller(), "Content-Type": "application/json", **headers},
    )


def field_errors(response: httpx.Response) -> dict[str, str]:
    body: dict[str, Any] = response.json()
    return {error["field"]: error["message"] for error in body["errors"]}


@pytest.mark.parametrize(
    ("reference", "says"),
    [
        ("a\x00b", "control character (U+0000)"),
        ("pay\u202eevil", "bidirectional control character (U+202E)"),
        ("\u200b\u200b", "empty or invisible"),
        ("line\nbreak", "line break (U+000A)"),
        ("x\ud800", "unicode string"),  # pydantic refuses lone surrogates itself
        ("\U0001f600" * 140, "bytes of UTF-8"),
    ],
)
def test_a_deposit_reference_the_record_cannot_hold_is_refused_and_changes_nothing(
    http: httpx.Client, bank: Bank, reference: str, says: str
) -> None:
    account = bank.funded_account()
    body = {"amount": "1.00", "currency": "GBP", "reference": reference}

    # ensure_ascii: a lone surrogate can only travel as a JSON escape.
    response = deposit_raw(http, bank, account.account_id, json.dumps(body))

    assert_problem(response, 422, "validation_error")
    assert says in field_errors(response)["body.reference"]
    bank.assert_unchanged(account)


@pytest.mark.parametrize("owner", ["Ad\x00a", "\u202eAda", "\u200d\ufeff", "   "])
def test_an_owner_the_record_cannot_hold_is_refused(
    http: httpx.Client, bank: Bank, owner: str
) -> None:
    body = {"owner": owner, "branch": "001", "currency": "GBP"}
    response = http.post(
        "/v1/accounts",
        content=json.dumps(body),
        headers={**bank.admin(), "Content-Type": "application/json"},
    )
    assert_problem(response, 422, "validation_error")
    assert "body.owner" in field_errors(response)


def test_owner_and_reference_are_stored_as_nfc_and_a_decomposed_retry_replays(
    http: httpx.Client, bank: Bank
) -> None:
    account = bank.funded_account()
    transaction_id = str(uuid.uuid4())
    composed = "Caf\u00e9 Zo\u00eb"
    body = {"amount": "2.00", "currency": "GBP", "transaction_id": transaction_id}
    first = deposit_raw(
        http, bank, account.account_id, json.dumps({**body, "reference": f"  {composed} "})
    )
    assert first.status_code == 201, first.text

    decomposed = unicodedata.normalize("NFD", composed)
    assert decomposed != composed
    retry = deposit_raw(
        http, bank, account.account_id, json.dumps({**body, "reference": decomposed})
    )

    assert retry.status_code == 201, retry.text
    assert retry.headers.get("Idempotent-Replayed") == "true"
    assert retry.json() == first.json()


def test_a_body_with_a_key_twice_is_refused_and_changes_nothing(
    http: httpx.Client, bank: Bank
) -> None:
    account = bank.funded_account()
    content = '{"amount": "1.00", "currency": "GBP", "amount": "9000.00"}'

    response = deposit_raw(http, bank, account.account_id, content)

    problem = assert_problem(response, 422, "validation_error")
    assert 'the key "amount" appears more than once' in problem["detail"]
    bank.assert_unchanged(account)


def test_a_batch_item_with_a_key_twice_refuses_the_whole_batch(
    http: httpx.Client, bank: Bank
) -> None:
    account = bank.funded_account()
    item = (
        f'{{"type": "deposit", "account_id": "{account.account_id}", "amount": "1.00", '
        '"currency": "GBP", "reference": "a", "reference": "b"}'
    )
    response = http.post(
        "/v1/batches",
        content=f'{{"items": [{item}]}}',
        headers={**bank.teller(), "Content-Type": "application/json"},
    )
    problem = assert_problem(response, 422, "validation_error")
    assert '"reference"' in problem["detail"]
    bank.assert_unchanged(account)


def test_a_body_not_sent_as_json_is_415_naming_the_header(http: httpx.Client, bank: Bank) -> None:
    account = bank.funded_account()
    body = json.dumps({"amount": "1.00", "currency": "GBP"})
    for headers in ({"Content-Type": "text/plain"}, {"Content-Type": ""}):
        response = http.post(
            f"/v1/accounts/{account.account_id}/deposits",
            content=body,
            headers={**bank.teller(), **headers},
        )
        problem = assert_problem(response, 415, "unsupported_media_type")
        assert "Content-Type: application/json" in problem["detail"]
    bank.assert_unchanged(account)


def test_a_body_with_two_content_types_is_415_whichever_comes_first(
    http: httpx.Client, bank: Bank
) -> None:
    """Which of two to believe would be a guess, and the layers that read headers guess
    differently (the first, the last): refused in either order, even when both say JSON,
    on the money routes' short way and on FastAPI's."""
    account = bank.funded_account()
    deposit = {"amount": "1.00", "currency": "GBP"}
    bodies = {
        f"/v1/accounts/{account.account_id}/deposits": deposit,
        "/v1/batches": {
            "items": [{"type": "deposit", "account_id": account.account_id, **deposit}]
        },
        "/v1/accounts": {"owner": "Two Types", "branch": "001", "currency": "GBP"},
    }
    pairs = [
        ("application/json", "text/plain"),
        ("text/plain", "application/json"),
        ("application/json", "application/json"),
    ]
    for path, body in bodies.items():
        for pair in pairs:
            headers = [*bank.teller().items(), *(("Content-Type", value) for value in pair)]
            response = http.post(path, content=json.dumps(body), headers=headers)
            problem = assert_problem(response, 415, "unsupported_media_type")
            assert "more than once" in problem["detail"], (path, pair)
    bank.assert_unchanged(account)


def test_a_body_nested_thousands_deep_is_refused_not_an_error(
    http: httpx.Client, bank: Bank
) -> None:
    account = bank.funded_account()
    for nested in ("[" * 100_000 + "]" * 100_000, '{"a":' * 5_000 + "1" + "}" * 5_000):
        response = deposit_raw(http, bank, account.account_id, nested)
        problem = assert_problem(response, 422, "validation_error")
        assert "nested too deeply" in problem["detail"]
    bank.assert_unchanged(account)


@pytest.mark.parametrize(
    "number",
    ["9" * 5_000, "-" + "9" * 4_301, "1e999", "-1e999", "1.5e400"],
    ids=["int-5000-digits", "int-minus-4301-digits", "1e999", "minus-1e999", "1.5e400"],
)
def test_a_number_too_big_to_read_is_refused_not_an_error(
    http: httpx.Client, bank: Bank, number: str
) -> None:
    """Valid JSON, but past what the interpreter reads: more digits than Python converts
    to an int, or a float beyond the double range (read as infinity otherwise)."""
    account = bank.funded_account()
    bodies = {
        f"/v1/accounts/{account.account_id}/deposits": (
            f'{{"amount": {number}, "currency": "GBP"}}'
        ),
        "/v1/transfers": (
            f'{{"from_account_id": "{account.account_id}", "to_account_id": "{uuid.uuid4()}", '
            f'"amount": "1.00", "currency": "GBP", "n": {number}}}'
        ),
        "/v1/batches": f'{{"items": [], "n": {number}}}',
    }
    for path, content in bodies.items():
        response = http.post(
            path,
            content=content,
            headers={**bank.teller(), "Content-Type": "application/json"},
        )
        problem = assert_problem(response, 422, "validation_error")
        assert problem["detail"] == "the body holds a number too big to read", path
        assert field_errors(response) == {"body": problem["detail"]}
    bank.assert_unchanged(account)


def test_malformed_json_says_where_it_broke(http: httpx.Client, bank: Bank) -> None:
    account = bank.funded_account()
    response = deposit_raw(http, bank, account.account_id, '{"amount": "1.00" "currency"}')
    problem = assert_problem(response, 422, "validation_error")
    assert "not valid JSON" in problem["detail"]
    assert "column 19" in problem["detail"]
    assert field_errors(response) == {"body": problem["detail"]}
    bank.assert_unchanged(account)


@pytest.mark.parametrize("subject", ["alice\x00", "\u202ealice", " alice", "Zoe\u0308"])
def test_a_token_whose_subject_the_record_cannot_hold_is_refused(
    http: httpx.Client, bank: Bank, token: TokenMaker, subject: str
) -> None:
    account = bank.funded_account()
    response = http.post(
        f"/v1/accounts/{account.account_id}/deposits",
        json={"amount": "1.00", "currency": "GBP"},
        headers=bearer(token("teller", subject=subject)),
    )
    assert_problem(response, 401, "unauthorized")
    bank.assert_unchanged(account)


@pytest.mark.parametrize(
    ("path", "role"),
    [
        ("/v1/cases?assignee=a%00b", "compliance"),
        ("/v1/cases?rule=%E2%80%AE", "compliance"),
        ("/v1/audit/events?actor=%00", "auditor"),
    ],
)
def test_a_query_filter_the_store_cannot_compare_is_refused_not_an_error(
    query_env: QueryEnv, path: str, role: str
) -> None:
    response = query_env.get(path, role)
    assert_problem(response, 422, "validation_error")
