"""Pure ASGI middlewares: correlation id, body size limit, access log and metrics.

Pure ASGI rather than `BaseHTTPMiddleware`: no extra task and no body re-buffering per
request, which matters at the request rates the group commit is built for.
`install_middleware` adds them in the one order that works (outermost first):
correlation id -> access log -> rate limit -> body limit -> the app.
"""

from __future__ import annotations

import os
import re
import threading
import time
from contextvars import ContextVar
from typing import Final

import structlog
from fastapi.telemetry import TelemetryConfig
from starlette.applications import Starlette
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from infrastructure import metrics
from infrastructure.audit.access_log import AccessRecord
from interfaces.api.http.auth import TokenVerifier
from interfaces.api.http.problems import CORRELATION_HEADER, problem_response
from interfaces.api.http.ratelimit import RateLimiter, RateLimitMiddleware

CORRELATION_ID_PATTERN: Final = re.compile(r"[A-Za-z0-9._:-]{1,128}")
_CORRELATION_HEADER_RAW: Final = CORRELATION_HEADER.lower().encode("latin-1")
# Probes and scrapes every few seconds would drown the access log at info level.
_QUIET_ROUTES: Final = frozenset({"/health/live", "/health/ready", "/metrics"})
UNMATCHED_ROUTE: Final = "unmatched"

# FastAPI's own OpenTelemetry hooks, which Vigil does not use (its metrics are Prometheus's,
# its traces the correlation id): left on, FastAPI looked up the global providers on every
# request, about a tenth of a single command's time in the command API.
TELEMETRY_OFF: Final[TelemetryConfig] = {
    "tracing": False,
    "metrics": False,
    "logs": False,
    "operation_spans": False,
}

# On every reply: nothing is for a shared cache (balances, statements, tokens' effects),
# and no browser guesses a type the reply does not declare.
SECURITY_HEADERS: Final = (
    (b"cache-control", b"no-store"),
    (b"x-content-type-options", b"nosniff"),
)

correlation_id_var: ContextVar[str | None] = ContextVar("vigil_correlation_id", default=None)

log = structlog.get_logger("vigil.access")


def current_correlation_id() -> str | None:
    """The correlation id of the request being served (for events the command records)."""
    return correlation_id_var.get()


def _header(scope: Scope, name: bytes) -> bytes | None:
    for key, value in scope.get("headers", ()):
        if key == name:
            return bytes(value)
    return None


def _sane_correlation_id(raw: bytes | None) -> str | None:
    if raw is None:
        return None
    try:
        text = raw.decode("ascii")
    except UnicodeDecodeError:
        return None
    return text if CORRELATION_ID_PATTERN.fullmatch(text) else None


class _Entropy:
    """`os.urandom` read 4 KiB at a time and handed out 16 bytes at a time: one system call
    (which also hands the interpreter lock to the committer's threads and back) per 256
    correlation ids instead of one per request. A forked child reads its own."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._pool = b""
        self._at = 0
        os.register_at_fork(after_in_child=self._forget)

    def _forget(self) -> None:
        self._lock = threading.Lock()
        self._pool, self._at = b"", 0

    def take16(self) -> bytes:
        with self._lock:
            if self._at >= len(self._pool):
                self._pool, self._at = os.urandom(4096), 0
            at = self._at
            self._at = at + 16
            return self._pool[at : at + 16]


_entropy = _Entropy()


def new_correlation_id() -> str:
    """A random (version 4) UUID's text, as `str(uuid.uuid4())` gives, without making a
    UUID object on every request."""
    raw = bytearray(_entropy.take16())
    raw[6] = raw[6] & 0x0F | 0x40  # version 4
    raw[8] = raw[8] & 0x3F | 0x80  # RFC 4122 variant
    text = raw.hex()
    return f"{text[:8]}-{text[8:12]}-{text[12:16]}-{text[16:20]}-{text[20:]}"


class CorrelationIdMiddleware:
    """Accept a sane `X-Correlation-ID` or make one; log with it; send it back, with the
    security headers (here rather than in a middleware of their own: one wrapper less
    on every request)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        correlation_id = _sane_correlation_id(_header(scope, _CORRELATION_HEADER_RAW))
        if correlation_id is None:
            correlation_id = new_correlation_id()
        # In place: the 500 handler outside us reads it from this same dict.
        scope.setdefault("state", {})["correlation_id"] = correlation_id
        header = (_CORRELATION_HEADER_RAW, correlation_id.encode("ascii"))

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", ()), header, *SECURITY_HEADERS]
            await send(message)

        var_token = correlation_id_var.set(correlation_id)
        log_tokens = structlog.contextvars.bind_contextvars(correlation_id=correlation_id)
        try:
            await self.app(scope, receive, send_with_id)
        finally:
            structlog.contextvars.reset_contextvars(**log_tokens)
            correlation_id_var.reset(var_token)


class _BodyTooLarge(Exception):
    """Raised from `receive` once a streamed body passes the limit."""


