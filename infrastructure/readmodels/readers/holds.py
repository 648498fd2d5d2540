"""Holds as the query API reads them from `readmodel.holds`: one, or an account's page."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Final
from uuid import UUID

from psycopg import sql

from infrastructure.readmodels.readstore import ReadStore
from infrastructure.readmodels.schema import SCHEMA

HOLD_COLUMNS: Final = sql.SQL(
    "h.hold_id, h.account_id, h.to_account_id, h.amount_minor, h.currency, h.status, "
    "h.reference, h.review, h.expires_at, h.placed_at, h.ended_at, h.captured_minor, "
    "h.capture_transaction_id, h.end_reason, h.version, a.branch"
)
HOLD_BY_ID: Final = sql.SQL(
    "SELECT {columns} FROM {schema}.holds h JOIN {schema}.accounts a USING (account_id) "
    "WHERE h.hold_id = %(hold_id)s"
).format(columns=HOLD_COLUMNS, schema=sql.Identifier(SCHEMA))


async def fetch_hold(store: ReadStore, hold_id: UUID) -> dict[str, Any] | None:
    """The hold with its account's branch (to scope tellers), or None."""
    return await store.fetch_one(HOLD_BY_ID, {"hold_id": hold_id})


async def holds_page(
    store: ReadStore,
    account_id: UUID,
    status: str | None,
    after: tuple[datetime, UUID] | None,
    limit: int,
) -> list[dict[str, Any]]:
    """Up to `limit + 1` of the account's holds, newest first, below `after`."""
    conditions: list[sql.Composable] = [sql.SQL("h.account_id = %(account_id)s")]
    params: dict[str, Any] = {"account_id": account_id, "limit": limit + 1, "status": status}
    if status is not None:
        conditions.append(sql.SQL("h.status = %(status)s"))
    if after is not None:
        conditions.append(sql.SQL("(h.placed_at, h.hold_id) < (%(after_at)s, %(after_id)s)"))
        params["after_at"], params["after_id"] = after
    query = sql.SQL(
        "SELECT {columns} FROM {schema}.holds h JOIN {schema}.accounts a USING (account_id) "
        "WHERE {where} ORDER BY h.placed_at DESC, h.hold_id DESC LIMIT %(limit)s"
    ).format(
        columns=HOLD_COLUMNS,
        schema=sql.Identifier(SCHEMA),
        where=sql.SQL(" AND ").join(conditions),
    )
    return await store.fetch_all(query, params)
