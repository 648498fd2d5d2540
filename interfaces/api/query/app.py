"""The query API: reads the read models, never changes domain state. Separate app,
process and port from the command API, with the same auth, errors and health probes."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import structlog
from fastapi import FastAPI

from infrastructure.audit.access_log import prepare_audit_tables
from infrastructure.audit.access_trail import AccessTrail
from infrastructure.eventstore.ledger import open_ledger
from infrastructure.ops.quarantine import list_quarantined, reasons
from infrastructure.readmodels.balances_cache import AccountCache
from infrastructure.readmodels.freshness import ChangeWaiters, NotificationListener
from infrastructure.readmodels.readstore import ReadStore, prepare_read_models
from infrastructure.settings import Settings
from interfaces.api.console.mount import install_console
from interfaces.api.http.auth import TokenVerifier
from interfaces.api.http.docs import install_docs, openapi_url
from interfaces.api.http.health import health_router
from interfaces.api.http.middleware import TELEMETRY_OFF, install_middleware
from interfaces.api.http.problems import install_problem_handlers
from interfaces.api.http.ratelimit import RateLimiter
from interfaces.api.query.deps import ReadSide
from interfaces.api.query.lag import lag_reasons, refresh_lags
from interfaces.api.query.routes import (
    accounts,
    alerts,
    audit,
    audit_verify,
    cases,
    exports,
    holds,
    projections,
    stats,
    suppressions,
    transactions,
    watchlist,
)

log = structlog.get_logger("vigil.query_api")

# The query API's routers, in the order their routes are matched.
ROUTES = (
    accounts,
    transactions,
    holds,
    stats,
    projections,
    alerts,
    cases,
    watchlist,
    suppressions,
    audit,
    audit_verify,
    exports,
)


async def quarantine_reasons(store: ReadStore) -> list[str]:
    async with store.connection() as conn:
        return reasons(await list_quarantined(conn))


def create_query_app(settings: Settings) -> FastAPI:
    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await asyncio.to_thread(prepare_read_models, settings)
        # The evidence route re-runs rules over the event store, decoded by the ledger's
        # mapper; it only reads through it. First, so a failure here leaves nothing open.
        app.state.ledger = await asyncio.to_thread(open_ledger, settings)
        await asyncio.to_thread(prepare_audit_tables, settings)
        # The one writable pool of the query side: audit reads append to the access log.
        app.state.access_trail = await AccessTrail.open(settings)
        app.state.access_log = app.state.access_trail.access_log
        store = await ReadStore.open(settings)
        cache = AccountCache.from_url(
            settings.resolved_redis_url(),
            prefix=settings.redis_key_prefix,
            timeout_s=settings.redis_timeout_s,
        )
        waiters = ChangeWaiters()
        listener = NotificationListener(settings, waiters)
        listener.start()
        app.state.read_side = ReadSide(store=store, cache=cache, waiters=waiters)
        app.state.readiness_checks = [
            ("postgres", store.answers, True),
            ("redis", cache.ping, False),
            # Without it `min_version` waits fall back to polling: slower, still right.
            ("notifications", listener.is_connected, False),
        ]
        app.state.degradations = [
            ("quarantine", lambda: quarantine_reasons(store)),
            ("projection lag", lambda: lag_reasons(store, settings.projection_lag_degraded_s)),
        ]
        lag_refresher = asyncio.create_task(refresh_lags(store), name="projection-lag")
        log.info("query_api_started")
        try:
            yield
        finally:
            lag_refresher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await lag_refresher
            await asyncio.to_thread(app.state.ledger.close)
            await app.state.access_trail.close()
            await listener.stop()
            await cache.close()
            await store.close()
            await app.state.rate_limiter.close()
            log.info("query_api_stopped")

    app = FastAPI(
        title="Vigil query API",
        version="1",
        description="Balances, statements, KPIs and projection lag; read-only. "
        "Every error is application/problem+json.",
        lifespan=lifespan,
        telemetry=TELEMETRY_OFF,
        docs_url=None,
        redoc_url=None,
        openapi_url=openapi_url(settings),
    )
    app.state.settings = settings
    app.state.verifier = TokenVerifier.from_settings(settings)
    app.state.readiness_checks = []
    install_problem_handlers(app)
    install_docs(app, settings)
    app.state.rate_limiter = RateLimiter(settings, "reads")
    install_middleware(
        app,
        app_name="query",
        body_max_bytes=settings.body_max_bytes,
        limiter=app.state.rate_limiter,
        verifier=app.state.verifier,
    )
    app.include_router(health_router)
    for routes in ROUTES:
        app.include_router(routes.router)
    install_console(app)
    return app
