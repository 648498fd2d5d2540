"""Accounts as the query API reads them from `readmodel.accounts`: one, a page, a branch."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Final
from uuid import UUID

from psycopg import sql

from infrastructure.eventstore.schema import EVENTS_TABLE
from infrastructure.postgres.conditions import equal_to, where_all
from infrastructure.readmodels.readstore import ReadStore
from infrastructure.readmodels.schema import SCHEMA

ACCOUNT_COLUMNS: Final = sql.SQL(
    "account_id, owner, branch, currency, status, balance_minor, overdraft_limit_minor, "
    "version, opened_at, updated_at, last_transaction_at, held_minor"
)
ACCOUNT_BY_ID: Final = sql.SQL(
    "SELECT {columns} FROM {schema}.accounts WHERE account_id = %(account_id)s"
).format(columns=ACCOUNT_COLUMNS, schema=sql.Identifier(SCHEMA))
ACCOUNT_BRANCH: Final = sql.SQL(
    "SELECT branch FROM {schema}.accounts WHERE account_id = %(account_id)s"
).format(schema=sql.Identifier(SCHEMA))


def _moment(value: Any) -> datetime:
    """A database datetime, or the ISO string the projection put into the cache."""
    moment = value if isinstance(value, datetime) else datetime.fromisoformat(str(value))
    if moment.tzinfo is None:
        raise ValueError("timestamps must carry a time zone")
    return moment


def _count(value: Any) -> int:
    # bool is an int to Python; a cached `true` balance is corruption, not 1.
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"expected an integer, got {type(value).__name__}")
    count: int = value
    return count


@dataclass(frozen=True, slots=True)
class AccountRecord:
    """One row of `readmodel.accounts`, from PostgreSQL or from the Redis cache."""

    account_id: UUID
    owner: str
    branch: str
    currency: str
    status: str
    balance_minor: int
    overdraft_limit_minor: int
    version: int
    opened_at: datetime
    updated_at: datetime
    last_transaction_at: datetime | None
    # What pending holds reserve (0 in cache entries written before holds existed).
    held_minor: int = 0

    @property
    def available_minor(self) -> int:
        return self.balance_minor + self.overdraft_limit_minor - self.held_minor

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any]) -> AccountRecord:
        """Raises KeyError, TypeError or ValueError on a row that is not an account."""
        last = data.get("last_transaction_at")
        return cls(
            account_id=UUID(str(data["account_id"])),
            owner=str(data["owner"]),
            branch=str(data["branch"]),
            currency=str(data["currency"]),
            status=str(data["status"]),
            balance_minor=_count(data["balance_minor"]),
            overdraft_limit_minor=_count(data["overdraft_limit_minor"]),
            version=_count(data["version"]),
            opened_at=_moment(data["opened_at"]),
            updated_at=_moment(data["updated_at"]),
            last_transaction_at=None if last is None else _moment(last),
            held_minor=_count(data.get("held_minor", 0)),
        )


async def fetch_account(store: ReadStore, account_id: UUID) -> AccountRecord | None:
    """The account's row, or None if the projection has none."""
    row = await store.fetch_one(ACCOUNT_BY_ID, {"account_id": account_id})
    return None if row is None else AccountRecord.from_mapping(row)


# Whether the event store holds the opening of an account (its first event, by the
# (originator_id, originator_version) key): the one question a read model cannot answer
# about an account it does not have yet.
ACCOUNT_OPENED: Final = sql.SQL(
    "SELECT EXISTS (SELECT 1 FROM {events} WHERE originator_id = %(account_id)s "
    "AND originator_version = 1 AND topic LIKE 'domain.account:%%') AS opened"
).format(events=sql.Identifier(EVENTS_TABLE))


async def account_opened(store: ReadStore, account_id: UUID) -> bool:
    """Whether the event store holds this account's opening: if not, no wait for a
    projection to catch up can find the account."""
    row = await store.fetch_one(ACCOUNT_OPENED, {"account_id": account_id})
    return bool(row and row["opened"])


async def account_branch(store: ReadStore, account_id: UUID) -> str | None:
    """The account's branch, or None if the projection has no such account."""
    row = await store.fetch_one(ACCOUNT_BRANCH, {"account_id": account_id})
    return None if row is None else str(row["branch"])


async def accounts_page(
    store: ReadStore, filters: dict[str, str | None], after: UUID | None, limit: int
) -> list[AccountRecord]:
    """Up to `limit + 1` accounts by id after `after`, matching the filters given."""
    rows = await store.fetch_all(*_accounts_page_query(filters, after, limit))
    return [AccountRecord.from_mapping(row) for row in rows]


def _accounts_page_query(
    filters: dict[str, str | None], after: UUID | None, limit: int
) -> tuple[sql.Composed, dict[str, Any]]:
    params: dict[str, Any] = {"limit": limit + 1}
    conditions = equal_to(filters, params)  # so the (branch, account_id) index serves
    if after is not None:
        conditions.append(sql.SQL("account_id > %(after)s"))
        params["after"] = after
    query = sql.SQL(
        "SELECT {columns} FROM {schema}.accounts{where} ORDER BY account_id LIMIT %(limit)s"
    ).format(columns=ACCOUNT_COLUMNS, schema=sql.Identifier(SCHEMA), where=where_all(conditions))
    return query, params
