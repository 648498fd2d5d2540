"""The one error path: every refusal and failure leaves as `application/problem+json`.

Routes never build error bodies. They raise (`DomainError`, `Unauthorized`) and the
handlers installed here turn that into a problem with a stable `type` and `code`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any, Final

import orjson
import psycopg
import structlog
from eventsourcing.persistence import InterfaceError as StoreInterfaceError
from eventsourcing.persistence import OperationalError as StoreOperationalError
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel
from starlette.exceptions import HTTPException
from starlette.responses import Response

from domain.errors import DomainError
from interfaces.api.http.auth import UNAUTHORIZED_DETAIL, Unauthorized

PROBLEM_MEDIA_TYPE: Final = "application/problem+json"
CORRELATION_HEADER: Final = "X-Correlation-ID"
# A batch of 1,000 malformed items must not become a megabyte of errors.
FIELD_ERRORS_MAX: Final = 100

# The API contract's table (code -> HTTP status), plus the codes the HTTP layer itself needs.
PROBLEM_STATUS: Final[Mapping[str, int]] = {
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
    # The store holds an event this server cannot decode: nothing the client can change.
    "event_unreadable": 500,
    # Not domain refusals: the HTTP layer's own.
    "bad_request": 400,
    "not_found": 404,
    "method_not_allowed": 405,
    "internal_error": 500,
}

# Every authenticated route can answer these, whatever it does.
DEFAULT_PROBLEM_CODES: Final = (
    "unauthorized",
    "forbidden",
    "payload_too_large",
    "validation_error",
    "internal_error",
    "unavailable",
)

_TITLES: Final[Mapping[str, str]] = {
    "unauthorized": "Unauthorized",
    "forbidden": "Forbidden",
    "payload_too_large": "Payload too large",
    "validation_error": "Invalid request",
    "rate_limited": "Too many requests",
    "projection_lagging": "Projection lagging",
    "unavailable": "Service unavailable",
    "bad_request": "Bad request",
    "not_found": "Not found",
    "method_not_allowed": "Method not allowed",
    "internal_error": "Internal error",
}

# Statuses Starlette/FastAPI raise on their own (routing, body parsing) -> our codes.
_HTTP_STATUS_CODES: Final[Mapping[int, str]] = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    413: "payload_too_large",
    422: "validation_error",
    429: "rate_limited",
    503: "unavailable",
}

log = structlog.get_logger("vigil.problems")


class FieldError(BaseModel):
    field: str
    message: str


class Problem(BaseModel):
    """RFC 9457 problem details, as every Vigil error reply carries them."""

    type: str
    title: str
    status: int
    detail: str
    code: str
    errors: list[FieldError] | None = None


def title_for(code: str) -> str:
    return _TITLES.get(code) or code.replace("_", " ").capitalize()


def problem_response(
    code: str,
    detail: str,
    *,
    title: str | None = None,
    errors: Sequence[Mapping[str, str]] | None = None,
    headers: Mapping[str, str] | None = None,
    status: int | None = None,
) -> Response:
    """A problem reply. `status` defaults to the table's; an unknown code is our bug."""
    if status is None:
        status = PROBLEM_STATUS[code]
    body: dict[str, Any] = {
        "type": f"/problems/{code}",
        "title": title or title_for(code),
        "status": status,
        "detail": detail,
        "code": code,
    }
    if errors is not None or code == "validation_error":
        body["errors"] = [dict(error) for error in (errors or ())]
    return Response(
        content=orjson.dumps(body),
        status_code=status,
        headers=dict(headers) if headers else None,
        media_type=PROBLEM_MEDIA_TYPE,
    )


def problem_responses(*codes: str, defaults: bool = True) -> dict[int | str, dict[str, Any]]:
    """`responses=` for a route decorator: each status the route can answer, as a Problem."""
    chosen = (*DEFAULT_PROBLEM_CODES, *codes) if defaults else codes
    by_status: dict[int, list[str]] = {}
    for code in dict.fromkeys(chosen):
        by_status.setdefault(PROBLEM_STATUS[code], []).append(code)
    return {
        status: {
            "description": "Problem: " + ", ".join(f"`{code}`" for code in status_codes),
            "content": {PROBLEM_MEDIA_TYPE: {"schema": {"$ref": "#/components/schemas/Problem"}}},
        }
        for status, status_codes in sorted(by_status.items())
    }


# --- Handlers -------------------------------------------------------------------------


def _retry_after(exc: Exception) -> dict[str, str]:
    retry_after_s = getattr(exc, "retry_after_s", None)
    if isinstance(retry_after_s, int | float) and retry_after_s >= 0:
        return {"Retry-After": str(max(1, round(retry_after_s)))}
    return {}


async def _domain_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, DomainError)
    status = PROBLEM_STATUS.get(exc.code)
    if status is None:
        # A new DomainError without a row in the table: still a refusal, so 422, but loudly.
        log.warning("problem_code_unmapped", code=exc.code)
        status = 422
    if status >= 500:
        log.error("request_failed", code=exc.code, detail=exc.detail)
    errors = getattr(exc, "errors", None)
    return problem_response(
        exc.code,
        exc.detail,
        title=exc.title,
        errors=errors if isinstance(errors, list) else None,
        headers=_retry_after(exc),
        status=status,
    )


