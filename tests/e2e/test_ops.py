"""What operators and client generators rely on: probes, metrics, correlation ids and
the OpenAPI document, over real HTTP."""

from __future__ import annotations

import re
import uuid
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from application.ledger import Ledger
from tests.e2e.conftest import PROBLEM_MEDIA_TYPE, Bank, assert_problem

pytestmark = pytest.mark.e2e

CORRELATION = "X-Correlation-ID"
UUID_PATTERN = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")


def _samples(http: httpx.Client, metric: str) -> dict[frozenset[tuple[str, str]], float]:
    """Each sample of a counter (`<metric>_total`), by its labels."""
    response = http.get("/metrics")
    assert response.status_code == 200, response.text
    found: dict[frozenset[tuple[str, str]], float] = {}
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            if sample.name == metric:
                found[frozenset(sample.labels.items())] = sample.value
    return found


def _value(samples: dict[frozenset[tuple[str, str]], float], **labels: str) -> float:
    return samples.get(frozenset(labels.items()), 0.0)


# --- health ---------------------------------------------------------------------------


def test_liveness_answers_without_a_token(http: httpx.Client) -> None:
    response = http.get("/health/live")
    assert response.status_code == 200
    assert response.json() == {"status": "ok"}


def test_readiness_reports_postgres_ok(http: httpx.Client) -> None:
    response = http.get("/health/ready")
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["status"] == "ok", body
    assert body["checks"]["postgres"] == "ok"
    assert body["checks"]["redis"] == "ok"


# --- metrics --------------------------------------------------------------------------


def test_metrics_count_requests_and_command_outcomes(bank: Bank, http: httpx.Client) -> None:
    account = bank.open_account()
    deposits_route = "/v1/accounts/{account_id}/deposits"
    withdrawals_route = "/v1/accounts/{account_id}/withdrawals"
    requests_before = _samples(http, "vigil_http_requests_total")
    outcomes_before = _samples(http, "vigil_command_outcomes_total")
    committed_before = _samples(http, "vigil_commit_commands_total")

    bank.deposit(account, "5.00")
    refused = http.post(
        f"/v1/accounts/{account.account_id}/withdrawals",
        json={"amount": "6.00", "currency": "GBP"},
        headers=bank.teller(),
    )
    assert_problem(refused, 409, "insufficient_funds")
    item = {
        "type": "deposit",
        "account_id": account.account_id,
        "amount": "1.00",
        "currency": "GBP",
    }
    batch = http.post(
        "/v1/batches", json={"items": [item, {**item, "amount": "0"}]}, headers=bank.teller()
    )
    assert batch.status_code == 200, batch.text

    requests_after = _samples(http, "vigil_http_requests_total")
    outcomes_after = _samples(http, "vigil_command_outcomes_total")
    committed_after = _samples(http, "vigil_commit_commands_total")

    def request_delta(route: str, status: str) -> float:
        labels = {"app": "command", "method": "POST", "route": route, "status": status}
        return _value(requests_after, **labels) - _value(requests_before, **labels)

    def outcome_delta(command: str, code: str) -> float:
        labels = {"command": command, "code": code}
        return _value(outcomes_after, **labels) - _value(outcomes_before, **labels)

    assert request_delta(deposits_route, "201") == 1
    assert request_delta(withdrawals_route, "409") == 1
    assert request_delta("/v1/batches", "200") == 1
    assert outcome_delta("account.deposit", "ok") == 1
    assert outcome_delta("account.withdraw", "insufficient_funds") == 1
    assert outcome_delta("batch.item", "ok") == 1
    assert outcome_delta("batch.item", "invalid_amount") == 1
    # Judged by the group committer: the deposit, the refused withdrawal, the valid item.
    assert _value(committed_after) - _value(committed_before) == 3


def test_metrics_label_routes_by_template_not_by_raw_path(bank: Bank, http: httpx.Client) -> None:
    account = bank.open_account()
    bank.deposit(account, "1.00")
    http.get(f"/v1/no-such-route/{uuid.uuid4()}")
    text = http.get("/metrics").text
    assert "vigil_http_requests_total" in text
    assert "vigil_command_outcomes_total" in text
    assert account.account_id not in text, "raw ids in labels would grow metrics without bound"
    assert 'route="unmatched"' in text


# --- correlation ids --------------------------------------------------------------------


