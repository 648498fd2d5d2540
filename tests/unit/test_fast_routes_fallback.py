"""The money routes' short way never bets the service on FastAPI's helpers.

It reads parameters with FastAPI's own helpers, some of them private. A FastAPI without
them, whose helpers read a route's parameters otherwise, or whose helper fails on a
request, must leave the request to FastAPI, which answers it as it always does: slower,
never wrong, never a 500. Each case is made here by changing what the module holds, on a
small app served in process.
"""

from __future__ import annotations

import asyncio
from typing import Annotated, Any
from uuid import UUID, uuid4

import httpx
import pytest
from fastapi import FastAPI, Header
from pydantic import BaseModel
from starlette.responses import JSONResponse
from structlog.testing import capture_logs

from infrastructure.metrics import FAST_ROUTE_REQUESTS_TOTAL
from interfaces.api.http import fast_routes
from interfaces.api.http.fast_routes import FastRoutes

PATH = "/v1/accounts/{account_id}/deposits"


class Deposit(BaseModel):
    amount: int


def _app() -> tuple[FastAPI, list[tuple[UUID, int, str | None]]]:
    """A route of the money routes' shape; what its endpoint was called with, in order."""
    app = FastAPI()
    calls: list[tuple[UUID, int, str | None]] = []

    @app.post(PATH)
    async def deposit(
        account_id: UUID,
        body: Deposit,
        idempotency_key: Annotated[str | None, Header()] = None,
    ) -> JSONResponse:
        calls.append((account_id, body.amount, idempotency_key))
        return JSONResponse({"account_id": str(account_id), "amount": body.amount}, 201)

    app.add_middleware(FastRoutes, owner=app, paths=[PATH])
    return app, calls


def _middleware(app: FastAPI) -> FastRoutes:
    stack: Any = app.build_middleware_stack()
    while not isinstance(stack, FastRoutes):
        stack = stack.app
    return stack


def _count(outcome: str) -> float:
    return FAST_ROUTE_REQUESTS_TOTAL.labels(outcome)._value.get()


async def _post(app: FastAPI, account_id: UUID, body: bytes, key: str) -> httpx.Response:
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://app") as http:
        return await http.post(
            f"/v1/accounts/{account_id}/deposits",
            content=body,
            headers={"content-type": "application/json", "idempotency-key": key},
        )


def _deposit(app: FastAPI) -> tuple[httpx.Response, UUID]:
    account_id = uuid4()
    return asyncio.run(_post(app, account_id, b'{"amount": 7}', "k-1")), account_id


def _served_by_fastapi(app: FastAPI, calls: list[tuple[UUID, int, str | None]]) -> list[Any]:
    """A deposit answered and applied as FastAPI does, not the short way; the log lines."""
    served = _count("served")
    with capture_logs() as logs:
        reply, account_id = _deposit(app)
    assert (reply.status_code, calls) == (201, [(account_id, 7, "k-1")])
    assert _count("served") == served
    return logs


def test_the_short_way_serves_the_route_when_the_helpers_are_there() -> None:
    app, calls = _app()
    served = _count("served")
    reply, account_id = _deposit(app)
    assert reply.status_code == 201
    assert reply.json() == {"account_id": str(account_id), "amount": 7}
    assert calls == [(account_id, 7, "k-1")]
    assert _count("served") == served + 1
    assert [plan.route.path for plan in _middleware(app)._planned()] == [PATH]


def test_a_fastapi_without_the_helpers_leaves_every_route_to_fastapi(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(fast_routes, "INTERNALS_MISSING", "FastAPI 9.9: no _get_param_aliases")
    app, calls = _app()
    logs = _served_by_fastapi(app, calls)
    assert _middleware(app)._planned() == ()
    events = {entry["event"]: entry for entry in logs}
    assert "no _get_param_aliases" in events["fast_routes_unavailable"]["reason"]
    assert events["fast_route_not_planned"]["route"] == PATH


def test_a_helper_that_reads_otherwise_leaves_the_route_to_fastapi(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    validate = fast_routes._validate_value_with_model_field

    def other_reading(**kwargs: Any) -> Any:
        value, errors = validate(**kwargs)
        return ("not what FastAPI read" if value is None else value), errors

    monkeypatch.setattr(fast_routes, "_validate_value_with_model_field", other_reading)
    app, calls = _app()
    # FastAPI's own reading: the key as sent, not what the changed helper would give.
    logs = _served_by_fastapi(app, calls)
    refused = [entry for entry in logs if entry["event"] == "fast_route_refused"]
    assert refused
    assert "reads its parameters otherwise" in refused[0]["reason"]


def test_a_helper_that_fails_when_planning_leaves_the_route_to_fastapi(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def moved(*args: Any, **kwargs: Any) -> Any:
        raise TypeError("_get_param_aliases() takes 2 positional arguments")

    monkeypatch.setattr(fast_routes, "_get_param_aliases", moved)
    app, calls = _app()
    logs = _served_by_fastapi(app, calls)
    refused = [entry for entry in logs if entry["event"] == "fast_route_refused"]
    assert refused
    assert refused[0]["log_level"] == "error"
    assert "takes 2 positional arguments" in refused[0]["reason"]


def test_a_helper_that_fails_on_a_request_hands_it_to_fastapi(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    app, calls = _app()
    assert _middleware(app)._planned()  # planned with the helpers as they are

    async def failing(*args: Any, **kwargs: Any) -> Any:
        raise AttributeError("'ModelField' object has no attribute 'alias'")

    monkeypatch.setattr(fast_routes, "request_body_to_args", failing)
    handed_over = _count("handed_over")
    with capture_logs() as logs:
        first, first_id = _deposit(app)
        second = asyncio.run(_post(app, first_id, b'{"amount": 9}', "k-2"))
        invalid = asyncio.run(_post(app, first_id, b'{"amount": "nine"}', "k-3"))
    # The body was read once and replayed: FastAPI saw every byte of it.
    assert (first.status_code, second.status_code) == (201, 201)
    assert calls == [(first_id, 7, "k-1"), (first_id, 9, "k-2")]
    assert invalid.status_code == 422  # FastAPI's own answer to a body that does not validate
    assert _count("handed_over") == handed_over + 3
    failed = [entry for entry in logs if entry["event"] == "fast_route_failed"]
    # Once, not on every request: the metric counts them all.
    assert len(failed) == 1
    assert failed[0]["log_level"] == "error"
    assert "has no attribute" in failed[0]["error"]


def test_a_helper_failing_on_every_request_is_logged_once_a_minute_with_the_count(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    app, _ = _app()

    async def failing(*args: Any, **kwargs: Any) -> Any:
        raise AttributeError("'ModelField' object has no attribute 'alias'")

    monkeypatch.setattr(fast_routes, "request_body_to_args", failing)
    now = [1_000.0]
    monkeypatch.setattr(fast_routes, "monotonic", lambda: now[0])
    with capture_logs() as logs:
        first, account_id = _deposit(app)
        for key in ("k-2", "k-3", "k-4"):
            asyncio.run(_post(app, account_id, b'{"amount": 9}', key))
        now[0] += fast_routes.FAILED_LOG_EVERY_S
        asyncio.run(_post(app, account_id, b'{"amount": 9}', "k-5"))
    assert first.status_code == 201
    failed = [entry for entry in logs if entry["event"] == "fast_route_failed"]
    assert [entry["failed_since_last_logged"] for entry in failed] == [0, 3]
