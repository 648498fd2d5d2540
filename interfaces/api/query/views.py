"""What the query API answers: read-model records, their JSON shapes, and the reply models
published in the OpenAPI document. Amounts leave as the currency's decimal strings and
times as ISO 8601 UTC with `Z` (the API contract, "Money and ids")."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal
from uuid import UUID

import orjson
from pydantic import BaseModel
from starlette.responses import Response

from domain.money import format_amount

AccountStatus = Literal["open", "frozen", "closed"]
Direction = Literal["credit", "debit"]


def iso_utc(moment: datetime) -> str:
    assert moment.tzinfo is not None, "read models keep timestamptz"
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


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
        )

    def view(self) -> dict[str, Any]:
        last = self.last_transaction_at
        return {
            "account_id": str(self.account_id),
            "owner": self.owner,
            "branch": self.branch,
            "currency": self.currency,
            "status": self.status,
            "balance": format_amount(self.balance_minor, self.currency),
            "available_balance": format_amount(
                self.balance_minor + self.overdraft_limit_minor, self.currency
            ),
            "overdraft_limit": format_amount(self.overdraft_limit_minor, self.currency),
            "projected_version": self.version,
            "opened_at": iso_utc(self.opened_at),
            "updated_at": iso_utc(self.updated_at),
            "last_transaction_at": None if last is None else iso_utc(last),
        }


def statement_line_view(row: Mapping[str, Any]) -> dict[str, Any]:
    """One row of `readmodel.transactions` as a statement line."""
    currency = row["currency"]
    counterparty = row["counterparty_account_id"]
    transaction_id = row["transaction_id"]
    return {
        "transaction_id": None if transaction_id is None else str(transaction_id),
        "account_id": str(row["account_id"]),
        "counterparty_account_id": None if counterparty is None else str(counterparty),
        "direction": row["direction"],
        "kind": row["kind"],
        "amount": format_amount(row["amount_minor"], currency),
        "balance_after": format_amount(row["balance_after_minor"], currency),
        "currency": currency,
        "reference": row["reference"],
        "channel": row["channel"],
        "actor": {"subject": row["actor_subject"], "role": row["actor_role"]},
        "timestamp": iso_utc(row["occurred_at"]),
        "correlation_id": row["correlation_id"],
        "version": row["version"],
    }


def json_reply(body: Any) -> Response:
    # Bodies are built as dicts and encoded once by orjson; the models below document them.
    return Response(orjson.dumps(body), media_type="application/json")


# --- Reply models (the OpenAPI document) ----------------------------------------------


class AccountView(BaseModel):
    account_id: str
    owner: str
    branch: str
    currency: str
    status: AccountStatus
    balance: str
    available_balance: str
    overdraft_limit: str
    projected_version: int
    opened_at: str
    updated_at: str
    last_transaction_at: str | None


class AccountPage(BaseModel):
    items: list[AccountView]
    next_cursor: str | None


class Actor(BaseModel):
    subject: str
    role: str


class StatementLineView(BaseModel):
    transaction_id: str | None
    account_id: str
    counterparty_account_id: str | None
    direction: Direction
    kind: Literal["deposit", "withdrawal", "transfer"]
    amount: str
    balance_after: str
    currency: str
    reference: str | None
    channel: str | None
    actor: Actor
    timestamp: str
    correlation_id: str | None
    version: int


class StatementPage(BaseModel):
    items: list[StatementLineView]
    next_cursor: str | None
