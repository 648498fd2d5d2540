"""A shorter way through FastAPI for the few routes every teller's request takes.

A single money command (a deposit, a withdrawal, a transfer) spent about half of the
command API's time for it in FastAPI and Starlette rather than in Vigil: the exception
and exit-stack layers, matching the path against every route, and FastAPI's general
dependency solver (cache keys, exit stacks, every kind of parameter for every
dependency). `FastRoutes` sits just inside Vigil's own middlewares and serves the routes
it is given by calling the same endpoint with the same dependencies, resolved by a plan
made once per route from FastAPI's own description of it (`route.dependant`). Each
parameter is read as FastAPI reads it (what FastAPI works out about a parameter at every
request, where to find it and whether a header may repeat, is worked out once per route)
and validated by FastAPI's own functions, so the values, and the errors, are the ones
FastAPI would produce.

It only ever takes the plain path: a route whose parameters it cannot resolve exactly as
FastAPI would (query or cookie parameters, synchronous or generator dependencies, a
`Response` parameter...) is left to FastAPI, and so is any request that does not validate
(not JSON, malformed, a missing or invalid field): FastAPI serves it from the start, with
the body replayed, and answers it as it always does. Nothing has happened by then but
reading and checking. A dependency or the endpoint raising (401, 403, a refused command)
is answered by the app's exception handlers, as FastAPI's exception layer would.

It leans on FastAPI's helpers, some of them private, and never bets the service on them:
a FastAPI without them leaves every route to FastAPI (`fast_routes_unavailable` in the
log); a route whose parameters the helpers no longer read as FastAPI does, checked when
the route is planned, is left to it (`fast_route_refused`); and a helper failing on a
request hands that request to FastAPI (`fast_route_failed`). Slower, never wrong.
"""

from __future__ import annotations

import inspect
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from time import monotonic
from typing import Any, Final

import fastapi
import structlog
from fastapi import FastAPI, params
from fastapi.dependencies.models import Dependant
from fastapi.dependencies.utils import request_body_to_args, request_params_to_args
from fastapi.routing import APIRoute
from starlette.convertors import Convertor
from starlette.datastructures import Headers
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from domain.errors import DomainError
from infrastructure.logging import describe
from infrastructure.metrics import FAST_ROUTE_REQUESTS_TOTAL
from interfaces.api.http.json_body import (
    content_types,
    is_json_content_type,
    parse_json_bytes,
)

log = structlog.get_logger("vigil.fast_routes")

# FastAPI's own helpers, some of them private: the price of reading parameters exactly as
# it does. A FastAPI that moved one leaves every route to FastAPI (slower, never wrong);
# `tests/unit/test_fast_route_params.py` fails first against such a FastAPI.
try:
    from fastapi._compat import ModelField, Undefined, field_annotation_is_sequence
    from fastapi.dependencies.utils import (
        _get_param_aliases,
        _get_param_model,
        _is_json_field,
        _validate_value_with_model_field,
    )
    from fastapi.routing import RouteContext, iter_route_contexts
except ImportError as missing:
    INTERNALS_MISSING: str | None = f"FastAPI {fastapi.__version__}: {missing}"
else:
    INTERNALS_MISSING = None

FAST_METHOD: Final = "POST"
# A helper that fails on one request fails on every one: say so once a minute per route
# (with how many were handed over since), not on every request at the rate tellers send.
FAILED_LOG_EVERY_S: Final = 60.0


class _NotFast(Exception):
    """This route or request is FastAPI's to serve."""


@dataclass(frozen=True)
class _DependencyPlan:
    name: str | None
    call: Callable[..., Any]
    request_params: tuple[str, ...]
    dependencies: tuple[_DependencyPlan, ...]
    use_cache: bool


@dataclass(frozen=True)
class _ParamPlan:
    """What FastAPI's `request_params_to_args` works out about a path or header parameter
    at every request, worked out once: the keys it is read under, in order of preference,
    whether it takes every value of a repeated header, and where an error says it was."""

    field: ModelField
    aliases: tuple[str, ...]
    repeated: bool
    where: str


@dataclass(frozen=True)
class _RoutePlan:
    route: APIRoute
    path_regex: re.Pattern[str]
    param_convertors: dict[str, Convertor[Any]]
    dependencies: tuple[_DependencyPlan, ...]
    dependant: Dependant
    embed_body_fields: bool
    request_params: tuple[str, ...]
    path_params: tuple[_ParamPlan, ...]
    header_params: tuple[_ParamPlan, ...]


