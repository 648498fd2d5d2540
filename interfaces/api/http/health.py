"""Liveness, readiness and the Prometheus scrape. Probes carry no token; a scrape carries
`VIGIL_METRICS_TOKEN` when one is set.

Readiness runs `app.state.readiness_checks`, a list of `(name, async check, critical)`.
A failing critical check (the event store) makes the process unready (503); a failing
non-critical one (the reply cache) only degrades it (200, `"degraded"`), and so do the
`app.state.degradations` that find something to say (events set aside in quarantine).
Every answer lists its `"reasons"` (empty when all is well).
"""

from __future__ import annotations

import asyncio
import hmac
from collections.abc import Awaitable, Callable, Sequence
from typing import Final, Literal

import structlog
from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from pydantic import SecretStr
from starlette.responses import Response

from infrastructure.metrics import metrics_response
from infrastructure.settings import Settings
from interfaces.api.http.auth import UNAUTHORIZED_DETAIL
from interfaces.api.http.problems import problem_response

ReadinessCheck = tuple[str, Callable[[], Awaitable[bool]], bool]
# What the process serves but works around (quarantined events): each a list of reasons.
DegradationCheck = tuple[str, Callable[[], Awaitable[list[str]]]]
CheckOutcome = Literal["ok", "failed", "timeout"]

# A probe that hangs is worse than one that fails: the orchestrator's own timeout fires
# and it learns nothing. Each check gets this long, all run concurrently.
CHECK_TIMEOUT_S: Final = 1.0

log = structlog.get_logger("vigil.health")

health_router = APIRouter(tags=["health"])


@health_router.get("/health/live")
async def live() -> dict[str, str]:
    """The process is up and its event loop answers."""
    return {"status": "ok"}


@health_router.get(
    "/health/ready",
    responses={503: {"description": "A critical dependency is not reachable"}},
)
async def ready(request: Request) -> JSONResponse:
    """Whether the dependencies answer: `ok`, `degraded` (with reasons) or 503."""
    checks: Sequence[ReadinessCheck] = getattr(request.app.state, "readiness_checks", ())
    outcomes = await asyncio.gather(*(_run_check(name, check) for name, check, _ in checks))
    results = {name: outcome for (name, _, _), outcome in zip(checks, outcomes, strict=True)}
    critical_down = any(
        critical and outcome != "ok"
        for (_, _, critical), outcome in zip(checks, outcomes, strict=True)
    )
    if critical_down:
        return JSONResponse({"status": "unavailable", "checks": results}, status_code=503)
    reasons = [f"{name}: {outcome}" for name, outcome in results.items() if outcome != "ok"]
    reasons.extend(tls_waived(request.app.state.settings))
    degradations: Sequence[DegradationCheck] = getattr(request.app.state, "degradations", ())
    for found in await asyncio.gather(*(_run_degradation(n, c) for n, c in degradations)):
        reasons.extend(found)
    status = "degraded" if reasons else "ok"
    return JSONResponse({"status": status, "checks": results, "reasons": reasons})


def tls_waived(settings: Settings) -> list[str]:
    """Production reaching a server without TLS, because VIGIL_TLS_REQUIRED=false said so."""
    return settings.tls_waived()


async def _run_degradation(name: str, check: Callable[[], Awaitable[list[str]]]) -> list[str]:
    try:
        return await asyncio.wait_for(check(), timeout=CHECK_TIMEOUT_S)
    except Exception as error:
        log.warning("degradation_check_failed", check=name, error=type(error).__name__)
        return [f"{name}: could not be checked"]


async def _run_check(name: str, check: Callable[[], Awaitable[bool]]) -> CheckOutcome:
    try:
        passed = await asyncio.wait_for(check(), timeout=CHECK_TIMEOUT_S)
    except TimeoutError:
        log.warning("readiness_check_timed_out", check=name, timeout_s=CHECK_TIMEOUT_S)
        return "timeout"
    except Exception as error:
        # The type only: driver messages can carry connection strings.
        log.warning("readiness_check_failed", check=name, error=type(error).__name__)
        return "failed"
    return "ok" if passed else "failed"


@health_router.get(
    "/metrics",
    response_class=Response,
    responses={
        200: {"content": {"text/plain": {}}, "description": "Prometheus exposition"},
        401: {"description": "`VIGIL_METRICS_TOKEN` is set and the request does not carry it"},
    },
)
async def metrics(request: Request) -> Response:
    """Prometheus text exposition of this process's metrics; behind a bearer token when
    `VIGIL_METRICS_TOKEN` is set (production requires it)."""
    token: SecretStr | None = request.app.state.settings.metrics_token
    if token is not None:
        expected = f"Bearer {token.get_secret_value()}".encode()
        given = request.headers.get("authorization", "").encode()
        if not hmac.compare_digest(given, expected):
            return problem_response(
                "unauthorized", UNAUTHORIZED_DETAIL, headers={"WWW-Authenticate": "Bearer"}
            )
    exposition = metrics_response()
    return Response(content=exposition.body, media_type=exposition.content_type)
