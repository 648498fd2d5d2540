"""Advisory locks: their keys, all in one place so no two parts share one by accident,
and the migration lock every process takes before it creates tables."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Iterator
from typing import Any, Final

import psycopg

from infrastructure.postgres.connect import connect
from infrastructure.settings import Settings

# Any fixed number: all Vigil processes that migrate take this lock first, so two
# starting at once do not race on CREATE TABLE / CREATE TYPE.
MIGRATION_LOCK_ID: Final = 7_270_401
# First key of the two-key advisory lock one relay holds per topic (second key: the
# topic's hash), so a second relay for the same topic waits instead of double-publishing.
RELAY_LOCK_CLASS: Final = 7_270_402
# One checkpointer per database: a second one waits for this advisory lock.
CHECKPOINT_LOCK_ID: Final = 7_270_404

# One-key and two-key locks are separate spaces in PostgreSQL; distinct all the same,
# so a reader of pg_locks never has to ask which is which.
assert len({MIGRATION_LOCK_ID, RELAY_LOCK_CLASS, CHECKPOINT_LOCK_ID}) == 3


@contextlib.contextmanager
def migration_lock(conn: psycopg.Connection[Any]) -> Iterator[None]:
    """Hold the migration lock (a session advisory lock) on `conn` for the block."""
    conn.execute("SELECT pg_advisory_lock(%s)", (MIGRATION_LOCK_ID,))
    try:
        yield
    finally:
        conn.execute("SELECT pg_advisory_unlock(%s)", (MIGRATION_LOCK_ID,))


@contextlib.asynccontextmanager
async def migration_lock_async(conn: psycopg.AsyncConnection[Any]) -> AsyncIterator[None]:
    """`migration_lock` on an async connection."""
    await conn.execute("SELECT pg_advisory_lock(%s)", (MIGRATION_LOCK_ID,))
    try:
        yield
    finally:
        await conn.execute("SELECT pg_advisory_unlock(%s)", (MIGRATION_LOCK_ID,))


@contextlib.contextmanager
def migrating(settings: Settings) -> Iterator[psycopg.Connection[Any]]:
    """A connection of its own, holding the migration lock, for creating tables."""
    with connect(settings, "migrate", autocommit=True) as conn, migration_lock(conn):
        yield conn
