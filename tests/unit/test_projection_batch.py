"""A batch's rows folded into one write per table leave the read models exactly as the
rows applied one by one would: checked against a model of the single-row SQL."""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from typing import Any
from uuid import UUID

from hypothesis import given
from hypothesis import strategies as st

from projections.batch import AccountChange, fold
from projections.rows import BalanceChanged, KpiIncrement, StatusChanged, WatchlistChanged

T0 = datetime(2026, 6, 1, 9, 0, tzinfo=UTC)
ACCOUNTS = [UUID(int=n) for n in range(1, 4)]


@dataclass
class StoredAccount:
    version: int
    updated_at: datetime = T0
    notification_id: int = 0
    balance_minor: int = 0
    last_transaction_at: datetime | None = None
    status: str = "open"


def apply_row(account: StoredAccount, row: BalanceChanged | StatusChanged) -> None:
    """The single-row UPDATE: only above the stored version."""
    if account.version >= row.version:
        return
    account.version, account.updated_at = row.version, row.at
    account.notification_id = row.notification_id
    if isinstance(row, BalanceChanged):
        account.balance_minor, account.last_transaction_at = row.balance_minor, row.at
    else:
        account.status = row.status


def apply_change(account: StoredAccount, change: AccountChange) -> None:
    """The batched UPDATE: the same guard, NULL keeps the stored value."""
    if account.version >= change.version:
        return
    account.version, account.updated_at = change.version, change.at
    account.notification_id = change.notification_id
    if change.balance_minor is not None:
        account.balance_minor = change.balance_minor
    if change.last_transaction_at is not None:
        account.last_transaction_at = change.last_transaction_at
    if change.status is not None:
        account.status = change.status


@st.composite
def account_rows(draw: Any) -> tuple[dict[UUID, int], list[BalanceChanged | StatusChanged]]:
    """Stored versions, and rows above them in any order (apply_batch keeps only those:
    an event at or below the projected version gives no rows)."""
    stored = {a: draw(st.integers(0, 3)) for a in ACCOUNTS}
    rows: list[BalanceChanged | StatusChanged] = []
    for account in ACCOUNTS:
        count = draw(st.integers(0, 6))
        for version in range(stored[account] + 1, stored[account] + 1 + count):
            at = T0 + timedelta(minutes=version)
            if draw(st.booleans()):
                rows.append(BalanceChanged(account, version, draw(st.integers(-99, 99)), at, 0))
            else:
                status = draw(st.sampled_from(["open", "frozen", "closed"]))
                rows.append(StatusChanged(account, version, status, at, 0))
    order = draw(st.permutations(range(len(rows))))
    shuffled = [rows[i] for i in order]
    numbered = [replace(row, notification_id=n) for n, row in enumerate(shuffled, start=100)]
    return stored, numbered


@given(account_rows())
def test_folded_account_changes_equal_the_rows_applied_one_by_one(
    case: tuple[dict[UUID, int], list[BalanceChanged | StatusChanged]],
) -> None:
    stored, rows = case
    one_by_one = {a: StoredAccount(v) for a, v in stored.items()}
    for row in rows:
        apply_row(one_by_one[row.account_id], row)
    batched = {a: StoredAccount(v) for a, v in stored.items()}
    changes = fold(rows).accounts
    assert len(changes) == len({row.account_id for row in rows})
    for change in changes.values():
        apply_change(batched[change.account_id], change)
    assert batched == one_by_one


def test_an_account_keeps_its_last_movement_and_its_last_status_change() -> None:
    account = ACCOUNTS[0]
    at = [T0 + timedelta(minutes=n) for n in range(5)]
    rows = [
        BalanceChanged(account, 2, 1_000, at[2], 12),
        StatusChanged(account, 3, "frozen", at[3], 13),
        StatusChanged(account, 4, "open", at[4], 14),
    ]
    assert fold(rows).accounts == {
        account: AccountChange(account, 4, at[4], 14, 1_000, at[2], "open")
    }


kpi_rows = st.lists(
    st.builds(
        KpiIncrement,
        hour=st.sampled_from([T0, T0 + timedelta(hours=1)]),
        currency=st.sampled_from(["GBP", "EUR"]),
        metric=st.sampled_from(["deposits", "withdrawals", "transfers"]),
        amount_minor=st.integers(0, 10_000),
        account_id=st.sampled_from(ACCOUNTS),
    ),
    max_size=40,
)


@given(kpi_rows)
def test_kpis_summed_over_a_batch_equal_the_increments_one_by_one(
    rows: list[KpiIncrement],
) -> None:
    hourly: dict[tuple[datetime, str, str], list[int]] = {}
    by_account: dict[tuple[UUID, str, str], list[int]] = {}
    for row in rows:
        for count_and_sum in (
            hourly.setdefault((row.hour, row.currency, row.metric), [0, 0]),
            by_account.setdefault((row.account_id, row.currency, row.metric), [0, 0]),
        ):
            count_and_sum[0] += 1
            count_and_sum[1] += row.amount_minor
    writes = fold(rows)
    assert {k: [t.count, t.sum_minor] for k, t in writes.kpis_hourly.items()} == hourly
    assert {k: [t.count, t.sum_minor] for k, t in writes.kpis_by_account.items()} == by_account


@given(st.permutations(range(1, 6)))
def test_a_watchlist_entry_keeps_its_highest_version_in_any_order(order: list[int]) -> None:
    account = ACCOUNTS[0]
    rows = [
        WatchlistChanged(account, v % 2 == 1, f"r{v}", v, T0, "olivia", "compliance", v)
        for v in order
    ]
    assert fold(rows).watchlist[account].version == 5
