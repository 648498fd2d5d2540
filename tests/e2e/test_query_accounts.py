"""The query API over real HTTP: who may read what, one account, and the account and
statement lists (pagination, filters, validation).

Read-model rows are written with SQL before the server starts (tests/e2e/query_support.py).
"""

from __future__ import annotations

import uuid
from typing import Any

import pytest

from tests.e2e.conftest import assert_problem
from tests.e2e.query_support import ALLOWED, CALLERS, QueryEnv, route_path

pytestmark = pytest.mark.e2e


# --- RBAC -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("route", "caller"),
    [(route, caller) for route in ALLOWED for caller in CALLERS],
)
def test_each_query_route_answers_exactly_the_roles_the_contract_allows(
    query_env: QueryEnv, route: str, caller: str
) -> None:
    response = query_env.get(route_path(query_env, route), caller)
    if caller in ALLOWED[route]:
        assert response.status_code == 200, response.text
    else:
        assert_problem(response, 403, "forbidden")


@pytest.mark.parametrize("route", list(ALLOWED))
def test_each_query_route_refuses_a_request_without_a_token(
    query_env: QueryEnv, route: str
) -> None:
    response = query_env.client.get(route_path(query_env, route))
    assert_problem(response, 401, "unauthorized")


def test_a_teller_sees_another_branch_account_list_or_statement_as_forbidden(
    query_env: QueryEnv,
) -> None:
    other = query_env.seed.by_branch["002"][0]
    for path in (f"/v1/accounts/{other}", f"/v1/accounts/{other}/transactions"):
        assert_problem(query_env.get(path, "teller_001"), 403, "forbidden")
        assert query_env.get(path, "teller_002").status_code == 200
    assert_problem(query_env.get("/v1/accounts", "teller_001", branch="002"), 403, "forbidden")


def test_a_teller_list_without_a_branch_filter_shows_only_their_branch(
    query_env: QueryEnv,
) -> None:
    response = query_env.get("/v1/accounts", "teller_002")
    assert response.status_code == 200, response.text
    items = response.json()["items"]
    assert {item["branch"] for item in items} == {"002"}
    assert sorted(item["account_id"] for item in items) == sorted(query_env.seed.by_branch["002"])


# --- One account ----------------------------------------------------------------------


def test_an_account_reads_with_decimal_amounts_utc_times_and_its_projected_version(
    query_env: QueryEnv,
) -> None:
    response = query_env.get(f"/v1/accounts/{query_env.seed.main}", "viewer")
    assert response.status_code == 200, response.text
    body = response.json()
    assert body == {
        "account_id": query_env.seed.main,
        "owner": f"owner-{query_env.seed.main[:8]}",
        "branch": "001",
        "currency": "GBP",
        "status": "open",
        "balance": "100.00",
        "available_balance": "150.00",
        "overdraft_limit": "50.00",
        "projected_version": 7,
        "opened_at": "2026-01-05T09:00:00.000000Z",
        "updated_at": "2026-01-06T14:00:00.000000Z",
        "last_transaction_at": "2026-01-06T12:00:00.000000Z",
    }


def test_amounts_carry_each_currency_exponent(query_env: QueryEnv) -> None:
    bhd = query_env.seed.by_branch["002"][1]
    assert query_env.get(f"/v1/accounts/{bhd}").json()["balance"] == "1.250"
    jpy = query_env.seed.by_branch["001"][2]
    assert query_env.get(f"/v1/accounts/{jpy}").json()["balance"] == "0"


def test_an_unknown_account_and_its_statement_are_not_found(query_env: QueryEnv) -> None:
    unknown = uuid.uuid4()
    assert_problem(query_env.get(f"/v1/accounts/{unknown}"), 404, "account_not_found")
    assert_problem(query_env.get(f"/v1/accounts/{unknown}/transactions"), 404, "account_not_found")


# --- Lists: pagination, filters, validation -------------------------------------------


def _all_pages(env: QueryEnv, path: str, **params: Any) -> list[list[dict[str, Any]]]:
    pages: list[list[dict[str, Any]]] = []
    cursor: str | None = None
    for _ in range(10):
        query = dict(params, **({"cursor": cursor} if cursor else {}))
        response = env.get(path, **query)
        assert response.status_code == 200, response.text
        body = response.json()
        pages.append(body["items"])
        cursor = body["next_cursor"]
        if cursor is None:
            return pages
    pytest.fail("pagination did not end")


def test_accounts_page_through_in_three_pages_without_duplicates(query_env: QueryEnv) -> None:
    pages = _all_pages(query_env, "/v1/accounts", branch="003", limit=2)
    assert [len(page) for page in pages] == [2, 2, 1]
    ids = [item["account_id"] for page in pages for item in page]
    assert len(set(ids)) == 5
    assert sorted(ids) == sorted(query_env.seed.by_branch["003"])


