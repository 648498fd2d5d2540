"""What the query API answers: the JSON shapes of read-model records, and the reply models
published in the OpenAPI document. Amounts leave as the currency's decimal strings and
times as ISO 8601 UTC with `Z` (the API contract, "Money and ids")."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel

from domain.integrity import format_timestamp
from domain.money import format_amount
from infrastructure.readmodels.readers.accounts import AccountRecord
from infrastructure.readmodels.readers.transactions import StatementLine

AccountStatus = Literal["open", "frozen", "closed"]
Direction = Literal["credit", "debit"]


def account_view(record: AccountRecord) -> dict[str, Any]:
    """An account as the contract shows it."""
    last = record.last_transaction_at
    return {
        "account_id": str(record.account_id),
        "owner": record.owner,
        "branch": record.branch,
        "currency": record.currency,
        "status": record.status,
        "balance": format_amount(record.balance_minor, record.currency),
        "available_balance": format_amount(record.available_minor, record.currency),
        "overdraft_limit": format_amount(record.overdraft_limit_minor, record.currency),
        "projected_version": record.version,
        "opened_at": format_timestamp(record.opened_at),
        "updated_at": format_timestamp(record.updated_at),
        "last_transaction_at": None if last is None else format_timestamp(last),
    }


def statement_line_view(row: StatementLine) -> dict[str, Any]:
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
        "timestamp": format_timestamp(row["occurred_at"]),
        "correlation_id": row["correlation_id"],
        "version": row["version"],
        "reverses": None if row["reverses"] is None else str(row["reverses"]),
        "reversed_amount": format_amount(row["reversed_minor"], currency),
    }


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
    kind: Literal["deposit", "withdrawal", "transfer", "reversal"]
    amount: str
    balance_after: str
    currency: str
    reference: str | None
    channel: str | None
    actor: Actor
    timestamp: str
    correlation_id: str | None
    version: int
    # The transaction a reversal's line reverses; on every line, how much of it
    # reversals took back.
    reverses: str | None
    reversed_amount: str


class StatementPage(BaseModel):
    items: list[StatementLineView]
    next_cursor: str | None
