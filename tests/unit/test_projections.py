"""The ledger projections are pure: one event in, read-model rows out."""

from __future__ import annotations

from datetime import UTC, datetime
from uuid import uuid4

from application.envelope import envelope
from domain.account import Account
from domain.integrity import Actor, Stamp
from domain.money import Money
from domain.postings import transfer
from projections.envelope import Envelope
from projections.ledger import balances, kpis, statements
from projections.rows import (
    AccountOpenedRow,
    BalanceChanged,
    BranchKnown,
    KpiIncrement,
    StatementLine,
    StatusChanged,
)
from tests.ceilings import BALANCE_MAX_MINOR, OVERDRAFT_MAX_MINOR

T0 = datetime(2026, 2, 3, 14, 25, 7, 123456, tzinfo=UTC)


def stamp() -> Stamp:
    return Stamp(Actor("alice", "teller"), T0, "corr-1", str(uuid4()), b"k")


def envelopes(*accounts: Account) -> list[Envelope]:
    """Events as the relay would publish them, with increasing notification ids."""
    out: list[Envelope] = []
    for account in accounts:
        for event in account.collect_events():
            assert isinstance(event, Account.Event)
            out.append(Envelope.from_json(envelope(len(out) + 1, event)))
    return out


def test_an_opening_gives_an_account_row_a_branch_and_a_kpi() -> None:
    account = Account.open(
        uuid4(), "Ada", "007", "EUR", 500, stamp(), overdraft_max_minor=OVERDRAFT_MAX_MINOR
    )
    [opened] = envelopes(account)
    assert balances(opened) == [AccountOpenedRow(account.id, "Ada", "007", "EUR", 500, 1, T0, 1)]
    assert statements(opened) == []
    hour = T0.replace(minute=0, second=0, microsecond=0)
    assert kpis(opened) == [
        BranchKnown(account.id, "007"),
        KpiIncrement(hour, "EUR", "accounts_opened", 0, account.id),
    ]


def test_a_transfer_gives_two_statement_lines_and_counts_once_in_kpis() -> None:
    source = Account.open(
        uuid4(), "Ada", "001", "GBP", 0, stamp(), overdraft_max_minor=OVERDRAFT_MAX_MINOR
    )
    target = Account.open(
        uuid4(), "Bob", "001", "GBP", 0, stamp(), overdraft_max_minor=OVERDRAFT_MAX_MINOR
    )
    source.deposit(Money(10_000, "GBP"), "cash", None, stamp(), balance_max_minor=BALANCE_MAX_MINOR)
    transfer(
        source, target, Money(2_500, "GBP"), "rent", stamp(), balance_max_minor=BALANCE_MAX_MINOR
    )
    events = envelopes(source, target)
    lines = [line for event in events for line in statements(event)]
    assert [
        (line.direction, line.kind, line.amount_minor, line.balance_after_minor) for line in lines
    ] == [
        ("credit", "deposit", 10_000, 10_000),
        ("debit", "transfer", 2_500, 7_500),
        ("credit", "transfer", 2_500, 2_500),
    ]
    assert all(isinstance(line, StatementLine) for line in lines)
    assert lines[1].counterparty_account_id == str(target.id)
    assert lines[1].transaction_id == lines[2].transaction_id
    transfer_kpis = [
        row
        for e in events
        for row in kpis(e)
        if isinstance(row, KpiIncrement) and row.metric == "transfers"
    ]
    assert len(transfer_kpis) == 1
    assert transfer_kpis[0].amount_minor == 2_500


def test_balances_follow_each_movement_and_status_change() -> None:
    account = Account.open(
        uuid4(), "Ada", "001", "GBP", 0, stamp(), overdraft_max_minor=OVERDRAFT_MAX_MINOR
    )
    account.deposit(Money(700, "GBP"), "cash", None, stamp(), balance_max_minor=BALANCE_MAX_MINOR)
    account.freeze("check", stamp())
    _, deposited, frozen = envelopes(account)
    assert balances(deposited) == [BalanceChanged(account.id, 2, 700, T0, 2)]
    assert balances(frozen) == [StatusChanged(account.id, 3, "frozen", T0, 3)]
    assert statements(frozen) == []
