"""Schemathesis against both APIs, in process (the ASGI apps with their lifespans, on a
database of their own): generated requests, valid and not, with a token of a role the
route allows. Every reply must be no server error, a status the OpenAPI document lists
for the route, of the documented content type, and conform to the documented schema.
Bounded and derandomised: at most 25 examples per operation."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis.generation import GenerationMode
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    negative_data_rejection,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from infrastructure.settings import Settings
from interfaces.api.command.app import create_command_app
from interfaces.api.http.roles import Role
from interfaces.api.http.tokens import issue_token
from interfaces.api.query.app import create_query_app
from tests.conftest import Databases

pytestmark = pytest.mark.e2e

EXAMPLES_MAX = 25


def no_server_error(ctx: Any, response: Any, case: Any) -> None:
    """5xx is a failure, except the contract's 503 (`unavailable`, `projection_lagging`:
    a wait for the read model that gave up, with Retry-After), which is an answer."""
    if response.status_code < 500:
        return
    if response.status_code == 503 and "retry-after" in {h.lower() for h in response.headers}:
        return
    raise AssertionError(f"server error {response.status_code}: {response.text[:300]}")


CHECKS = [
    no_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
    response_headers_conformance,
    negative_data_rejection,
]


@pytest.fixture(scope="module")
def api_settings_for_schemas(
    databases: Databases, tmp_path_factory: pytest.TempPathFactory
) -> Settings:
    tmp: Path = tmp_path_factory.mktemp("schemas")
    return databases.settings_for(databases.fresh(), tmp, api_docs=True)


@pytest.fixture(scope="module")
def command_schema(api_settings_for_schemas: Settings) -> Any:
    app = create_command_app(api_settings_for_schemas)
    return schemathesis.openapi.from_asgi("/openapi.json", app)


@pytest.fixture(scope="module")
def query_schema(api_settings_for_schemas: Settings) -> Any:
    app = create_query_app(api_settings_for_schemas)
    return schemathesis.openapi.from_asgi("/openapi.json", app)


# The role each route is called with: one the contract's matrix allows (tellers of branch
# 001 for the money routes), first match wins.
ROLES: tuple[tuple[str, str, Role], ...] = (
    ("POST", "/deposits", Role.TELLER),
    ("POST", "/withdrawals", Role.TELLER),
    ("POST", "/v1/transfers", Role.TELLER),
    ("POST", "/v1/batches", Role.TELLER),
    ("", "/v1/cases", Role.COMPLIANCE),
    ("", "/v1/watchlist", Role.COMPLIANCE),
    ("", "/v1/alerts", Role.COMPLIANCE),
    ("", "/v1/audit", Role.AUDITOR),
    ("", "/v1/stats", Role.VIEWER),
    ("", "/v1/", Role.ADMIN),
)


def _role_for(method: str, path: str) -> Role | None:
    for wanted_method, fragment, role in ROLES:
        if (not wanted_method or wanted_method == method) and fragment in path:
            return role
    return None


def _authorize(settings: Settings, case: Any) -> None:
    """The case's Authorization header: a valid token of the route's role (schemathesis
    generates its own for the bearer scheme, which would only ever be refused)."""
    role = _role_for(case.method.upper(), case.path)
    if role is None:
        return
    branch = "001" if role is Role.TELLER else None
    token = issue_token(settings, role=role.value, branch=branch, subject=f"schemas-{role}")
    case.headers = {**(case.headers or {}), "Authorization": f"Bearer {token}"}


HYPOTHESIS = settings(
    max_examples=EXAMPLES_MAX,
    derandomize=True,
    deadline=None,
    suppress_health_check=list(HealthCheck),
    database=None,
)


def _check(operation: Any, settings_: Settings) -> None:
    cases = operation.as_strategy(GenerationMode.POSITIVE) | operation.as_strategy(
        GenerationMode.NEGATIVE
    )

    @HYPOTHESIS
    @given(case=cases)
    def check(case: Any) -> None:
        _authorize(settings_, case)
        case.call_and_validate(checks=CHECKS)

    check()


def _failures(schema: Any, settings_: Settings) -> list[str]:
    """Every operation of the schema, each with its own bounded Hypothesis run; what
    failed, by operation (the first failure of each, shrunk)."""
    failures = []
    for result in schema.get_all_operations():
        operation = result.ok()
        try:
            _check(operation, settings_)
        except (Exception, BaseExceptionGroup) as failure:
            failures.append(f"{operation.label}: {failure}"[:2000])
    return failures


def test_the_command_api_answers_as_its_openapi_document_says(
    command_schema: Any, api_settings_for_schemas: Settings
) -> None:
    failures = _failures(command_schema, api_settings_for_schemas)
    assert not failures, "\n\n".join(failures)


def test_the_query_api_answers_as_its_openapi_document_says(
    query_schema: Any, api_settings_for_schemas: Settings
) -> None:
    failures = _failures(query_schema, api_settings_for_schemas)
    assert not failures, "\n\n".join(failures)


@pytest.fixture(scope="module", autouse=True)
def _stop_lifespans() -> Iterator[None]:
    yield
    from schemathesis.python.asgi import shutdown_lifespans

    shutdown_lifespans()


MALFORMED_BODIES = (
    (b'{"amount": "1.00",', "application/json"),  # cut short
    (b"amount=1.00", "text/plain"),  # not JSON at all
    (b"[1, 2]", "application/json"),  # JSON, not an object
)


@pytest.mark.parametrize("which", ["command", "query"])
def test_a_malformed_body_is_answered_with_a_documented_status(
    which: str, command_schema: Any, query_schema: Any, api_settings_for_schemas: Settings
) -> None:
    from schemathesis.python.asgi import get_client

    schema = command_schema if which == "command" else query_schema
    document = schema.raw_schema
    posts = [
        (path, operation)
        for path, item in document["paths"].items()
        for method, operation in item.items()
        if method == "post" and "requestBody" in operation
    ]
    assert posts or which == "query"
    with get_client(schema.app) as client:
        for path, operation in posts:
            role = _role_for("POST", path)
            assert role is not None
            branch = "001" if role is Role.TELLER else None
            token = issue_token(api_settings_for_schemas, role=role.value, branch=branch)
            concrete = path
            for name in ("account_id", "case_id", "export_id", "hold_id", "transaction_id"):
                concrete = concrete.replace("{" + name + "}", str(uuid.uuid4()))
            for body, media_type in MALFORMED_BODIES:
                reply = client.post(
                    concrete,
                    data=body,
                    headers={"Authorization": f"Bearer {token}", "Content-Type": media_type},
                )
                documented = set(operation["responses"])
                assert str(reply.status_code) in documented, (path, body, reply.text)
                assert reply.headers["content-type"].startswith("application/problem+json")
