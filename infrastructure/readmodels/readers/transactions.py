"""An account's statement from `readmodel.transactions`: its lines, newest first, and
whether the statements projection has reached a version of the account."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Final, TypedDict, cast
from uuid import UUID

from psycopg import sql

from infrastructure.eventstore.schema import EVENTS_TABLE
from infrastructure.readmodels.readstore import ReadStore
from infrastructure.readmodels.schema import SCHEMA

STATEMENTS_PROJECTION: Final = "statements"

_identifiers: Final = {
    "schema": sql.Identifier(SCHEMA),
    "events": sql.Identifier(EVENTS_TABLE),
}
# The statement has reached version N when a line at N or later is there, or when the
# statements projection has applied the event at N: not every version is a movement (a
# freeze makes no line), so the lines alone could wait forever for it.
STATEMENT_REACHED: Final = sql.SQL(
    "SELECT EXISTS (SELECT 1 FROM {schema}.transactions "
    "  WHERE account_id = %(account_id)s AND version >= %(version)s) "
    "OR EXISTS (SELECT 1 FROM {events} e JOIN {schema}.projection_positions p "
    "  ON p.projection = %(projection)s "
    "  WHERE e.originator_id = %(account_id)s AND e.originator_version = %(version)s "
    "  AND (e.notification_id <= p.position OR EXISTS (SELECT 1 "
    "    FROM {schema}.projection_tracking t WHERE t.projection = %(projection)s "
    "    AND t.notification_id = e.notification_id))) AS reached"
).format(**_identifiers)
STATEMENT_COLUMNS: Final = sql.SQL(
    "account_id, version, transaction_id, counterparty_account_id, direction, kind, "
    "amount_minor, balance_after_minor, currency, reference, channel, actor_subject, "
    "actor_role, occurred_at, correlation_id, reverses, reversed_minor"
)


class StatementLine(TypedDict):
    """One row of `readmodel.transactions`."""

    account_id: UUID
    version: int
    transaction_id: UUID | None
    counterparty_account_id: UUID | None
    direction: str
    kind: str
    amount_minor: int
    balance_after_minor: int
    currency: str
    reference: str | None
    channel: str | None
    actor_subject: str
    actor_role: str
    occurred_at: datetime
    correlation_id: str | None
    reverses: UUID | None
    reversed_minor: int


class StatementFilters(TypedDict):
    """Each None when not given; `from` inclusive, `to` exclusive."""

    from_: datetime | None
    to: datetime | None
    direction: str | None


async def statement_reached(store: ReadStore, account_id: UUID, version: int) -> bool:
    """Whether the statement shows the account at `version` (see STATEMENT_REACHED)."""
    params = {"account_id": account_id, "version": version, "projection": STATEMENTS_PROJECTION}
    row = await store.fetch_one(STATEMENT_REACHED, params)
    return row is not None and bool(row["reached"])


async def statement_page(
    store: ReadStore,
    account_id: UUID,
    filters: StatementFilters,
    after: tuple[datetime, int] | None,
    limit: int,
) -> list[StatementLine]:
    """Up to `limit + 1` lines, newest first, strictly below `after` (time, version)."""
    rows = await store.fetch_all(*_statement_query(account_id, filters, after, limit))
    return cast(list[StatementLine], rows)


def _statement_query(
    account_id: UUID,
    filters: StatementFilters,
    after: tuple[datetime, int] | None,
    limit: int,
) -> tuple[sql.Composed, dict[str, Any]]:
    conditions: list[sql.Composable] = [sql.SQL("account_id = %(account_id)s")]
    params: dict[str, Any] = {
        "account_id": account_id,
        "limit": limit + 1,
        "from": filters["from_"],
        "to": filters["to"],
        "direction": filters["direction"],
    }
    if filters["from_"] is not None:
        conditions.append(sql.SQL("occurred_at >= %(from)s"))
    if filters["to"] is not None:
        conditions.append(sql.SQL("occurred_at < %(to)s"))
    if filters["direction"] is not None:
        conditions.append(sql.SQL("direction = %(direction)s"))
    if after is not None:
        # Newest first: the next page holds what sorts strictly below the last line shown.
        conditions.append(sql.SQL("(occurred_at, version) < (%(after_at)s, %(after_version)s)"))
        params["after_at"], params["after_version"] = after
    query = sql.SQL(
        "SELECT {columns} FROM {schema}.transactions WHERE {where} "
        "ORDER BY occurred_at DESC, version DESC LIMIT %(limit)s"
    ).format(
        columns=STATEMENT_COLUMNS,
        schema=sql.Identifier(SCHEMA),
        where=sql.SQL(" AND ").join(conditions),
    )
    return query, params
