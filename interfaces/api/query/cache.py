"""Hot balances cached in Redis by the balances projection; read here, never written.

Best effort: a Redis error or timeout falls back to PostgreSQL and never fails the
request; after one, Redis is left alone briefly instead of paying its timeout on every
request. An entry that does not parse is a miss.
"""

from __future__ import annotations

import asyncio
import time
from typing import Final
from uuid import UUID

import orjson
import redis.asyncio as aioredis
import structlog
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError

from interfaces.api.query.views import AccountRecord

# After a failure, skip Redis for this long (each request would otherwise wait out the
# socket timeout while Redis is down).
CACHE_BACKOFF_S: Final = 2.0

from infrastructure.readmodels.balances_cache import account_cache_key  # noqa: E402

log = structlog.get_logger("vigil.query.cache")


class AccountCache:
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
        except (RedisError, OSError, TimeoutError) as error:
            self._down_until_s = time.monotonic() + CACHE_BACKOFF_S
            log.warning("account_cache_unavailable", error=type(error).__name__)
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
        log.warning("account_cache_entry_unreadable", error=type(error).__name__)
        return None
    if record.account_id != account_id:
        log.warning("account_cache_entry_mismatched", account_id=str(account_id))
        return None
    return record
