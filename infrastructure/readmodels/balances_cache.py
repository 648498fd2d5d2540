"""Hot account rows in Redis, written by the balances projection after its commit and
only ever replaced by a newer version; read by the query API, which falls back to
PostgreSQL when Redis is down or behind. This module owns the key format and the entry's
encoding, both ways.

Reading is best effort: a Redis error or timeout is a miss and never fails the request;
after one, Redis is left alone briefly instead of paying its timeout on every request.
An entry that does not parse is a miss.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any, Final
from uuid import UUID

import orjson
import redis
import redis.asyncio as aioredis
import structlog
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from infrastructure.readmodels.readers.accounts import AccountRecord
from infrastructure.readmodels.schema import SCHEMA

log = structlog.get_logger("vigil.account_cache")
read_log = structlog.get_logger("vigil.query.cache")

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


# After a failure, skip Redis for this long (each request would otherwise wait out the
# socket timeout while Redis is down).
CACHE_BACKOFF_S: Final = 2.0


def account_cache_key(prefix: str, account_id: UUID | str) -> str:
    """The Redis key of an account's entry."""
    return f"{prefix}account:{account_id}"


def _utc_text(column: str) -> str:
    """A timestamp as `format_timestamp` writes it (domain/integrity.py)."""
    return f"""to_char({column} AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"')"""


def cache_entry_columns(alias: str) -> str:
    """The select list of an account's cached entry (account id, version, entry), from the
    accounts row named `alias`: read back as a row is (AccountRecord.from_mapping). The
    balances projection returns it from the statements that write the rows."""
    a = f"{alias}."
    fields = ", ".join(
        f"'{name}', {a}{name}"
        for name in (
            "account_id",
            "owner",
            "branch",
            "currency",
            "status",
            "balance_minor",
            "held_minor",
            "overdraft_limit_minor",
            "version",
        )
    )
    times = ", ".join(
        f"'{name}', {_utc_text(a + name)}"
        for name in ("opened_at", "updated_at", "last_transaction_at")
    )
    return f"{a}account_id::text, {a}version, json_build_object({fields}, {times})::text"


# An entry: the account id as text, its version, and the JSON the query API reads.
CacheEntry = tuple[str, int, str]

# The entries of accounts as their committed rows hold them: what the statements' returned
# entries must equal (tests read both).
CACHED_ROWS = (
    f"SELECT {cache_entry_columns('a')} FROM {SCHEMA}.accounts AS a "
    "WHERE a.account_id = ANY(%b::uuid[])"
)


def newest_entries(*parts: list[CacheEntry]) -> dict[str, CacheEntry]:
    """The newest entry of each account among `parts`."""
    newest: dict[str, CacheEntry] = {}
    for part in parts:
        for entry in part:
            held = newest.get(entry[0])
            if held is None or held[1] < entry[1]:
                newest[entry[0]] = entry
    return newest


async def cache_entries(cache: aioredis.Redis, prefix: str, entries: list[CacheEntry]) -> None:
    """Write the entries, each only over an older version. Call it after the commit that
    wrote the rows: the cache never shows what PostgreSQL may still roll back."""
    set_if_newer = cache.register_script(_SET_IF_NEWER)  # EVALSHA, loaded when missing
    try:
        for start in range(0, len(entries), SCRIPT_KEYS_MAX):
            chunk = entries[start : start + SCRIPT_KEYS_MAX]
            keys = [account_cache_key(prefix, account_id) for account_id, _, _ in chunk]
            args: list[Any] = [x for _, version, entry in chunk for x in (entry, version)]
            await set_if_newer(keys=keys, args=[*args, CACHE_TTL_S])
    except (redis.RedisError, OSError) as error:
        # The cache is an optimisation: the query API reads PostgreSQL when it misses.
        log.warning("account_cache_write_failed", error=type(error).__name__)


class AccountCache:
    """The query API's reading side of the cache: an account's entry, or None for a miss."""

    def __init__(self, client: aioredis.Redis, *, prefix: str, timeout_s: float) -> None:
        self.client = client
        self.prefix = prefix
        self.timeout_s = timeout_s
        self._down_until_s = 0.0

    @classmethod
    def from_url(cls, url: str, *, prefix: str, timeout_s: float) -> AccountCache:
        client = aioredis.Redis.from_url(
            url,
            socket_timeout=timeout_s,
            socket_connect_timeout=timeout_s,
            # The library retries three times by default: that would triple the wait
            # on a dead cache that PostgreSQL can replace at once.
            retry=Retry(NoBackoff(), 0),
            retry_on_timeout=False,
        )
        return cls(client, prefix=prefix, timeout_s=timeout_s)

    async def close(self) -> None:
        await self.client.aclose()

    async def get(self, account_id: UUID) -> AccountRecord | None:
        if time.monotonic() < self._down_until_s:
            return None
        try:
            raw = await asyncio.wait_for(
                self.client.get(account_cache_key(self.prefix, account_id)), self.timeout_s
            )
        except (redis.RedisError, OSError, TimeoutError) as error:
            self._down_until_s = time.monotonic() + CACHE_BACKOFF_S
            read_log.warning("account_cache_unavailable", error=type(error).__name__)
            return None
        if raw is None:
            return None
        return _parse(raw, account_id)

    async def ping(self) -> bool:
        return bool(await self.client.ping())


def _parse(raw: bytes | str, account_id: UUID) -> AccountRecord | None:
    try:
        data = orjson.loads(raw)
        record = AccountRecord.from_mapping(data)
    except (orjson.JSONDecodeError, KeyError, TypeError, ValueError, AttributeError) as error:
        read_log.warning("account_cache_entry_unreadable", error=type(error).__name__)
        return None
    if record.account_id != account_id:
        read_log.warning("account_cache_entry_mismatched", account_id=str(account_id))
        return None
    return record