def test_statement_pages_through_newest_first_without_duplicates(query_env: QueryEnv) -> None:
    pages = _all_pages(query_env, f"/v1/accounts/{query_env.seed.main}/transactions", limit=2)
    assert [len(page) for page in pages] == [2, 2, 1]
    versions = [item["version"] for page in pages for item in page]
    assert versions == [6, 5, 4, 3, 2]


def test_a_statement_line_carries_the_contract_fields(query_env: QueryEnv) -> None:
    response = query_env.get(f"/v1/accounts/{query_env.seed.main}/transactions", limit=1)
    (line,) = response.json()["items"]
    seeded = query_env.seed.lines[-1]
    assert line == {
        "transaction_id": seeded["transaction_id"],
        "account_id": query_env.seed.main,
        "counterparty_account_id": query_env.seed.by_branch["002"][0],
        "direction": "debit",
        "kind": "transfer",
        "amount": "30.00",
        "balance_after": "100.00",
        "currency": "GBP",
        "reference": "ref-4",
        "channel": None,
        "actor": {"subject": "teller-e2e", "role": "teller"},
        "timestamp": "2026-01-06T12:00:00.000000Z",
        "correlation_id": "corr-4",
        "version": 6,
        "reverses": None,
        "reversed_amount": "0.00",
    }


@pytest.mark.parametrize(
    ("params", "expected_branches", "count"),
    [
        ({"status": "frozen"}, {"001"}, 1),
        ({"status": "closed"}, {"001"}, 1),
        ({"currency": "BHD"}, {"002"}, 1),
        ({"branch": "002"}, {"002"}, 2),
        ({"branch": "001", "currency": "GBP", "status": "open"}, {"001"}, 1),
        ({"branch": "004"}, set(), 0),
    ],
)
def test_accounts_filter_by_status_currency_and_branch(
    query_env: QueryEnv, params: dict[str, str], expected_branches: set[str], count: int
) -> None:
    response = query_env.get("/v1/accounts", **params)
    assert response.status_code == 200, response.text
    items = response.json()["items"]
    assert len(items) == count
    assert {item["branch"] for item in items} == expected_branches
    for name in ("status", "currency"):
        if name in params:
            assert {item[name] for item in items} == {params[name]}


@pytest.mark.parametrize(
    ("params", "versions"),
    [
        ({"direction": "debit"}, [6, 4]),
        ({"direction": "credit"}, [5, 3, 2]),
        # Lines are at 08:00 + version-2 hours; `from` inclusive, `to` exclusive.
        ({"from": "2026-01-06T09:00:00Z", "to": "2026-01-06T11:00:00Z"}, [4, 3]),
        ({"from": "2026-01-06T10:00:00+01:00"}, [6, 5, 4, 3]),
        ({"to": "2026-01-06T09:00:00Z", "direction": "credit"}, [2]),
    ],
)
def test_statement_filters_by_direction_and_time_range(
    query_env: QueryEnv, params: dict[str, str], versions: list[int]
) -> None:
    response = query_env.get(f"/v1/accounts/{query_env.seed.main}/transactions", **params)
    assert response.status_code == 200, response.text
    assert [item["version"] for item in response.json()["items"]] == versions


def _statement_cursor(env: QueryEnv) -> str:
    response = env.get(f"/v1/accounts/{env.seed.main}/transactions", limit=1)
    cursor: str = response.json()["next_cursor"]
    return cursor


@pytest.mark.parametrize(
    ("path", "params"),
    [
        ("/v1/accounts/not-a-uuid", {}),
        ("/v1/accounts", {"limit": "501"}),
        ("/v1/accounts", {"limit": "0"}),
        ("/v1/accounts", {"status": "dormant"}),
        ("/v1/accounts", {"currency": "XYZ"}),
        ("/v1/accounts", {"currency": "gbp"}),
        ("/v1/accounts", {"branch": "../001"}),
        ("/v1/accounts", {"cursor": "!!!"}),
        ("/v1/accounts", {"cursor": "bm90LWpzb24"}),
        ("/v1/accounts", {"cursor": "STATEMENT"}),
        ("MAIN/transactions", {"direction": "sideways"}),
        ("MAIN/transactions", {"from": "2026-01-06T09:00:00"}),
        ("MAIN/transactions", {"from": "yesterday"}),
        ("MAIN/transactions", {"from": "2026-01-07T00:00:00Z", "to": "2026-01-06T00:00:00Z"}),
        ("MAIN/transactions", {"limit": "501"}),
        ("MAIN/transactions", {"min_version": "0"}),
        ("MAIN", {"min_version": "seven"}),
    ],
)
def test_malformed_query_parameters_are_validation_errors(
    query_env: QueryEnv, path: str, params: dict[str, str]
) -> None:
    path = path.replace("MAIN", f"/v1/accounts/{query_env.seed.main}")
    if params.get("cursor") == "STATEMENT":
        params = {"cursor": _statement_cursor(query_env)}  # another list's cursor
    body = assert_problem(query_env.get(path, **params), 422, "validation_error")
    assert body["errors"], body
