"""An account's statement: its movements, newest first, from `readmodel.transactions`."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Final
from uuid import UUID

from fastapi import APIRouter, Query
from psycopg import sql
from pydantic import AwareDatetime
from starlette.responses import Response

from domain.errors import AccountNotFound
from infrastructure.eventstore.ledger import EVENTS_TABLE
from infrastructure.readmodels.freshness import freshness_deadline, wait_for_projection
from infrastructure.readmodels.schema import ACCOUNTS_CHANNEL, SCHEMA, TRANSACTIONS_CHANNEL
from interfaces.api.http.auth import check_branch
from interfaces.api.http.problems import problem_responses
from interfaces.api.query.deps import MinVersion, ReadSide, ReadSideDep
from interfaces.api.query.pagination import (
    PAGE_SIZE_DEFAULT,
    Cursor,
    Limit,
    QueryInvalid,
    decode_cursor,
    encode_cursor,
    page_reply,
)
from interfaces.api.query.routes.accounts import Reader
from interfaces.api.query.views import Direction, StatementPage, json_reply, statement_line_view

router = APIRouter(prefix="/v1/accounts", tags=["accounts"])

STATEMENTS_PROJECTION: Final = "statements"
STATEMENT_CURSOR: Final = "statement"

From = Annotated[
    AwareDatetime | None,
    Query(alias="from", description="ISO 8601 with a zone; lines at or after this time."),
]
To = Annotated[
    AwareDatetime | None,
    Query(description="ISO 8601 with a zone; lines before this time."),
]

_identifiers: Final = {
    "schema": sql.Identifier(SCHEMA),
    "events": sql.Identifier(EVENTS_TABLE),
}
ACCOUNT_BRANCH: Final = sql.SQL(
    "SELECT branch FROM {schema}.accounts WHERE account_id = %(account_id)s"
).format(**_identifiers)
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
    "actor_role, occurred_at, correlation_id"
)


@router.get(
    "/{account_id}/transactions",
    response_model=StatementPage,
    responses=problem_responses("account_not_found", "projection_lagging"),
    summary="An account's statement lines, newest first",
)
async def list_transactions(
    account_id: UUID,
    who: Reader,
    read_side: ReadSideDep,
    from_: From = None,
    to: To = None,
    direction: Annotated[Direction | None, Query()] = None,
    min_version: MinVersion = None,
    limit: Limit = PAGE_SIZE_DEFAULT,
    cursor: Cursor = None,
) -> Response:
    if from_ is not None and to is not None and from_ > to:
        raise QueryInvalid("from", "must not be after `to`")
    after = _statement_after(cursor)
    deadline = freshness_deadline()
    branch = await _account_branch(read_side, account_id, min_version, deadline)
    check_branch(who, branch)
    if min_version is not None:
        await _statement_reached(read_side, account_id, min_version, deadline)
    filters = {"from": from_, "to": to, "direction": direction}
    rows = await read_side.store.fetch_all(*_statement_query(account_id, filters, after, limit))
    return json_reply(page_reply(rows, limit, statement_line_view, _statement_cursor))


async def _account_branch(
    read_side: ReadSide, account_id: UUID, min_version: int | None, deadline: float
) -> str:
    """The account's branch (to scope tellers); with `min_version`, wait for the account."""

    async def branch_of() -> str | None:
        row = await read_side.store.fetch_one(ACCOUNT_BRANCH, {"account_id": account_id})
        return None if row is None else str(row["branch"])

    if min_version is None:
        branch = await branch_of()
        if branch is None:
            raise AccountNotFound(f"account {account_id} not found")
        return branch
    return await wait_for_projection(
        read_side.waiters, ACCOUNTS_CHANNEL, account_id, branch_of, deadline=deadline
    )


async def _statement_reached(
    read_side: ReadSide, account_id: UUID, version: int, deadline: float
) -> None:
    params = {"account_id": account_id, "version": version, "projection": STATEMENTS_PROJECTION}

    async def reached() -> bool | None:
        row = await read_side.store.fetch_one(STATEMENT_REACHED, params)
        return True if row is not None and row["reached"] else None

    await wait_for_projection(
        read_side.waiters, TRANSACTIONS_CHANNEL, account_id, reached, deadline=deadline
    )


def _statement_after(cursor: str | None) -> tuple[datetime, int] | None:
    if cursor is None:
        return None
    occurred_at, version = decode_cursor(cursor, STATEMENT_CURSOR, 2)
    try:
        moment = datetime.fromisoformat(occurred_at)
    except (TypeError, ValueError):
        raise QueryInvalid("cursor", "not a cursor of this list") from None
    if moment.tzinfo is None or isinstance(version, bool) or not isinstance(version, int):
        raise QueryInvalid("cursor", "not a cursor of this list")
    return moment, version


def _statement_query(
    account_id: UUID,
    filters: dict[str, Any],
    after: tuple[datetime, int] | None,
    limit: int,
) -> tuple[sql.Composed, dict[str, Any]]:
    conditions: list[sql.Composable] = [sql.SQL("account_id = %(account_id)s")]
    params: dict[str, Any] = {"account_id": account_id, "limit": limit + 1, **filters}
    if filters["from"] is not None:
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


def _statement_cursor(row: Any) -> str:
    return encode_cursor(STATEMENT_CURSOR, [row["occurred_at"].isoformat(), row["version"]])
