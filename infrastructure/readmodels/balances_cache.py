"""Hot account rows in Redis, written by the balances projection after its commit and
only ever replaced by a newer version; read by the query API, which falls back to
PostgreSQL when Redis is down or behind."""

from __future__ import annotations

from typing import Any
from uuid import UUID

import redis
import redis.asyncio as aioredis
import structlog
from psycopg import AsyncConnection

from infrastructure.readmodels.schema import SCHEMA

log = structlog.get_logger("vigil.account_cache")

CACHE_TTL_S = 3600
# Accounts written by one script call: Redis runs a script alone, so keep each one short.
SCRIPT_KEYS_MAX = 500

# Each key is replaced only with a newer version: two workers (or a replay) never move it
# back. An entry that does not parse is replaced. KEYS[i] takes ARGV[2i-1] at version
# ARGV[2i]; the last ARGV is the TTL. Returns how many were written.
_SET_IF_NEWER = """
local ttl = ARGV[#ARGV]
local written = 0
for i, key in ipairs(KEYS) do
  local version = tonumber(ARGV[2 * i])
  local current = redis.call('GET', key)
  local newer = true
  if current then
    local ok, cached = pcall(cjson.decode, current)
    local cached_version = ok and type(cached) == 'table' and tonumber(cached['version'])
    if cached_version and cached_version >= version then newer = false end
  end
  if newer then
    redis.call('SET', key, ARGV[2 * i - 1], 'EX', ttl)
    written = written + 1
  end
end
return written
"""


def account_cache_key(prefix: str, account_id: UUID | str) -> str:
    return f"{prefix}account:{account_id}"


def _utc_text(column: str) -> str:
    """A timestamp as `format_timestamp` writes it (domain/integrity.py)."""
    return f"""to_char({column} AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"')"""


# The cached entry, written by PostgreSQL: the query API reads it as it reads a row
# (AccountRecord.from_mapping).
CACHED_ROWS = f"""
SELECT account_id::text, version, json_build_object(
    'account_id', account_id, 'owner', owner, 'branch', branch, 'currency', currency,
    'status', status, 'balance_minor', balance_minor,
    'overdraft_limit_minor', overdraft_limit_minor, 'version', version,
    'opened_at', {_utc_text("opened_at")}, 'updated_at', {_utc_text("updated_at")},
    'last_transaction_at', {_utc_text("last_transaction_at")})::text
FROM {SCHEMA}.accounts WHERE account_id = ANY(%b::uuid[])
"""


async def cache_account_rows(
    conn: AsyncConnection[Any], cache: aioredis.Redis, prefix: str, account_ids: list[UUID]
) -> None:
    cursor = await conn.execute(CACHED_ROWS, (account_ids,))
    rows = await cursor.fetchall()
    set_if_newer = cache.register_script(_SET_IF_NEWER)  # EVALSHA, loaded when missing
    try:
        for start in range(0, len(rows), SCRIPT_KEYS_MAX):
            chunk = rows[start : start + SCRIPT_KEYS_MAX]
            keys = [account_cache_key(prefix, account_id) for account_id, _, _ in chunk]
            args: list[Any] = [x for _, version, entry in chunk for x in (entry, version)]
            await set_if_newer(keys=keys, args=[*args, CACHE_TTL_S])
    except (redis.RedisError, OSError) as error:
        # The cache is an optimisation: the query API reads PostgreSQL when it misses.
        log.warning("account_cache_write_failed", error=type(error).__name__)
