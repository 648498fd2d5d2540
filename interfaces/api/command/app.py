"""The command API: the only way money moves. Separate app, process and port from queries."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager

import structlog
from fastapi import FastAPI
from prometheus_client import REGISTRY
from prometheus_client.core import CounterMetricFamily, Metric
from prometheus_client.registry import Collector

from application.compliance import Compliance
from application.group_commit import GroupCommitter
from application.ledger import Ledger
from infrastructure.audit.access_log import prepare_audit_tables
from infrastructure.audit.access_trail import AccessTrail
from infrastructure.eventstore.ledger import open_ledger
from infrastructure.eventstore.reply_cache import RedisReplyCache
from infrastructure.monitoring.rules_config import screening_of
from infrastructure.ops.quarantine import list_quarantined_sync, reasons
from infrastructure.settings import Settings
from interfaces.api.command.routes import (
    accounts,
    batches,
    cases,
    holds,
    reviews,
    suppressions,
    transfers,
    watchlist,
)
from interfaces.api.http.auth import TokenVerifier
from interfaces.api.http.docs import install_docs, openapi_url
from interfaces.api.http.fast_routes import FastRoutes
from interfaces.api.http.health import health_router
from interfaces.api.http.middleware import TELEMETRY_OFF, install_middleware
from interfaces.api.http.problems import install_problem_handlers
from interfaces.api.http.ratelimit import RateLimiter

log = structlog.get_logger("vigil.command_api")

# The committer thread waits on PostgreSQL a dozen times per group; each time it needs the
# interpreter back from the thread serving HTTP, which by default keeps it up to 5 ms.
GIL_SWITCH_INTERVAL_S = 0.0005

# The routes a teller's every request takes, served past FastAPI's router and general
# dependency solver (`interfaces/api/http/fast_routes.py`); the rest go the usual way.
FAST_ROUTES = (
    "/v1/transfers",
    "/v1/accounts/{account_id}/deposits",
    "/v1/accounts/{account_id}/withdrawals",
    "/v1/batches",
)


class CommitCollector(Collector):
    """The group committer's counters, read when Prometheus scrapes: how many groups and
    commands it committed, and how many groups it had to judge again from the store (a
    lost race with another process, or a write that failed under a group judged ahead)."""

    def __init__(self, committer: GroupCommitter) -> None:
        self.committer = committer

    def collect(self) -> Iterator[Metric]:
        counters = (
            ("vigil_commit_groups", "Groups committed.", self.committer.groups_committed),
            ("vigil_commit_commands", "Commands committed.", self.committer.commands_committed),
            (
                "vigil_commit_groups_judged_again",
                "Groups judged again from the store after a lost race or a failed write.",
                self.committer.ledger.groups_judged_again,
            ),
        )
        for name, documentation, value in counters:
            yield CounterMetricFamily(name, documentation, value=value)


def create_command_app(settings: Settings) -> FastAPI:
    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        sys.setswitchinterval(GIL_SWITCH_INTERVAL_S)
        cache = RedisReplyCache.from_url(
            settings.resolved_redis_url(),
            prefix=settings.redis_key_prefix,
            ttl_s=settings.reply_cache_ttl_s,
            timeout_s=settings.redis_timeout_s,
        )
        ledger = await asyncio.to_thread(open_ledger, settings, cache, screening_of(settings))
        app.state.ledger = ledger
        app.state.committer = GroupCommitter(
            ledger,
            window_s=settings.group_commit_window_ms / 1000,
            max_commands=settings.group_commit_max,
            interval_s=settings.group_commit_interval_ms / 1000,
        )
        app.state.compliance = Compliance(ledger)
        # Refusals (401, 403) go to the audit-access log, in batches.
        await asyncio.to_thread(prepare_audit_tables, settings)
        app.state.access_trail = await AccessTrail.open(settings)
        collector = CommitCollector(app.state.committer)
        REGISTRY.register(collector)
        app.state.readiness_checks = [
            ("postgres", lambda: asyncio.to_thread(_store_answers, ledger), True),
            ("redis", lambda: asyncio.to_thread(cache.ping), False),
        ]
        app.state.degradations = [
            ("quarantine", lambda: asyncio.to_thread(_quarantine_reasons, ledger))
        ]
        log.info("command_api_started")
        try:
            yield
        finally:
            REGISTRY.unregister(collector)
            app.state.committer.close()
            ledger.close()
            cache.client.close()
            await app.state.rate_limiter.close()
            await app.state.access_trail.close()
            log.info("command_api_stopped")

    app = FastAPI(
        title="Vigil command API",
        version="1",
        description="Open accounts and move money. Every error is application/problem+json.",
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
    # Innermost, so that correlation ids, the access log and the body limit see every request.
    if settings.fast_routes:
        app.add_middleware(FastRoutes, owner=app, paths=FAST_ROUTES)
    app.state.rate_limiter = RateLimiter(settings, "commands")
    install_middleware(
        app,
        app_name="command",
        body_max_bytes=settings.body_max_bytes,
        limiter=app.state.rate_limiter,
        verifier=app.state.verifier,
    )
    # Routes are matched in order, one pattern after the other: the money routes first.
    app.include_router(transfers.router)
    app.include_router(batches.router)
    app.include_router(accounts.router)
    app.include_router(health_router)
    app.include_router(cases.router)
    app.include_router(watchlist.router)
    app.include_router(holds.router)
    app.include_router(reviews.router)
    app.include_router(suppressions.router)
    return app


def _quarantine_reasons(ledger: Ledger) -> list[str]:
    with ledger.recorder.datastore.get_connection() as conn:  # type: ignore[attr-defined]
        return reasons(list_quarantined_sync(conn))


def _store_answers(ledger: Ledger) -> bool:
    with ledger.recorder.datastore.transaction(commit=False) as curs:  # type: ignore[attr-defined]
        curs.execute("SELECT 1")
        return curs.fetchone() is not None
