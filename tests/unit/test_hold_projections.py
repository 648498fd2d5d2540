"""Holds, reversals and screening on the read side and in the money path, pure: the rows
hold and reversal events give, and the screening verdicts."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from fractions import Fraction
from uuid import uuid4

from application.envelope import envelope
from domain.account import Account, Original
from domain.integrity import Actor, Stamp
from domain.money import Money
from domain.postings import capture_hold, reverse
from domain.rules.config import RulesConfig
from domain.rules.window import AccountWindow
from domain.screening import Screening, screen
from projections.alerts import step
from projections.envelope import Envelope
from projections.ledger import balances, kpis, statements
from projections.rows import (
    HeldChanged,
    HoldEndedRow,
    HoldPlacedRow,
    KpiIncrement,
    ReversedAmount,
    StatementLine,
)
from tests.ceilings import BALANCE_MAX_MINOR, OVERDRAFT_MAX_MINOR

T0 = datetime(2026, 2, 3, 14, 25, 7, tzinfo=UTC)
HOUR = T0.replace(minute=0, second=0)


def stamp(transaction_id: str | None = None) -> Stamp:
    return Stamp(Actor("alice", "teller"), T0, "corr", transaction_id or str(uuid4()), b"k")


def funded(amount_minor: int = 10_000) -> Account:
    account = Account.open(
        uuid4(), "Ada", "001", "GBP", 0, stamp(), overdraft_max_minor=OVERDRAFT_MAX_MINOR
    )
    if amount_minor:
        account.deposit(
            Money(amount_minor, "GBP"), "cash", None, stamp(), balance_max_minor=BALANCE_MAX_MINOR
        )
    account.collect_events()
    return account


def published(account: Account, start: int = 100) -> list[Envelope]:
    events = account.collect_events()
    return [Envelope.from_json(envelope(start + i, e)) for i, e in enumerate(events)]


def test_a_hold_and_its_partial_capture_set_what_is_held_and_the_hold_row() -> None:
    account = funded()
    hold_id = uuid4()
    account.place_hold(
        hold_id, Money(6_000, "GBP"), None, T0 + timedelta(hours=1), "card auth", stamp()
    )
    [placed] = published(account)
    held, row = balances(placed)
    assert held == HeldChanged(account.id, 3, 6_000, T0, 100)
    assert isinstance(row, HoldPlacedRow)
    assert (row.hold_id, row.amount_minor, row.review) == (hold_id, 6_000, None)
    assert statements(placed) == []  # a pending hold is no statement line
    assert kpis(placed) == [KpiIncrement(HOUR, "GBP", "holds_placed", 6_000, account.id)]

    capture_id = str(uuid4())
    capture_hold(
        account, None, str(hold_id), 4_500, stamp(capture_id), balance_max_minor=BALANCE_MAX_MINOR
    )
    captured, withdrawn = published(account, 101)
    held, row = balances(captured)
    assert held == HeldChanged(account.id, 4, 0, T0, 101)
    assert row == HoldEndedRow(hold_id, "captured", T0, 4_500, capture_id, None, 4, 101)
    # The movement is a card withdrawal, a statement line of its own.
    [line] = statements(withdrawn)
    assert isinstance(line, StatementLine)
    assert (line.kind, line.channel, line.amount_minor, line.balance_after_minor) == (
        "withdrawal",
        "card",
        4_500,
        5_500,
    )
    assert kpis(captured) == [KpiIncrement(HOUR, "GBP", "holds_captured", 4_500, account.id)]


def test_a_reversal_line_names_its_original_and_marks_how_much_was_reversed() -> None:
    source, target = funded(), funded(0)
    original = Original("t-1", 3_000, "GBP", source.id, target.id)
    target.deposit(Money(3_000, "GBP"), "cash", None, stamp(), balance_max_minor=BALANCE_MAX_MINOR)
    target.collect_events()
    reverse(original, target, source, 1_000, "refund", stamp(), balance_max_minor=BALANCE_MAX_MINOR)
    [debited] = published(target)
    [credited] = published(source, 200)
    line, marked = statements(debited)
    assert isinstance(line, StatementLine)
    assert (line.kind, line.direction, line.reverses, line.counterparty_account_id) == (
        "reversal",
        "debit",
        "t-1",
        str(source.id),
    )
    assert marked == ReversedAmount(target.id, "t-1", 1_000)
    # Counted once: on its debit.
    assert kpis(debited) == [KpiIncrement(HOUR, "GBP", "reversals", 1_000, target.id)]
    assert kpis(credited) == []


def test_screening_checks_the_watchlist_first_then_the_amount_inclusively() -> None:
    screening = Screening(RulesConfig(), "sha", 60)
    source, payee = uuid4(), uuid4()
    at = Money(25_000_000, "GBP")  # 250,000.00: at the threshold is held
    below = Money(24_999_999, "GBP")
    verdict = screen(screening, at, source, payee, set())
    assert verdict is not None
    assert (verdict.rule, verdict.severity) == ("screening_amount", "high")
    assert verdict.figures == {
        "amount_minor": 25_000_000,
        "threshold_minor": 25_000_000,
        "currency": "GBP",
    }
    assert screen(screening, below, source, payee, set()) is None
    listed = screen(screening, below, source, payee, {payee})
    assert listed is not None
    assert (listed.rule, listed.severity, listed.figures["side"]) == (
        "screening_watchlist",
        "critical",
        "credited",
    )
    # Scaled per currency (JPY times 100, no decimals), and the watchlist can be turned off.
    assert screen(screening, Money(24_999_999, "JPY"), source, None, set()) is None
    assert screen(screening, Money(25_000_000, "JPY"), source, None, set()) is not None
    quiet = Screening(RulesConfig(screening_watchlisted=False), "sha", 60)
    assert screen(quiet, below, source, payee, {payee}) is None
    lower = RulesConfig(screening_hold_at_or_above=10, currency_factors={"GBP": Fraction(1)})
    assert screen(Screening(lower, "sha", 60), Money(1_000, "GBP"), source, None, set())


def test_a_review_hold_is_a_screening_alert_and_counts_as_held_for_review() -> None:
    account = funded()
    review = {
        "rule": "screening_amount",
        "config_sha256": "ab" * 32,
        "figures": {"amount_minor": 6_000, "threshold_minor": 5_000, "currency": "GBP"},
        "alert_id": str(uuid4()),
        "case_id": str(uuid4()),
        "transaction_id": "t-9",
        "command": {"kind": "withdrawal", "reference": None, "channel": "wire"},
    }
    account.place_hold(
        uuid4(), Money(6_000, "GBP"), None, T0 + timedelta(days=3), None, stamp(), review=review
    )
    [placed] = published(account)
    assert kpis(placed) == [KpiIncrement(HOUR, "GBP", "held_for_review", 6_000, account.id)]
    [hit], _ = step(RulesConfig(), AccountWindow(str(account.id)), placed, False)
    assert (hit.rule, hit.severity, hit.alert_id) == (
        "screening_amount",
        "high",
        review["alert_id"],
    )
    assert hit.transaction_ids == ["t-9"]
    assert hit.notification_ids == [100]
