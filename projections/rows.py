"""Read-model rows: what projections produce. The SQL that applies them is in infrastructure."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any
from uuid import UUID


@dataclass(frozen=True, slots=True)
class AccountOpenedRow:
    account_id: UUID
    owner: str
    branch: str
    currency: str
    overdraft_limit_minor: int
    version: int
    at: datetime
    notification_id: int


@dataclass(frozen=True, slots=True)
class BalanceChanged:
    account_id: UUID
    version: int
    balance_minor: int
    at: datetime
    notification_id: int


@dataclass(frozen=True, slots=True)
class HeldChanged:
    """What an account's pending holds reserve after a hold event."""

    account_id: UUID
    version: int
    held_minor: int
    at: datetime
    notification_id: int


@dataclass(frozen=True, slots=True)
class HoldPlacedRow:
    hold_id: UUID
    account_id: UUID
    to_account_id: str | None
    amount_minor: int
    currency: str
    reference: str | None
    review: str | None  # JSON text of the screening decision, or None
    expires_at: datetime
    placed_at: datetime
    version: int
    notification_id: int


@dataclass(frozen=True, slots=True)
class HoldEndedRow:
    hold_id: UUID
    status: str
    ended_at: datetime
    captured_minor: int | None
    capture_transaction_id: str | None
    end_reason: str | None
    version: int
    notification_id: int


@dataclass(frozen=True, slots=True)
class ReversedAmount:
    """All reversed so far of the line of `transaction_id` on an account."""

    account_id: UUID
    transaction_id: str
    reversed_minor: int


@dataclass(frozen=True, slots=True)
class StatusChanged:
    account_id: UUID
    version: int
    status: str
    at: datetime
    notification_id: int


@dataclass(frozen=True, slots=True)
class StatementLine:
    account_id: UUID
    version: int
    transaction_id: str | None
    counterparty_account_id: str | None
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
    notification_id: int
    reverses: str | None = None


@dataclass(frozen=True, slots=True)
class BranchKnown:
    """The KPI projection's own memory of which branch an account belongs to."""

    account_id: UUID
    branch: str


@dataclass(frozen=True, slots=True)
class KpiIncrement:
    hour: datetime
    currency: str
    metric: str
    amount_minor: int
    account_id: UUID


@dataclass(frozen=True, slots=True)
class CaseEventRow:
    """One step of a case's history; the case row is recomputed from its whole history,
    so steps may arrive in any order and a replay gives the same row."""

    case_id: UUID
    version: int
    event_type: str
    status: str | None  # the state this step leads to; None: unchanged
    actor_subject: str
    actor_role: str
    note: str | None
    details: dict[str, Any]
    at: datetime
    notification_id: int


@dataclass(frozen=True, slots=True)
class SuppressionChanged:
    """A suppression created (every field) or revoked (`revoked`, the reason, who)."""

    suppression_id: UUID
    account_id: UUID
    rule: str | None
    until: datetime | None
    reason: str
    revoked: bool
    actor_subject: str
    at: datetime
    version: int
    notification_id: int


@dataclass(frozen=True, slots=True)
class AlertSuppressedRow:
    """An alert that opened no case because a suppression held."""

    alert_id: UUID
    suppression_id: UUID
    account_id: UUID
    at: datetime
    notification_id: int


@dataclass(frozen=True, slots=True)
class WatchlistChanged:
    """An entry's whole state after one event: the latest version wins."""

    account_id: UUID
    listed: bool
    reason: str
    version: int
    at: datetime
    actor_subject: str
    actor_role: str
    notification_id: int


Row = (
    AccountOpenedRow
    | BalanceChanged
    | HeldChanged
    | HoldPlacedRow
    | HoldEndedRow
    | ReversedAmount
    | StatusChanged
    | StatementLine
    | BranchKnown
    | KpiIncrement
    | CaseEventRow
    | WatchlistChanged
    | SuppressionChanged
    | AlertSuppressedRow
)
