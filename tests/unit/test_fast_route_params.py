"""The money routes' short way reads path and header parameters exactly as FastAPI does.

`_read_params` does what FastAPI's `request_params_to_args` does at every request, with
what that function works out about each parameter (where to find it, whether a header may
repeat) worked out once per route. Both are run here on the same routes and the same
requests, drawn by Hypothesis, and must give the same values and the same errors. Run
against the FastAPI installed, so a FastAPI whose reading changes fails here first.
"""

from __future__ import annotations

from typing import Annotated, Any
from uuid import UUID

from fastapi import FastAPI, Header
from fastapi.dependencies.utils import request_params_to_args
from fastapi.routing import iter_route_contexts
from hypothesis import given
from hypothesis import strategies as st
from starlette.datastructures import Headers

from interfaces.api.command.deps import IdempotencyKeyHeader
from interfaces.api.http.fast_routes import _read_params, _RoutePlan, plan_route

app = FastAPI()


@app.post("/v1/accounts/{account_id}/deposits")
async def deposit(
    account_id: UUID,
    body: dict[str, Any],
    idempotency_key: IdempotencyKeyHeader = None,
    x_trace: Annotated[list[str] | None, Header()] = None,
    x_count: Annotated[int, Header(ge=0)] = 0,
) -> None:
    """Parameters of the kinds the money routes take: a path id, the idempotency key,
    and, to cover FastAPI's other readings, a repeatable header and a number."""


def _plan() -> _RoutePlan:
    (context,) = (c for c in iter_route_contexts(app.routes) if c.path.endswith("/deposits"))
    return plan_route(context)


PLAN = _plan()
NAMES = ("idempotency-key", "Idempotency-Key", "x-trace", "x-count", "x_count", "other")
VALUES = st.one_of(
    st.text(max_size=8),
    st.text(alphabet="k", min_size=195, max_size=205),  # around the key's length limit
    st.integers(-3, 3).map(str),
    st.just(""),
)
HEADERS = st.lists(st.tuples(st.sampled_from(NAMES), VALUES), max_size=6)
PATH_IDS = st.one_of(st.uuids().map(str), st.text(max_size=40))


def _raw(pairs: list[tuple[str, str]]) -> list[tuple[bytes, bytes]]:
    # As a server hands them over: lower-case names, latin-1 values.
    return [(k.lower().encode(), v.encode("utf-8").decode("latin-1").encode("latin-1"))
            for k, v in pairs]  # fmt: skip


@given(HEADERS, PATH_IDS)
def test_parameters_are_read_as_fastapi_reads_them(
    pairs: list[tuple[str, str]], account_id: str
) -> None:
    headers = Headers(raw=_raw(pairs))
    dependant = PLAN.dependant
    assert _read_params(PLAN.header_params, headers) == request_params_to_args(
        dependant.header_params, headers
    )
    path = {"account_id": account_id}
    assert _read_params(PLAN.path_params, path) == request_params_to_args(
        dependant.path_params, path
    )


def test_the_plan_reads_each_parameter_under_fastapis_name_for_it() -> None:
    headers = {p.field.name: p for p in PLAN.header_params}
    assert headers["idempotency_key"].aliases == ("Idempotency-Key",)
    assert headers["x_trace"].repeated
    assert not headers["x_count"].repeated
    assert [p.where for p in PLAN.path_params] == ["path"]
    repeated = Headers(raw=[(b"x-trace", b"a"), (b"x-trace", b"b"), (b"x-count", b"2")])
    values, errors = _read_params(PLAN.header_params, repeated)
    assert errors == []
    assert values == {"idempotency_key": None, "x_trace": ["a", "b"], "x_count": 2}
