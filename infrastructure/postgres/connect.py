"""One way to open a PostgreSQL connection.

Every connection and pool a Vigil process opens comes from here (the event store's own
pool is configured through its environment, `infrastructure/eventstore/ledger.py`). Each
is named `vigil-<purpose>`, so `pg_stat_activity` shows who holds what; each gives up
connecting after `VIGIL_DB_CONNECT_TIMEOUT_S` instead of the driver's wait forever; each
carries the session options its site asks for, and no others.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Final

import psycopg
from psycopg_pool import AsyncConnectionPool

from infrastructure.settings import Settings

# For the services' own connections: PostgreSQL's JIT compiles statements over big arrays
# (a group's or a batch's thousands of ids look expensive) for ~70 ms, to run them in a few.
SESSION_OPTIONS: Final = "-c jit=off"

APPLICATION_NAME_PREFIX: Final = "vigil-"
# PostgreSQL truncates application_name past 63 bytes (NAMEDATALEN - 1).
APPLICATION_NAME_BYTES_MAX: Final = 63


def session_options(values: Mapping[str, str | int]) -> str:
    """`-c name=value` for each session setting, as libpq's `options` takes them."""
    return " ".join(f"-c {name}={value}" for name, value in values.items())


def store_session_options(lock_timeout_s: float) -> str:
    """The event store's sessions: SESSION_OPTIONS, and two of their own.

    The library sets lock_timeout in each transaction, a statement of its own before the
    table lock; set once for the session, it bounds that lock the same way. Generic plans:
    PostgreSQL planned the group-state query again at every execute (a custom plan, about
    0.5 ms, for a query over arrays that runs in a tenth of that); the store's statements
    look rows up by key, which a generic plan does as well."""
    own = session_options(
        {"lock_timeout": f"{lock_timeout_s:g}s", "plan_cache_mode": "force_generic_plan"}
    )
    return f"{SESSION_OPTIONS} {own}"


def connection_kwargs(
    settings: Settings, purpose: str, *, options: str = "", **kwargs: Any
) -> dict[str, Any]:
    """The keyword arguments of every connection: timeout, name, session options."""
    name = f"{APPLICATION_NAME_PREFIX}{purpose}"
    assert purpose, "a connection says what it is for"
    assert purpose.isascii(), purpose
    assert not any(c.isspace() for c in purpose), purpose
    assert len(name) <= APPLICATION_NAME_BYTES_MAX, name
    result: dict[str, Any] = {
        "connect_timeout": settings.db_connect_timeout_s,
        "application_name": name,
        **kwargs,
    }
    if options:
        result["options"] = options
    return result


def connect(
    settings: Settings,
    purpose: str,
    *,
    autocommit: bool = False,
    options: str = "",
    **kwargs: Any,
) -> psycopg.Connection[Any]:
    """A connection to the settings' database for `purpose` (`vigil-<purpose>`)."""
    return psycopg.connect(
        settings.resolved_database_url(),
        **connection_kwargs(settings, purpose, options=options, autocommit=autocommit, **kwargs),
    )


async def connect_async(
    settings: Settings,
    purpose: str,
    *,
    autocommit: bool = False,
    options: str = "",
    **kwargs: Any,
) -> psycopg.AsyncConnection[Any]:
    """`connect`, for asyncio."""
    return await psycopg.AsyncConnection.connect(
        settings.resolved_database_url(),
        **connection_kwargs(settings, purpose, options=options, autocommit=autocommit, **kwargs),
    )


async def open_async_pool(
    settings: Settings,
    purpose: str,
    *,
    size_max: int,
    wait_s: float,
    waiting_max: int = 0,
    options: str = "",
    **kwargs: Any,
) -> AsyncConnectionPool[Any]:
    """An open pool of autocommit connections for `purpose`, holding one to `size_max`;
    a checkout waits at most `wait_s` (then `PoolTimeout`), behind at most `waiting_max`
    others (0: no bound). Waits for its first connection, up to the connect timeout."""
    assert size_max >= 1, size_max
    assert wait_s > 0, wait_s
    assert waiting_max >= 0, waiting_max
    pool: AsyncConnectionPool[Any] = AsyncConnectionPool(
        settings.resolved_database_url(),
        kwargs=connection_kwargs(settings, purpose, options=options, autocommit=True, **kwargs),
        min_size=1,
        max_size=size_max,
        timeout=wait_s,
        max_waiting=waiting_max,
        # One round trip per checkout buys a clean answer after a database restart
        # instead of one failure per stale connection.
        check=AsyncConnectionPool.check_connection,
        name=purpose,
        open=False,
    )
    await pool.open(wait=True, timeout=float(settings.db_connect_timeout_s))
    return pool