def _is_async(call: Callable[..., Any]) -> bool:
    return inspect.iscoroutinefunction(call) or inspect.iscoroutinefunction(
        getattr(call, "__call__", None)  # noqa: B004 - an instance with an async __call__
    )


def _plain(dependant: Dependant) -> None:
    """Refuse what only FastAPI's general solver handles."""
    if (
        dependant.query_params
        or dependant.cookie_params
        or dependant.websocket_param_name
        or dependant.response_param_name
        or dependant.background_tasks_param_name
        or dependant.security_scopes_param_name
    ):
        raise _NotFast(f"{dependant.call!r} takes parameters only FastAPI resolves")


def _request_params(dependant: Dependant) -> tuple[str, ...]:
    """The parameters that take the request itself (as `Request` or `HTTPConnection`)."""
    names = (dependant.request_param_name, dependant.http_connection_param_name)
    return tuple(name for name in names if name)


def _param_plan(field: ModelField) -> _ParamPlan:
    info = field.field_info
    if _get_param_model(field) is not None or not isinstance(info, params.Param):
        raise _NotFast(f"parameter {field.name!r} is read as a model")
    aliases = tuple(request_key for _, request_key in _get_param_aliases(field))
    if not aliases:
        raise _NotFast(f"parameter {field.name!r} has no name to be read under")
    repeated = not _is_json_field(field) and field_annotation_is_sequence(info.annotation)
    return _ParamPlan(field, aliases, repeated, info.in_.value)


def _read_params(
    plans: tuple[_ParamPlan, ...], received: Mapping[str, Any]
) -> tuple[dict[str, Any], list[Any]]:
    """`request_params_to_args` with its per-field analysis done beforehand: the same
    values, read the same way, validated by FastAPI's own function, the same errors."""
    values: dict[str, Any] = {}
    errors: list[Any] = []
    for plan in plans:
        alias = next((key for key in plan.aliases if key in received), plan.aliases[0])
        value: Any
        if plan.repeated and isinstance(received, Headers):
            value = received.getlist(alias)
        else:
            value = received.get(alias)
        if value is None or (plan.repeated and len(value) == 0):
            value = Undefined  # defaults are applied by the validation, as FastAPI does
        field = plan.field
        valid, found = _validate_value_with_model_field(
            field=field, value=value, values=values, loc=(plan.where, alias)
        )
        if found:
            errors.extend(found)
        else:
            values[field.name] = valid
    return values, errors


def _dependency_plan(dependant: Dependant) -> _DependencyPlan:
    _plain(dependant)
    if dependant.path_params or dependant.header_params or dependant.body_params:
        raise _NotFast(f"dependency {dependant.call!r} reads the request's parameters")
    if dependant.call is None or not _is_async(dependant.call):
        raise _NotFast(f"dependency {dependant.call!r} is not a coroutine")
    return _DependencyPlan(
        name=dependant.name,
        call=dependant.call,
        request_params=_request_params(dependant),
        dependencies=tuple(_dependency_plan(d) for d in dependant.dependencies),
        use_cache=dependant.use_cache,
    )


def plan_route(context: RouteContext) -> _RoutePlan:
    """How to serve a route without FastAPI's solver; `_NotFast` if it cannot be. The
    context is the route as included in the app (its path, and the dependencies of every
    router it was included through)."""
    route = context.original_route
    dependant = context.dependant
    if not isinstance(route, APIRoute) or not isinstance(dependant, Dependant):
        raise _NotFast(f"{context.path} is not a FastAPI route")
    _plain(dependant)
    if context.methods != {FAST_METHOD} or len(dependant.body_params) != 1:
        raise _NotFast(f"{context.path} is not a POST with one JSON body")
    embed = context._embed_body_fields
    if not isinstance(embed, bool) or dependant.call is None or not _is_async(dependant.call):
        raise _NotFast(f"{context.path}: an endpoint FastAPI calls in another way")
    plan = _RoutePlan(
        route=route,
        path_regex=context.path_regex,
        param_convertors=dict(context.param_convertors),
        dependencies=tuple(_dependency_plan(d) for d in dependant.dependencies),
        dependant=dependant,
        embed_body_fields=embed,
        request_params=_request_params(dependant),
        path_params=tuple(map(_param_plan, dependant.path_params)),
        header_params=tuple(map(_param_plan, dependant.header_params)),
    )
    _check_reading(plan)
    return plan


