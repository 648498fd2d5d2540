"""The balances projection's Redis entries on real PostgreSQL and Redis: each is the
account's row as the query API reads it from PostgreSQL, and only a newer version
replaces one."""

from __future__ import annotations

import asyncio
from typing import Any
from uuid import UUID, uuid4

import orjson
import psycopg
import pytest
import redis
import redis.asyncio as aioredis
from psycopg.rows import dict_row

from application.commands import OpenAccount
from application.ledger import Ledger
from domain.integrity import format_timestamp
from infrastructure.readmodels.balances_cache import (
    CACHED_ROWS,
    SCRIPT_KEYS_MAX,
    account_cache_key,
    cache_entries,
)
from infrastructure.readmodels.readers.accounts import AccountRecord
from infrastructure.settings import Settings
from tests.integration.support import run, stored_envelopes
from tests.integration.test_projection_store import apply_all, busy_history, seed

pytestmark = pytest.mark.integration


def write_cache(settings: Settings, account_ids: list[UUID]) -> None:
    async def write() -> None:
        cache = aioredis.Redis.from_url(settings.resolved_redis_url())
        try:
            async with await psycopg.AsyncConnection.connect(
                settings.resolved_database_url(), autocommit=True
            ) as conn:
                cursor = await conn.execute(CACHED_ROWS, (account_ids,))
                entries = await cursor.fetchall()
                await cache_entries(cache, settings.redis_key_prefix, entries)
        finally:
            await cache.aclose()

    asyncio.run(write())


def stored_rows(settings: Settings) -> dict[UUID, dict[str, Any]]:
    with psycopg.connect(settings.resolved_database_url(), row_factory=dict_row) as conn:
        return {r["account_id"]: r for r in conn.execute("SELECT * FROM readmodel.accounts")}


def cached(settings: Settings, client: redis.Redis, account_id: UUID) -> Any:
    raw = client.get(account_cache_key(settings.redis_key_prefix, account_id))
    return None if raw is None else orjson.loads(raw)  # type: ignore[arg-type]


def test_each_entry_reads_as_the_accounts_row(
    ledger: Ledger, settings: Settings, redis_client: redis.Redis
) -> None:
    accounts = [*seed(ledger), *busy_history(ledger)]
    asyncio.run(apply_all(settings, "balances", stored_envelopes(ledger)))
    write_cache(settings, accounts)
    rows = stored_rows(settings)
    assert set(rows) == set(accounts)
    for account_id, row in rows.items():
        entry = cached(settings, redis_client, account_id)
        assert AccountRecord.from_mapping(entry) == AccountRecord.from_mapping(row)
        for column in ("opened_at", "updated_at", "last_transaction_at"):
            moment = row[column]
            assert entry[column] == (None if moment is None else format_timestamp(moment))


def test_only_a_newer_version_replaces_an_entry_and_unreadable_ones_are_replaced(
    ledger: Ledger, settings: Settings, redis_client: redis.Redis
) -> None:
    newer, older, broken = seed(ledger)[0], *busy_history(ledger)[:2]
    asyncio.run(apply_all(settings, "balances", stored_envelopes(ledger)))
    rows = stored_rows(settings)
    ahead = {"version": rows[newer]["version"] + 1, "balance_minor": 1}
    redis_client.set(account_cache_key(settings.redis_key_prefix, newer), orjson.dumps(ahead))
    redis_client.set(account_cache_key(settings.redis_key_prefix, broken), b"{not json")
    write_cache(settings, [newer, older, broken])
    assert cached(settings, redis_client, newer) == ahead
    for account_id in (older, broken):
        assert cached(settings, redis_client, account_id)["version"] == rows[account_id]["version"]


def test_many_accounts_are_written_in_several_script_calls(
    ledger: Ledger, settings: Settings, redis_client: redis.Redis
) -> None:
    ids = [uuid4() for _ in range(SCRIPT_KEYS_MAX + 7)]
    run(ledger, *(OpenAccount(i, "Many", "001", "GBP", 0) for i in ids))
    asyncio.run(apply_all(settings, "balances", stored_envelopes(ledger)))
    write_cache(settings, ids)
    assert all(cached(settings, redis_client, i)["version"] == 1 for i in ids)


def read_entries(settings: Settings, account_ids: list[UUID]) -> dict[str, Any]:
    with psycopg.connect(settings.resolved_database_url()) as conn:
        return {row[0]: row for row in conn.execute(CACHED_ROWS, (account_ids,))}


@pytest.mark.parametrize("batch_size", [1, 7, 10_000])
def test_the_balances_projection_returns_each_written_account_as_a_read_would_cache_it(
    ledger: Ledger, settings: Settings, batch_size: int
) -> None:
    """The worker caches the entries the projection's own statements return: the newest
    of each account written, equal to what reading the committed row gives."""
    accounts = [*seed(ledger), *busy_history(ledger)]
    events = stored_envelopes(ledger)
    returned: dict[str, Any] = {}
    for start in range(0, len(events), batch_size):
        result = asyncio.run(apply_all(settings, "balances", events[start : start + batch_size]))
        returned.update(result.cached)
    assert returned == read_entries(settings, accounts)
    # Applied again, the events write nothing and return nothing to cache.
    again = asyncio.run(apply_all(settings, "balances", events))
    assert again.cached == {}
    assert again.duplicates == len(events)
