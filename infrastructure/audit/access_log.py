"""Who read or exported what, when: the audit-access log and the register of exports,
written here and read back for the query API.

The only tables the query side writes (the API contract: it "may append to its own
audit-access log and write export files"). Rows are appended, never changed: the event
tables' own trigger refuses UPDATE, DELETE and TRUNCATE. An audit read that cannot be
recorded is refused (503), so no read of the history goes unrecorded.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Final, TypedDict, cast
from uuid import UUID

import orjson
import psycopg
import structlog
from psycopg import AsyncConnection
from psycopg.types.json import Jsonb
from psycopg_pool import AsyncConnectionPool, PoolTimeout, TooManyRequests

from domain.errors import Unavailable
from infrastructure.eventstore.schema import append_only_statements
from infrastructure.postgres.connect import open_async_pool, session_options
from infrastructure.postgres.locks import migrating
from infrastructure.readmodels.readstore import ReadStore
from infrastructure.settings import Settings

AUDIT_TABLES: Final = ("audit_access_log", "audit_exports")
# A detail is a few filters and ids; anything far larger is a bug, not a record.
DETAIL_BYTES_MAX: Final = 8_192
# Appends are one short INSERT each; two connections serve a busy auditor team.
WRITER_POOL_MAX: Final = 2
WRITER_WAIT_S: Final = 5.0
WRITER_STATEMENT_TIMEOUT_MS: Final = 5_000

log = structlog.get_logger("vigil.audit_log")

DDL: Final = """
CREATE TABLE IF NOT EXISTS public.audit_access_log (
    id bigserial PRIMARY KEY,
    at timestamptz NOT NULL DEFAULT now(),
    subject text NOT NULL,
    role text NOT NULL,
    action text NOT NULL,
    detail jsonb NOT NULL DEFAULT '{}'::jsonb,
    correlation_id text
);
CREATE TABLE IF NOT EXISTS public.audit_exports (
    export_id uuid PRIMARY KEY,
    range_from timestamptz NOT NULL,
    range_to timestamptz NOT NULL,
    account_id uuid,
    format text NOT NULL CHECK (format IN ('jsonl', 'csv')),
    total bigint NOT NULL,
    exported_by_subject text NOT NULL,
    exported_by_role text NOT NULL,
    exported_at timestamptz NOT NULL,
    directory text NOT NULL,
    manifest jsonb NOT NULL
);
"""

INSERT_ACCESS: Final = (
    "INSERT INTO public.audit_access_log (subject, role, action, detail, correlation_id) "
    "VALUES (%(subject)s, %(role)s, %(action)s, %(detail)s, %(correlation_id)s)"
)
INSERT_EXPORT: Final = (
    "INSERT INTO public.audit_exports (export_id, range_from, range_to, account_id, format, "
    "total, exported_by_subject, exported_by_role, exported_at, directory, manifest) VALUES "
    "(%(export_id)s, %(range_from)s, %(range_to)s, %(account_id)s, %(format)s, %(total)s, "
    "%(subject)s, %(role)s, %(exported_at)s, %(directory)s, %(manifest)s)"
)


@dataclass(frozen=True, slots=True)
class AccessRecord:
    subject: str
    role: str
    action: str
    detail: Mapping[str, Any]
    correlation_id: str | None = None

    def params(self) -> dict[str, Any]:
        encoded = orjson.dumps(dict(self.detail))
        assert len(encoded) <= DETAIL_BYTES_MAX, f"access detail of {len(encoded)} bytes"
        return {
            "subject": self.subject,
            "role": self.role,
            "action": self.action,
            "detail": Jsonb(orjson.loads(encoded)),
            "correlation_id": self.correlation_id,
        }


def ensure_audit_tables(conn: psycopg.Connection[Any]) -> None:
    """Create the tables and their append-only triggers if missing (idempotent); for
    `vigil migrate` and for services that migrate on start."""
    conn.execute(DDL)
    for statement in append_only_statements("public", AUDIT_TABLES):
        conn.execute(statement)


def prepare_audit_tables(settings: Settings) -> None:
    """`ensure_audit_tables` under the lock every migrating process takes."""
    if not settings.migrate_on_start:
        return
    with migrating(settings) as conn:
        ensure_audit_tables(conn)


def record_access_sync(conn: psycopg.Connection[Any], record: AccessRecord) -> None:
    conn.execute(INSERT_ACCESS, record.params())


def record_export_sync(conn: psycopg.Connection[Any], row: Mapping[str, Any]) -> None:
    """One `audit_exports` row; `row` has INSERT_EXPORT's keys, `manifest` a dict."""
    params = dict(row)
    params["manifest"] = Jsonb(params["manifest"])
    conn.execute(INSERT_EXPORT, params)


