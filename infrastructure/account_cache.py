"""Hot account rows in Redis, written by the balances projection after its commit and
only ever replaced by a newer version; read by the query API, which falls back to
PostgreSQL when Redis is down or behind."""

from __future__ import annotations

from typing import Any
from uuid import UUID

import orjson
import redis
import redis.asyncio as aioredis
import structlog
from psycopg import AsyncConnection
from psycopg.rows import dict_row

from domain.integrity import format_timestamp
from infrastructure.readmodel_schema import SCHEMA

log = structlog.get_logger("vigil.account_cache")

CACHE_TTL_S = 3600

# Replace only with a newer version: two workers (or a replay) never move it back.
_SET_IF_NEWER = """
local current = redis.call('GET', KEYS[1])
if current then
  local cached = cjson.decode(current)
  if tonumber(cached['version']) >= tonumber(ARGV[2]) then return 0 end
end
redis.call('SET', KEYS[1], ARGV[1], 'EX', ARGV[3])
return 1
"""


def account_cache_key(prefix: str, account_id: UUID | str) -> str:
    return f"{prefix}account:{account_id}"


def cached_row(row: dict[str, Any]) -> dict[str, Any]:
    return {
        "account_id": str(row["account_id"]),
        "owner": row["owner"],
        "branch": row["branch"],
        "currency": row["currency"],
        "status": row["status"],
        "balance_minor": row["balance_minor"],
        "overdraft_limit_minor": row["overdraft_limit_minor"],
        "version": row["version"],
        "opened_at": format_timestamp(row["opened_at"]),
        "updated_at": format_timestamp(row["updated_at"]),
        "last_transaction_at": (
            format_timestamp(row["last_transaction_at"]) if row["last_transaction_at"] else None
        ),
    }


async def cache_account_rows(
    conn: AsyncConnection[Any], cache: aioredis.Redis, prefix: str, account_ids: list[UUID]
) -> None:
    async with conn.cursor(row_factory=dict_row) as cursor:
        await cursor.execute(
            f"SELECT * FROM {SCHEMA}.accounts WHERE account_id = ANY(%s)", (account_ids,)
        )
        rows = await cursor.fetchall()
    try:
        pipe = cache.pipeline(transaction=False)
        for row in rows:
            pipe.eval(
                _SET_IF_NEWER,
                1,
                account_cache_key(prefix, row["account_id"]),
                orjson.dumps(cached_row(row)),
                row["version"],
                CACHE_TTL_S,
            )
        await pipe.execute()
    except (redis.RedisError, OSError) as error:
        # The cache is an optimisation: the query API reads PostgreSQL when it misses.
        log.warning("account_cache_write_failed", error=type(error).__name__)