class BodySizeLimitMiddleware:
    """413 `payload_too_large` past `body_max_bytes`, declared or streamed."""

    def __init__(self, app: ASGIApp, *, body_max_bytes: int) -> None:
        assert body_max_bytes > 0
        self.app = app
        self.body_max_bytes = body_max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = _content_length(scope)
        if declared is not None and declared > self.body_max_bytes:
            await self._refuse(scope, receive, send)
            return
        received_bytes = 0
        exceeded = False
        response_started = False

        async def limited_receive() -> Message:
            nonlocal received_bytes, exceeded
            message = await receive()
            if message["type"] == "http.request":
                received_bytes += len(message.get("body", b""))
                if received_bytes > self.body_max_bytes:
                    exceeded = True
                    raise _BodyTooLarge
            return message

        async def guarded_send(message: Message) -> None:
            nonlocal response_started
            # The app may turn our exception into its own error reply (FastAPI makes body
            # read failures a 400); once the limit was passed, only our 413 goes out.
            if exceeded and not response_started:
                return
            if message["type"] == "http.response.start":
                response_started = True
            await send(message)

        try:
            await self.app(scope, limited_receive, guarded_send)
        except _BodyTooLarge:
            if response_started:
                raise
        if exceeded and not response_started:
            await self._refuse(scope, receive, send)

    async def _refuse(self, scope: Scope, receive: Receive, send: Send) -> None:
        response = problem_response(
            "payload_too_large",
            f"the request body exceeds {self.body_max_bytes} bytes",
            # The rest of the body is not read; the connection cannot be reused.
            headers={"Connection": "close"},
        )
        await response(scope, receive, send)


def _content_length(scope: Scope) -> int | None:
    raw = _header(scope, b"content-length")
    if raw is None:
        return None
    try:
        return int(raw)
    except ValueError:
        return None  # The server rejects malformed lengths before we see them.


def route_template(scope: Scope) -> str:
    """The matched route's template (`/v1/accounts/{account_id}`), bounding label values."""
    path = getattr(scope.get("route"), "path", None)
    return path if isinstance(path, str) else UNMATCHED_ROUTE


class AccessLogMiddleware:
    """One `request_completed` line and the HTTP metrics for every request."""

    def __init__(self, app: ASGIApp, *, app_name: str) -> None:
        self.app = app
        self.app_name = app_name

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started_s = time.perf_counter()
        status = 500  # If the app raises before answering, the outer handler sends a 500.

        async def send_recording(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, send_recording)
        finally:
            self._record(scope, status, time.perf_counter() - started_s)

    def _record(self, scope: Scope, status: int, duration_s: float) -> None:
        route = route_template(scope)
        method = str(scope.get("method", ""))
        metrics.observe_http_request(self.app_name, method, route, status, duration_s)
        principal = scope.get("state", {}).get("principal")
        subject = getattr(principal, "subject", None)
        trail = getattr(getattr(scope.get("app"), "state", None), "access_trail", None)
        if trail is not None and _trailed(self.app_name, method, route, status):
            trail.add(_access_record(scope, principal, route, method, status))
        emit = log.debug if route in _QUIET_ROUTES else log.info
        emit(
            "request_completed",
            app=self.app_name,
            method=method,
            route=route,
            status=status,
            duration_ms=round(duration_s * 1000, 3),
            correlation_id=scope.get("state", {}).get("correlation_id"),
            subject=subject,
        )


# Query routes that read no customer's data (totals, positions), and the audit routes,
# which record their reads themselves before serving them.
_UNTRAILED_READS: Final = ("/v1/stats/", "/v1/projections", "/v1/audit/")
_TRAILED_IDS: Final = ("account_id", "case_id", "alert_id", "export_id")


def _trailed(app_name: str, method: str, route: str, status: int) -> bool:
    """Every refusal, and every read of customer data on the query API."""
    if status in (401, 403):
        return True
    return (
        app_name == "query"
        and method == "GET"
        and route.startswith("/v1/")
        and not route.startswith(_UNTRAILED_READS)
    )


def _access_record(
    scope: Scope, principal: object, route: str, method: str, status: int
) -> AccessRecord:
    detail: dict[str, object] = {"method": method, "route": route, "status": status}
    params = scope.get("path_params") or {}
    for name in _TRAILED_IDS:
        if name in params:
            detail[name] = str(params[name])
    query = scope.get("query_string", b"")
    if b"account_id=" in query:
        for pair in query.decode("latin-1").split("&"):
            name, _, value = pair.partition("=")
            if name == "account_id":
                detail.setdefault("account_id", value[:64])
    if route == UNMATCHED_ROUTE:
        detail["path"] = str(scope.get("path", ""))[:256]
    if principal is None:
        detail["client"] = str((scope.get("client") or ("unknown",))[0])
    role = getattr(principal, "role", None)
    return AccessRecord(
        subject=str(getattr(principal, "subject", "anonymous")),
        role=str(getattr(role, "value", "none")),
        action="refused" if status in (401, 403) else "read",
        detail=detail,
        correlation_id=scope.get("state", {}).get("correlation_id"),
    )


def install_middleware(
    app: Starlette,
    *,
    app_name: str,
    body_max_bytes: int,
    limiter: RateLimiter | None = None,
    verifier: TokenVerifier | None = None,
) -> None:
    """Add Vigil's middlewares to a Starlette/FastAPI app, in the order they need (the rate
    limit, when given and any of its buckets is on, between the access log and the body
    limit)."""
    # add_middleware puts each new one outermost, so add innermost first.
    app.add_middleware(BodySizeLimitMiddleware, body_max_bytes=body_max_bytes)
    if limiter is not None and limiter.enabled:
        assert verifier is not None, "the rate limit tells subjects apart by their token"
        app.add_middleware(RateLimitMiddleware, limiter=limiter, verifier=verifier)
    app.add_middleware(AccessLogMiddleware, app_name=app_name)
    app.add_middleware(CorrelationIdMiddleware)