class AccessLog:
    """The query API's small writable pool: appends to the access log and export register."""

    def __init__(self, pool: AsyncConnectionPool[AsyncConnection[Any]]) -> None:
        self.pool = pool

    @classmethod
    async def open(cls, settings: Settings) -> AccessLog:
        pool: AsyncConnectionPool[AsyncConnection[Any]] = await open_async_pool(
            settings,
            "audit-log",
            size_max=WRITER_POOL_MAX,
            wait_s=WRITER_WAIT_S,
            options=session_options({"statement_timeout": WRITER_STATEMENT_TIMEOUT_MS}),
        )
        return cls(pool)

    async def close(self) -> None:
        await self.pool.close()

    @contextlib.asynccontextmanager
    async def _connection(self) -> AsyncIterator[AsyncConnection[Any]]:
        try:
            async with self.pool.connection() as conn:
                yield conn
        except (PoolTimeout, TooManyRequests, psycopg.OperationalError) as error:
            log.warning("audit_access_unrecorded", error=type(error).__name__)
            raise Unavailable("the audit-access log is not writable; retry") from error

    async def record(self, record: AccessRecord) -> None:
        async with self._connection() as conn:
            await conn.execute(INSERT_ACCESS, record.params())

    async def record_many(self, records: list[AccessRecord]) -> None:
        """Append all in one transaction (the access trail's batches)."""
        async with self._connection() as conn, conn.transaction(), conn.cursor() as cursor:
            await cursor.executemany(INSERT_ACCESS, [record.params() for record in records])


# --- Reading them back (the query API's read-only store) ------------------------------

# Filters are optional (NULL: any). Walked newest first by primary key: a rare subject or
# account costs a longer walk, bounded by the read store's statement timeout.
ACCESS_LOG_PAGE: Final = (
    "SELECT id, at, subject, role, action, detail, correlation_id FROM public.audit_access_log "
    "WHERE id < %(before)s "
    "AND (%(subject)s::text IS NULL OR subject = %(subject)s) "
    "AND (%(action)s::text IS NULL OR action = %(action)s) "
    "AND (%(account_id)s::text IS NULL OR detail->>'account_id' = %(account_id)s) "
    "ORDER BY id DESC LIMIT %(limit)s"
)


class AccessFilters(TypedDict):
    subject: str | None
    action: str | None
    account_id: str | None


EXPORTS_PAGE: Final = (
    "SELECT export_id, range_from, range_to, account_id, format, total, exported_by_subject, "
    "exported_by_role, exported_at FROM public.audit_exports "
    "WHERE (exported_at, export_id) < (%(at)s, %(id)s) "
    "ORDER BY exported_at DESC, export_id DESC LIMIT %(limit)s"
)
EXPORT_EXISTS: Final = "SELECT 1 FROM public.audit_exports WHERE export_id = %(id)s"
EXPORTS_FIRST_PAGE: Final = (
    "SELECT export_id, range_from, range_to, account_id, format, total, exported_by_subject, "
    "exported_by_role, exported_at FROM public.audit_exports "
    "ORDER BY exported_at DESC, export_id DESC LIMIT %(limit)s"
)


class AccessRow(TypedDict):
    """One row of `public.audit_access_log`."""

    id: int
    at: datetime
    subject: str
    role: str
    action: str
    detail: dict[str, Any]
    correlation_id: str | None


class ExportRow(TypedDict):
    """One row of `public.audit_exports`, without its directory and manifest."""

    export_id: UUID
    range_from: datetime
    range_to: datetime
    account_id: UUID | None
    format: str
    total: int
    exported_by_subject: str
    exported_by_role: str
    exported_at: datetime


async def access_log_page(
    store: ReadStore, before: int, limit: int, filters: AccessFilters | None = None
) -> list[AccessRow]:
    """Up to `limit + 1` entries, newest first, with ids below `before`, matching `filters`."""
    given = filters or AccessFilters(subject=None, action=None, account_id=None)
    params = {"before": before, "limit": limit + 1, **given}
    rows = await store.fetch_all(ACCESS_LOG_PAGE, params)
    return cast(list[AccessRow], rows)


async def exports_page(
    store: ReadStore, after: tuple[datetime, UUID] | None, limit: int
) -> list[ExportRow]:
    """Up to `limit + 1` exports, newest first, strictly below `after` (time, id)."""
    if after is None:
        rows = await store.fetch_all(EXPORTS_FIRST_PAGE, {"limit": limit + 1})
    else:
        at, export_id = after
        rows = await store.fetch_all(EXPORTS_PAGE, {"at": at, "id": export_id, "limit": limit + 1})
    return cast(list[ExportRow], rows)


async def export_registered(store: ReadStore, export_id: UUID) -> bool:
    """Whether the export is in the register (its files may still be elsewhere)."""
    rows = await store.fetch_all(EXPORT_EXISTS, {"id": export_id})
    return bool(rows)