def _check_reading(plan: _RoutePlan) -> None:
    """The route's parameters read both ways, on requests that lack each of them and that
    give each of them: a FastAPI whose helpers now mean something else leaves the route to
    FastAPI rather than answer otherwise than it would."""
    for plans, fields in (
        (plan.path_params, plan.dependant.path_params),
        (plan.header_params, plan.dependant.header_params),
    ):
        given = [(alias.lower(), "1") for p in plans for alias in p.aliases]
        samples: tuple[Mapping[str, Any], ...] = (
            {},
            dict(given),
            Headers(raw=[]),
            Headers(raw=[(k.encode("latin-1"), v.encode("latin-1")) for k, v in given]),
        )
        for received in samples:
            if _read_params(plans, received) != request_params_to_args(fields, received):
                raise _NotFast(f"{plan.route.path}: FastAPI reads its parameters otherwise")


async def _read_body(receive: Receive) -> tuple[bytes, list[Message]]:
    """The whole body, and the messages it came in (for FastAPI, if it serves instead)."""
    messages: list[Message] = []
    chunks: list[bytes] = []
    while True:
        message = await receive()
        messages.append(message)
        if message["type"] != "http.request":
            raise _NotFast("the client went away")  # FastAPI sees the same message
        chunks.append(message.get("body", b""))
        if not message.get("more_body", False):
            return b"".join(chunks), messages


def _replaying(messages: list[Message], receive: Receive) -> Receive:
    pending = list(messages)

    async def replay() -> Message:
        if pending:
            return pending.pop(0)
        return await receive()

    return replay


