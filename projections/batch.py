"""A batch's rows folded into the fewest writes, so that a batch costs one statement per
table instead of one per row. Pure; the folded writes leave the read models exactly as
applying the rows one by one, in order, would (tests/unit/test_projection_batch.py).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime
from uuid import UUID

from projections.rows import (
    AccountOpenedRow,
    AlertSuppressedRow,
    BalanceChanged,
    BranchKnown,
    CaseEventRow,
    HeldChanged,
    HoldEndedRow,
    HoldPlacedRow,
    KpiIncrement,
    ReversedAmount,
    Row,
    StatementLine,
    StatusChanged,
    SuppressionChanged,
    WatchlistChanged,
)


@dataclass(frozen=True, slots=True)
class AccountChange:
    """What one account's row becomes: the version, time and notification id of its
    latest row; the balance of its latest movement and the status of its latest status
    change (None: the batch has none of that kind, the stored value stays)."""

    account_id: UUID
    version: int
    at: datetime
    notification_id: int
    balance_minor: int | None = None
    last_transaction_at: datetime | None = None
    status: str | None = None
    held_minor: int | None = None


@dataclass(slots=True)
class KpiTotal:
    count: int = 0
    sum_minor: int = 0


HourKey = tuple[datetime, str, str]  # hour, currency, metric
AccountKey = tuple[UUID, str, str]  # account, currency, metric (the branch is looked up)


@dataclass(slots=True)
class BatchWrites:
    opened: list[AccountOpenedRow] = field(default_factory=list)
    accounts: dict[UUID, AccountChange] = field(default_factory=dict)
    lines: list[StatementLine] = field(default_factory=list)
    branches: dict[UUID, BranchKnown] = field(default_factory=dict)
    kpis_hourly: dict[HourKey, KpiTotal] = field(default_factory=dict)
    kpis_by_account: dict[AccountKey, KpiTotal] = field(default_factory=dict)
    case_events: list[CaseEventRow] = field(default_factory=list)
    watchlist: dict[UUID, WatchlistChanged] = field(default_factory=dict)
    holds_placed: list[HoldPlacedRow] = field(default_factory=list)
    # Each hold's latest ending (a hold ends once: the highest version wins regardless).
    holds_ended: dict[UUID, HoldEndedRow] = field(default_factory=dict)
    # Each original line's reversed total: totals only grow, the highest wins.
    reversed: dict[tuple[UUID, str], ReversedAmount] = field(default_factory=dict)
    suppressions: list[SuppressionChanged] = field(default_factory=list)
    suppressed_alerts: list[AlertSuppressedRow] = field(default_factory=list)


def fold(rows: Iterable[Row]) -> BatchWrites:
    writes = BatchWrites()
    for row in rows:
        match row:
            case AccountOpenedRow():
                writes.opened.append(row)
            case BalanceChanged() | StatusChanged() | HeldChanged():
                _fold_account(writes.accounts, row)
            case HoldPlacedRow() | HoldEndedRow() | ReversedAmount():
                _fold_holds(writes, row)
            case StatementLine():
                writes.lines.append(row)
            case BranchKnown():
                writes.branches.setdefault(row.account_id, row)  # the first insert wins
            case KpiIncrement():
                hourly = writes.kpis_hourly.setdefault(
                    (row.hour, row.currency, row.metric), KpiTotal()
                )
                hourly.count += 1
                hourly.sum_minor += row.amount_minor
                by_account = writes.kpis_by_account.setdefault(
                    (row.account_id, row.currency, row.metric), KpiTotal()
                )
                by_account.count += 1
                by_account.sum_minor += row.amount_minor
            case CaseEventRow():
                writes.case_events.append(row)
            case SuppressionChanged():
                writes.suppressions.append(row)
            case AlertSuppressedRow():
                writes.suppressed_alerts.append(row)
            case WatchlistChanged():
                # The entry keeps its highest version, whatever the order of arrival.
                kept = writes.watchlist.get(row.account_id)
                if kept is None or kept.version < row.version:
                    writes.watchlist[row.account_id] = row
    return writes


def _fold_holds(writes: BatchWrites, row: HoldPlacedRow | HoldEndedRow | ReversedAmount) -> None:
    match row:
        case HoldPlacedRow():
            writes.holds_placed.append(row)
        case HoldEndedRow():
            ended = writes.holds_ended.get(row.hold_id)
            if ended is None or ended.version < row.version:
                writes.holds_ended[row.hold_id] = row
        case ReversedAmount():
            key = (row.account_id, row.transaction_id)
            known = writes.reversed.get(key)
            if known is None or known.reversed_minor < row.reversed_minor:
                writes.reversed[key] = row


def _fold_account(
    accounts: dict[UUID, AccountChange], row: BalanceChanged | StatusChanged | HeldChanged
) -> None:
    # Row by row, each update applies only above the version already there: a row at or
    # below an earlier one of the batch would change nothing, so it is left out here too.
    kept = accounts.get(row.account_id)
    if kept is not None and row.version <= kept.version:
        return
    balance_minor = kept.balance_minor if kept else None
    last_transaction_at = kept.last_transaction_at if kept else None
    status = kept.status if kept else None
    held_minor = kept.held_minor if kept else None
    if isinstance(row, BalanceChanged):
        balance_minor, last_transaction_at = row.balance_minor, row.at
    elif isinstance(row, HeldChanged):
        held_minor = row.held_minor
    else:
        status = row.status
    accounts[row.account_id] = AccountChange(
        row.account_id,
        row.version,
        row.at,
        row.notification_id,
        balance_minor,
        last_transaction_at,
        status,
        held_minor,
    )
