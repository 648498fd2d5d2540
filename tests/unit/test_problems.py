"""The error table and the problem reply. No server: plain Starlette Response objects."""

from __future__ import annotations

import json

import pytest

from interfaces.api.http.problems import (
    DEFAULT_PROBLEM_CODES,
    PROBLEM_MEDIA_TYPE,
    PROBLEM_STATUS,
    problem_response,
    problem_responses,
)

# the API contract's "Errors" table, written out by hand.
CONTRACT_STATUS = {
    "unauthorized": 401,
    "forbidden": 403,
    "account_not_found": 404,
    "case_not_found": 404,
    "alert_not_found": 404,
    "watchlist_entry_not_found": 404,
    "hold_not_found": 404,
    "transaction_not_found": 404,
    "suppression_not_found": 404,
    "insufficient_funds": 409,
    "balance_limit_exceeded": 409,
    "account_frozen": 409,
    "account_closed": 409,
    "account_not_frozen": 409,
    "account_not_empty": 409,
    "transaction_conflict": 409,
    "invalid_transition": 409,
    "already_listed": 409,
    "hold_not_pending": 409,
    "hold_expired": 409,
    "hold_under_review": 409,
    "account_has_holds": 409,
    "reversal_exceeds_original": 409,
    "not_reversible": 409,
    "case_already_assigned": 409,
    "payload_too_large": 413,
    "unsupported_media_type": 415,
    "validation_error": 422,
    "invalid_amount": 422,
    "currency_mismatch": 422,
    "unknown_currency": 422,
    "rate_limited": 429,
    "projection_lagging": 503,
    "unavailable": 503,
}
# What the HTTP layer answers on its own (unknown route, wrong method, our bugs).
HTTP_LAYER_STATUS = {
    "bad_request": 400,
    "not_found": 404,
    "method_not_allowed": 405,
    "internal_error": 500,
}
# Codes beyond the contract's table: the store holds an event the server cannot decode.
EXTENSION_STATUS = {"event_unreadable": 500}


def test_the_problem_table_is_the_contract_table_plus_the_http_layer_codes() -> None:
    assert dict(PROBLEM_STATUS) == {**CONTRACT_STATUS, **HTTP_LAYER_STATUS, **EXTENSION_STATUS}


def test_a_problem_reply_is_problem_json_with_the_contract_fields() -> None:
    response = problem_response("insufficient_funds", "balance 10.00, asked 20.00")

    assert response.status_code == 409
    assert response.media_type == PROBLEM_MEDIA_TYPE
    assert response.headers["content-type"] == PROBLEM_MEDIA_TYPE
    assert json.loads(bytes(response.body)) == {
        "type": "/problems/insufficient_funds",
        "title": "Insufficient funds",
        "status": 409,
        "detail": "balance 10.00, asked 20.00",
        "code": "insufficient_funds",
    }


def test_a_problem_reply_keeps_an_explicit_title_and_headers() -> None:
    response = problem_response(
        "unavailable", "store busy", title="Try later", headers={"Retry-After": "1"}
    )

    body = json.loads(bytes(response.body))
    assert response.status_code == 503
    assert body["title"] == "Try later"
    assert response.headers["retry-after"] == "1"


def test_a_validation_problem_lists_its_fields() -> None:
    errors = [{"field": "body.amount", "message": "must have exactly 2 decimal places"}]

    response = problem_response("validation_error", "1 invalid field(s)", errors=errors)

    body = json.loads(bytes(response.body))

    assert body["status"] == 422
    assert body["errors"] == errors


def test_a_validation_problem_always_carries_an_errors_list() -> None:
    body = json.loads(bytes(problem_response("validation_error", "malformed").body))

    assert body["errors"] == []


def test_problems_other_than_validation_carry_no_errors_list() -> None:
    body = json.loads(bytes(problem_response("forbidden", "no").body))

    assert "errors" not in body


def test_a_problem_with_a_code_missing_from_the_table_is_a_bug() -> None:
    with pytest.raises(KeyError):
        problem_response("made_up", "nope")


def test_route_responses_include_the_defaults_and_group_codes_by_status() -> None:
    responses = problem_responses("insufficient_funds", "account_frozen", "account_not_found")

    expected_statuses = {PROBLEM_STATUS[code] for code in DEFAULT_PROBLEM_CODES} | {409, 404}
    assert set(responses) == expected_statuses
    assert "`insufficient_funds`" in responses[409]["description"]
    assert "`account_frozen`" in responses[409]["description"]
    schema = responses[409]["content"][PROBLEM_MEDIA_TYPE]["schema"]
    assert schema == {"$ref": "#/components/schemas/Problem"}


def test_route_responses_without_defaults_list_only_the_given_codes() -> None:
    assert set(problem_responses("account_not_found", defaults=False)) == {404}