class FastRoutes:
    """ASGI middleware: serve the named POST routes of `owner` without its router."""

    def __init__(
        self,
        app: ASGIApp,
        *,
        owner: FastAPI,
        paths: Sequence[str],
    ) -> None:
        self.app = app
        self.owner = owner
        self.paths = tuple(paths)
        self._plans: tuple[_RoutePlan, ...] | None = None
        # Per route: when a failure was last logged, and the failures since.
        self._failures: dict[str, tuple[float, int]] = {}
        self._served = FAST_ROUTE_REQUESTS_TOTAL.labels("served")
        self._handed_over = FAST_ROUTE_REQUESTS_TOTAL.labels("handed_over")

    def _planned(self) -> tuple[_RoutePlan, ...]:
        # Routes exist only once the app is assembled, after middlewares are declared.
        if self._plans is None:
            self._plans = ()
            if INTERNALS_MISSING is not None:
                log.warning("fast_routes_unavailable", reason=INTERNALS_MISSING)
            else:
                self._plans = tuple(self._plan_routes())
            planned = [plan.route.path for plan in self._plans]
            log.info("fast_routes_planned", routes=planned)
            for path in self.paths:
                if path not in planned:
                    log.warning("fast_route_not_planned", route=path)
        return self._plans

    def _plan_routes(self) -> list[_RoutePlan]:
        plans = []
        for context in iter_route_contexts(self.owner.routes):
            if context.path in self.paths:
                try:
                    plans.append(plan_route(context))
                except _NotFast as why:
                    log.warning("fast_route_refused", route=context.path, reason=str(why))
                except Exception as error:  # FastAPI's helpers mean something else now
                    log.error("fast_route_refused", route=context.path, reason=describe(error))
        return plans

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != FAST_METHOD:
            await self.app(scope, receive, send)
            return
        found = self._match(scope["path"])
        if found is None or self.owner.dependency_overrides:
            await self.app(scope, receive, send)
            return
        plan, path_params = found
        try:
            body, messages = await _read_body(receive)
        except _NotFast:
            self._handed_over.inc()
            await self.app(scope, receive, send)
            return
        try:
            prepared = await self._prepare(plan, scope, path_params, body, messages, receive)
        except _NotFast:
            self._handed_over.inc()
            await self.app(scope, _replaying(messages, receive), send)
            return
        except Exception as error:
            # A FastAPI helper failing where it never did (a FastAPI that changed): only
            # reading and checking has happened, so FastAPI serves the request instead.
            self._log_failure(plan.route.path, error)
            self._handed_over.inc()
            await self.app(scope, _replaying(messages, receive), send)
            return
        request, call = prepared
        self._served.inc()
        try:
            response = await call()
        except Exception as error:
            response = await self._handled(request, error)
        await response(scope, request.receive, send)

    def _log_failure(self, route: str, error: Exception) -> None:
        now = monotonic()
        logged_at, since = self._failures.get(route, (-FAILED_LOG_EVERY_S, 0))
        if now - logged_at < FAILED_LOG_EVERY_S:
            self._failures[route] = (logged_at, since + 1)
            return
        self._failures[route] = (now, 0)
        log.error(
            "fast_route_failed",
            route=route,
            error=describe(error),
            failed_since_last_logged=since,
            log_every_s=FAILED_LOG_EVERY_S,
        )

    def _match(self, path: str) -> tuple[_RoutePlan, dict[str, Any]] | None:
        for plan in self._planned():
            matched = plan.path_regex.match(path)
            if matched is not None:
                convertors = plan.param_convertors
                params = {k: convertors[k].convert(v) for k, v in matched.groupdict().items()}
                return plan, params
        return None

    async def _prepare(
        self,
        plan: _RoutePlan,
        scope: Scope,
        path_params: dict[str, Any],
        body: bytes,
        messages: list[Message],
        receive: Receive,
    ) -> tuple[Request, Callable[[], Any]]:
        given = content_types(scope["headers"])
        if not body or len(given) != 1 or not is_json_content_type(_text(given[0])):
            raise _NotFast("not a JSON body")  # FastAPI's way gives the problem
        try:
            parsed = parse_json_bytes(body)
        except DomainError:
            raise _NotFast("malformed JSON") from None
        route = plan.route
        scope["route"] = route
        scope["endpoint"] = route.endpoint
        scope["path_params"] = path_params
        request = Request(scope, _replaying(messages, receive))
        request._body = body  # Starlette's caches: nothing reads the body twice
        request._json = parsed
        dependant = plan.dependant
        values, errors = _read_params(plan.path_params, path_params)
        if not errors:
            found, errors = _read_params(plan.header_params, request.headers)
            values.update(found)
        if not errors:
            found, errors = await request_body_to_args(
                dependant.body_params, parsed, plan.embed_body_fields
            )
            values.update(found)
        if errors:
            # FastAPI reports every invalid field at once, in its own words: let it.
            raise _NotFast("the request does not validate")
        for name in plan.request_params:
            values[name] = request
        endpoint = dependant.call
        assert endpoint is not None

        async def call() -> Response:
            # Dependencies first, as FastAPI runs them; what they raise is answered below.
            cache: dict[int, Any] = {}
            for dependency in plan.dependencies:
                solved = await _solve(dependency, request, cache)
                if dependency.name is not None:
                    values[dependency.name] = solved
            response = await endpoint(**values)
            if not isinstance(response, Response):
                raise TypeError(f"{route.path} returned {type(response).__name__}, not a Response")
            return response

        return request, call

    async def _handled(self, request: Request, error: Exception) -> Response:
        """The reply the app's exception handlers give, as Starlette's layer would."""
        handlers = self.owner.exception_handlers
        handler = handlers.get(error.status_code) if isinstance(error, HTTPException) else None
        for kind in type(error).__mro__:
            if handler is not None:
                break
            handler = handlers.get(kind)
        if handler is None:
            raise error  # the server error layer outside answers 500, as for any route
        reply = handler(request, error)
        if inspect.isawaitable(reply):
            reply = await reply
        error.__traceback__ = None
        assert isinstance(reply, Response)
        return reply


async def _solve(plan: _DependencyPlan, request: Request, cache: dict[int, Any]) -> Any:
    key = id(plan.call)
    if plan.use_cache and key in cache:
        return cache[key]
    values: dict[str, Any] = {}
    for dependency in plan.dependencies:
        solved = await _solve(dependency, request, cache)
        if dependency.name is not None:
            values[dependency.name] = solved
    for name in plan.request_params:
        values[name] = request
    solved = await plan.call(**values)
    cache[key] = solved
    return solved


def _text(raw: bytes | None) -> str | None:
    return None if raw is None else raw.decode("latin-1")