def test_a_given_correlation_id_is_echoed_and_recorded_on_the_event(
    bank: Bank, http: httpx.Client, event_store: Ledger
) -> None:
    account = bank.open_account()
    correlation_id = f"e2e-{uuid.uuid4()}"
    response = http.post(
        f"/v1/accounts/{account.account_id}/deposits",
        json={"amount": "1.00", "currency": "GBP"},
        headers={**bank.teller(), CORRELATION: correlation_id},
    )
    assert response.status_code == 201, response.text
    assert response.headers[CORRELATION] == correlation_id
    events = list(event_store.events.get(uuid.UUID(account.account_id)))
    assert getattr(events[-1], "correlation_id", None) == correlation_id


def test_a_correlation_id_is_generated_when_absent(http: httpx.Client) -> None:
    first = http.get("/health/live")
    second = http.get("/health/live")
    for response in (first, second):
        assert UUID_PATTERN.match(response.headers[CORRELATION]), response.headers
    assert first.headers[CORRELATION] != second.headers[CORRELATION]


@pytest.mark.parametrize(
    "unsafe",
    [
        pytest.param("x" * 129, id="too_long"),
        pytest.param("has spaces in it", id="spaces"),
        pytest.param("<script>", id="markup"),
    ],
)
def test_an_unsafe_correlation_id_is_replaced(http: httpx.Client, unsafe: str) -> None:
    response = http.get("/health/live", headers={CORRELATION: unsafe})
    assert UUID_PATTERN.match(response.headers[CORRELATION]), response.headers


@pytest.mark.parametrize(
    ("method", "path", "status"),
    [
        pytest.param("POST", "/v1/accounts", 401, id="unauthorized"),
        pytest.param("GET", "/v1/no-such-route", 404, id="not_found"),
    ],
)
def test_problem_replies_carry_the_correlation_id_too(
    http: httpx.Client, method: str, path: str, status: int
) -> None:
    correlation_id = f"e2e-{uuid.uuid4()}"
    response = http.request(method, path, json={}, headers={CORRELATION: correlation_id})
    assert response.status_code == status
    assert response.headers[CORRELATION] == correlation_id


# --- OpenAPI ----------------------------------------------------------------------------

# route -> statuses it must document as problems beyond 401, 403 and 422.
EXTRA_PROBLEM_STATUSES: dict[tuple[str, str], set[str]] = {
    ("post", "/v1/accounts"): {"409"},
    ("post", "/v1/accounts/{account_id}/deposits"): {"404", "409"},
    ("post", "/v1/accounts/{account_id}/withdrawals"): {"404", "409"},
    ("post", "/v1/transfers"): {"404", "409"},
    ("post", "/v1/batches"): set(),
    ("post", "/v1/accounts/{account_id}/freeze"): {"404", "409"},
    ("post", "/v1/accounts/{account_id}/unfreeze"): {"404", "409"},
    ("post", "/v1/accounts/{account_id}/close"): {"404", "409"},
    ("post", "/v1/cases/{case_id}/acknowledge"): {"404", "409"},
    ("post", "/v1/cases/{case_id}/assign"): {"404", "409"},
    ("post", "/v1/cases/{case_id}/escalate"): {"404", "409"},
    ("post", "/v1/cases/{case_id}/close"): {"404", "409"},
    ("post", "/v1/cases/{case_id}/comment"): {"404", "409"},
    ("post", "/v1/cases/{case_id}/freeze-account"): {"404", "409"},
    ("post", "/v1/watchlist"): {"404", "409"},
    ("delete", "/v1/watchlist/{account_id}"): {"404"},
    ("post", "/v1/holds"): {"404", "409"},
    ("post", "/v1/holds/{hold_id}/capture"): {"404", "409"},
    ("post", "/v1/holds/{hold_id}/void"): {"404", "409"},
    ("post", "/v1/cases/{case_id}/release"): {"404", "409"},
    ("post", "/v1/cases/{case_id}/reject"): {"404", "409"},
    ("post", "/v1/transactions/{transaction_id}/reversal"): {"404", "409"},
    ("post", "/v1/suppressions"): {"404"},
    ("delete", "/v1/suppressions/{suppression_id}"): {"404"},
}

