"""The watchlist as the query API reads it from the `watchlist` projection."""

from __future__ import annotations

from datetime import datetime
from typing import Final, TypedDict, cast
from uuid import UUID

from psycopg import sql

from infrastructure.readmodels.readstore import ReadStore
from infrastructure.readmodels.schema import SCHEMA

PAGE: Final = sql.SQL(
    "SELECT account_id, listed, reason, changed_at, changed_by, changed_by_role, version "
    "FROM {schema}.watchlist WHERE listed = %(listed)s AND account_id > %(after)s "
    "ORDER BY account_id LIMIT %(limit)s"
).format(schema=sql.Identifier(SCHEMA))


class WatchlistRow(TypedDict):
    """One row of `readmodel.watchlist`: an account's last listing change."""

    account_id: UUID
    listed: bool
    reason: str
    changed_at: datetime
    changed_by: str
    changed_by_role: str
    version: int


async def watchlist_page(
    store: ReadStore, listed: bool, after: UUID, limit: int
) -> list[WatchlistRow]:
    """Up to `limit + 1` entries listed (or taken off), by account id after `after`."""
    rows = await store.fetch_all(PAGE, {"listed": listed, "after": after, "limit": limit + 1})
    return cast(list[WatchlistRow], rows)
