"""A request that reads the store outside the group commit (a hold's capture finds the hold
first) and loses its connection answers 503 `unavailable` with Retry-After, as the commit
path does, never a 500: the fault run saw 500s on capture and void after PostgreSQL
restarts."""

from __future__ import annotations

import psycopg
import pytest
from eventsourcing.persistence import InterfaceError, OperationalError
from fastapi import FastAPI

from interfaces.api.http.problems import install_problem_handlers
from tests.unit.asgi import asgi_requests


@pytest.mark.parametrize(
    "error",
    [
        OperationalError("consuming input failed: server closed the connection"),
        InterfaceError("the connection is closed"),
        psycopg.OperationalError("connection refused"),
    ],
)
def test_a_lost_store_is_a_503_to_retry(error: Exception) -> None:
    app = FastAPI()
    install_problem_handlers(app)

    @app.post("/v1/holds/{hold_id}/capture")
    async def capture(hold_id: str) -> None:
        raise error

    [reply] = asgi_requests(app, [("POST", "/v1/holds/h/capture")])
    assert reply.status_code == 503
    assert reply.headers["content-type"] == "application/problem+json"
    assert reply.headers["retry-after"] == "1"
    assert reply.json()["code"] == "unavailable"
    assert "connection" not in reply.json()["detail"]  # the cause stays in the log