# Codes each route was seen to produce (test_errors.py, test_input_errors.py), which its
# document must name.
DOCUMENTED_CODES: dict[tuple[str, str], dict[str, set[str]]] = {
    ("post", "/v1/accounts/{account_id}/deposits"): {
        "404": {"account_not_found"},
        "409": {"account_frozen", "account_closed", "transaction_conflict"},
        "422": {"invalid_amount", "currency_mismatch", "unknown_currency", "validation_error"},
    },
    ("post", "/v1/accounts/{account_id}/withdrawals"): {
        "409": {"insufficient_funds", "account_frozen", "account_closed", "transaction_conflict"},
    },
    ("post", "/v1/accounts/{account_id}/freeze"): {"409": {"account_frozen", "account_closed"}},
    ("post", "/v1/accounts/{account_id}/unfreeze"): {
        "409": {"account_not_frozen", "account_closed"}
    },
    ("post", "/v1/accounts/{account_id}/close"): {
        "409": {"account_not_empty", "account_closed", "account_has_holds"}
    },
    ("post", "/v1/accounts"): {"409": {"transaction_conflict"}, "422": {"unknown_currency"}},
    ("post", "/v1/transfers"): {"404": {"account_not_found"}, "409": {"insufficient_funds"}},
    ("post", "/v1/batches"): {"413": {"payload_too_large"}},
    ("post", "/v1/holds"): {"404": {"account_not_found"}, "409": {"insufficient_funds"}},
    ("post", "/v1/holds/{hold_id}/capture"): {
        "404": {"hold_not_found"},
        "409": {"hold_not_pending", "hold_expired", "hold_under_review"},
    },
    ("post", "/v1/holds/{hold_id}/void"): {
        "404": {"hold_not_found"},
        "409": {"hold_not_pending", "hold_under_review"},
    },
    ("post", "/v1/cases/{case_id}/release"): {
        "404": {"case_not_found"},
        "409": {"invalid_transition", "hold_not_pending"},
    },
    ("post", "/v1/cases/{case_id}/reject"): {
        "404": {"case_not_found"},
        "409": {"invalid_transition", "hold_not_pending"},
    },
    ("post", "/v1/suppressions"): {"404": {"account_not_found"}},
    ("delete", "/v1/suppressions/{suppression_id}"): {"404": {"suppression_not_found"}},
    ("post", "/v1/transactions/{transaction_id}/reversal"): {
        "404": {"transaction_not_found"},
        "409": {"reversal_exceeds_original", "not_reversible"},
    },
}


@pytest.fixture(scope="module")
def openapi(http: httpx.Client) -> dict[str, Any]:
    response = http.get("/openapi.json")
    assert response.status_code == 200, response.text
    document: dict[str, Any] = response.json()
    return document


def test_the_openapi_document_lists_every_command_route(openapi: dict[str, Any]) -> None:
    operations = {
        (method, path)
        for path, item in openapi["paths"].items()
        if path.startswith("/v1/")
        for method in item
    }
    assert operations == set(EXTRA_PROBLEM_STATUSES)


@pytest.mark.parametrize(("method", "path"), list(EXTRA_PROBLEM_STATUSES))
def test_each_command_route_documents_its_problems_as_problem_json(
    openapi: dict[str, Any], method: str, path: str
) -> None:
    responses = openapi["paths"][path][method]["responses"]
    for status in {"401", "403", "422"} | EXTRA_PROBLEM_STATUSES[(method, path)]:
        assert status in responses, f"{method.upper()} {path} does not document {status}"
        content = responses[status].get("content", {})
        assert PROBLEM_MEDIA_TYPE in content, (status, content)
        schema = content[PROBLEM_MEDIA_TYPE]["schema"]
        assert schema == {"$ref": "#/components/schemas/Problem"}, schema
    for status, codes in DOCUMENTED_CODES.get((method, path), {}).items():
        description = responses[status]["description"]
        assert all(code in description for code in codes), (status, description, codes)


def test_the_problem_schema_has_the_contract_fields(openapi: dict[str, Any]) -> None:
    problem = openapi["components"]["schemas"]["Problem"]
    assert {"type", "title", "status", "detail", "code"} <= set(problem["required"])
    assert "errors" in problem["properties"]


def test_every_command_route_declares_bearer_auth(openapi: dict[str, Any]) -> None:
    schemes = openapi["components"]["securitySchemes"]
    assert any(s.get("scheme", "").lower() == "bearer" for s in schemes.values()), schemes
    for path, item in openapi["paths"].items():
        if path.startswith("/v1/"):
            for method, operation in item.items():
                assert operation.get("security"), f"{method.upper()} {path} declares no security"
