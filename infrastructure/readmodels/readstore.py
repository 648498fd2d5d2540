"""The query API's PostgreSQL side: a pool of read-only connections over the read models.

Connections default to read-only transactions (`default_transaction_read_only`), so a
query that tried to write would fail loudly: the query side never changes domain state
or read models (by design). Driver failures leave as 503 `unavailable`, never a 500.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Any, Final, LiteralString

import psycopg
import structlog
from psycopg import AsyncConnection, sql
from psycopg.abc import Params
from psycopg.rows import DictRow, dict_row
from psycopg_pool import AsyncConnectionPool, PoolTimeout, TooManyRequests

from domain.errors import Unavailable
from infrastructure.postgres.connect import open_async_pool, session_options
from infrastructure.postgres.locks import migrating
from infrastructure.readmodels.schema import ensure_read_models
from infrastructure.settings import Settings

# A query slower than this is a bug or an overload; cut it off rather than pile up.
STATEMENT_TIMEOUT_MS: Final = 5_000

Statement = LiteralString | sql.SQL | sql.Composed

log = structlog.get_logger("vigil.query.readstore")


def prepare_read_models(settings: Settings) -> None:
    """Create missing read-model tables, under the lock every migrating process takes."""
    if not settings.migrate_on_start:
        return  # `vigil migrate` made them, as the owning role
    with migrating(settings) as conn:
        ensure_read_models(conn)


class ReadStore:
    def __init__(self, pool: AsyncConnectionPool[AsyncConnection[DictRow]]) -> None:
        self.pool = pool

    @classmethod
    async def open(cls, settings: Settings) -> ReadStore:
        # jit off as on the services' other connections: `GET /v1/projections` (its
        # per-projection subqueries look expensive to the planner) spent 150 ms of its
        # 170 ms compiling, and ran in 20.
        options = session_options(
            {
                "default_transaction_read_only": "on",
                "statement_timeout": STATEMENT_TIMEOUT_MS,
                "jit": "off",
            }
        )
        pool: AsyncConnectionPool[AsyncConnection[DictRow]] = await open_async_pool(
            settings,
            "query",
            size_max=settings.db_pool_size,
            wait_s=settings.query_pool_wait_s,
            waiting_max=settings.query_pool_waiting_max,
            options=options,
            row_factory=dict_row,
        )
        return cls(pool)

    async def close(self) -> None:
        await self.pool.close()

    @contextlib.asynccontextmanager
    async def connection(self) -> AsyncIterator[AsyncConnection[DictRow]]:
        try:
            async with self.pool.connection() as conn:
                yield conn
        except (PoolTimeout, TooManyRequests) as error:
            log.warning("read_store_busy", error=type(error).__name__)
            raise Unavailable("the read store is busy; retry") from error
        except psycopg.OperationalError as error:
            log.warning("read_store_failed", error=type(error).__name__)
            raise Unavailable("the read store is not reachable; retry") from error

    @contextlib.asynccontextmanager
    async def snapshot(self) -> AsyncIterator[AsyncConnection[DictRow]]:
        """One read-only REPEATABLE READ transaction: several queries, one consistent view."""
        async with self.connection() as conn, conn.transaction():
            await conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ READ ONLY")
            yield conn

    async def fetch_one(
        self, query: Statement, params: Params | None = None
    ) -> dict[str, Any] | None:
        async with self.connection() as conn:
            cursor = await conn.execute(query, params)
            return await cursor.fetchone()

    async def fetch_all(
        self, query: Statement, params: Params | None = None
    ) -> list[dict[str, Any]]:
        async with self.connection() as conn:
            cursor = await conn.execute(query, params)
            return await cursor.fetchall()

    async def answers(self) -> bool:
        row = await self.fetch_one("SELECT 1 AS ok")
        return row is not None and row["ok"] == 1