async def _unauthorized(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, Unauthorized)
    # The cause is for the operator (logged); the caller learns only that it failed, so a
    # token forger gets no hint which check stopped them.
    log.info("token_refused", reason=exc.reason)
    return problem_response(
        "unauthorized", UNAUTHORIZED_DETAIL, headers={"WWW-Authenticate": "Bearer"}
    )


def _field_name(location: Sequence[Any]) -> str:
    return ".".join(str(part) for part in location)


def _message(error: Mapping[str, Any]) -> str:
    """Pydantic's message; for our own validators' refusals, their words alone (without
    pydantic's "Value error, " before them)."""
    cause = error.get("ctx", {}).get("error") if error.get("type") == "value_error" else None
    return str(cause) if isinstance(cause, ValueError) else str(error.get("msg", "invalid"))


async def _request_validation(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, RequestValidationError)
    # Only location and message: pydantic's `input` and `ctx` may echo secrets back.
    raw = list(exc.errors())
    errors = [
        {"field": _field_name(error.get("loc", ())), "message": _message(error)}
        for error in raw[:FIELD_ERRORS_MAX]
    ]
    detail = f"{len(raw)} invalid field(s)"
    if len(raw) > FIELD_ERRORS_MAX:
        detail += f"; the first {FIELD_ERRORS_MAX} are listed"
    return problem_response("validation_error", detail, errors=errors)


async def _http_exception(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    code = _HTTP_STATUS_CODES.get(exc.status_code)
    if code is None:
        code = "internal_error" if exc.status_code >= 500 else "bad_request"
    detail = exc.detail if isinstance(exc.detail, str) and exc.detail else title_for(code)
    headers: dict[str, str] = dict(exc.headers or {})
    if code == "unauthorized":
        headers.setdefault("WWW-Authenticate", "Bearer")
    return problem_response(code, detail, headers=headers)


STORE_RETRY_AFTER_S: Final = 1


async def _store_unavailable(request: Request, exc: Exception) -> Response:
    """The database went away under a request that reads it outside the group commit (a
    pooled connection that died with a restart, a server stopped): 503 to retry, as the
    commit path answers, not a 500. Nothing was written by this request."""
    log.warning(
        "store_unavailable",
        route=getattr(request.scope.get("route"), "path", None),
        error=type(exc).__name__,
    )
    return problem_response(
        "unavailable",
        "the database is unavailable for a moment; retry with the same id",
        headers={"Retry-After": str(STORE_RETRY_AFTER_S)},
        status=503,
    )


async def _unexpected(request: Request, exc: Exception) -> Response:
    # Runs in Starlette's outermost middleware, after ours unwound: bind what we know again.
    correlation_id = request.scope.get("state", {}).get("correlation_id")
    route = getattr(request.scope.get("route"), "path", None)
    log.error(
        "request_failed",
        method=request.method,
        route=route,
        correlation_id=correlation_id,
        exc_info=exc,
    )
    headers = {CORRELATION_HEADER: correlation_id} if correlation_id else None
    return problem_response(
        "internal_error",
        "an unexpected error occurred; quote the correlation id when reporting it",
        headers=headers,
    )


Handler = Callable[[Request, Exception], Any]

_HANDLERS: Final[Sequence[tuple[type[Exception], Handler]]] = (
    (DomainError, _domain_error),
    (Unauthorized, _unauthorized),
    (RequestValidationError, _request_validation),
    (HTTPException, _http_exception),
    # The library wraps psycopg's errors in its own; a lost connection is either.
    (StoreOperationalError, _store_unavailable),
    (StoreInterfaceError, _store_unavailable),
    (psycopg.OperationalError, _store_unavailable),
    (Exception, _unexpected),
)


def install_problem_handlers(app: FastAPI) -> None:
    """Route every error through the table above and publish the Problem schema."""
    for exception_type, handler in _HANDLERS:
        app.add_exception_handler(exception_type, handler)
    _publish_problem_schema(app)


# What any operation may answer before a route runs: the rate limit; and any operation
# with a body: a body that is not JSON, too large, or not sent as JSON.
EVERY_OPERATION_CODES: Final = ("rate_limited",)
BODY_CODES: Final = ("bad_request", "payload_too_large", "unsupported_media_type")


def _document_transport_problems(document: dict[str, Any]) -> None:
    """Add to every operation the problems the HTTP layer answers for it, so that the
    document lists every status a client can get."""
    for item in document.get("paths", {}).values():
        for method, operation in item.items():
            if not isinstance(operation, dict) or method not in ("get", "post", "delete", "put"):
                continue
            codes = [*EVERY_OPERATION_CODES, *(BODY_CODES if "requestBody" in operation else ())]
            responses = operation.setdefault("responses", {})
            for status, entry in problem_responses(*codes, defaults=False).items():
                responses.setdefault(str(status), entry)


def _publish_problem_schema(app: FastAPI) -> None:
    """`problem_responses` refers to `Problem` by $ref; make sure components define it."""
    build_openapi = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is not None:
            return app.openapi_schema
        document = build_openapi()
        schemas = document.setdefault("components", {}).setdefault("schemas", {})
        problem = Problem.model_json_schema(ref_template="#/components/schemas/{model}")
        schemas.update(problem.pop("$defs", {}))
        schemas["Problem"] = problem
        _document_transport_problems(document)
        return document

    app.openapi = openapi  # type: ignore[method-assign]
