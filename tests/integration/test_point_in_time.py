"""Point-in-time state on real PostgreSQL: after a scripted sequence under a controlled
clock, the account rebuilt at each moment and each version is what the sequence implies,
through the same function `GET /v1/audit/accounts/{id}/state` answers with."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any
from uuid import UUID, uuid4

import pytest

from application.audit import account_state, state_view
from application.commands import ChangeStatus, Deposit, OpenAccount, Submission, Transfer, Withdraw
from application.ledger import Ledger
from domain.errors import AccountNotFound, ValidationFailed
from domain.integrity import Actor
from domain.money import Money
from infrastructure.eventstore.ledger import open_ledger
from infrastructure.settings import Settings

pytestmark = pytest.mark.integration

TELLER = Actor("alice", "teller")
T0 = datetime(2026, 6, 1, 9, 0, tzinfo=UTC)
STEP = timedelta(minutes=1)


class Clock:
    """Each command is stamped one minute after the one before, or at a moment set."""

    def __init__(self) -> None:
        self.now = T0
        self.fixed: list[datetime] = []

    def __call__(self) -> datetime:
        if self.fixed:
            return self.fixed.pop(0)
        self.now += STEP
        return self.now


@pytest.fixture
def settings(settings_factory) -> Settings:  # type: ignore[no-untyped-def]
    return settings_factory()


@pytest.fixture
def ledger(settings: Settings) -> Iterator[Ledger]:
    app = open_ledger(settings)
    app.options.clock = Clock()
    yield app
    app.close()


def run(ledger: Ledger, *commands: Any) -> None:
    for command in commands:
        outcome = ledger.execute([Submission(command, TELLER, "corr-pit")])[0]
        assert outcome.error is None, outcome.error


def gbp(minor: int) -> Money:
    return Money(minor, "GBP")


def script(ledger: Ledger, a: UUID, b: UUID) -> None:
    """A's history, one minute apart from 09:01: (version, balance, status) below."""
    run(
        ledger,
        OpenAccount(a, "Ada", "001", "GBP", 1_000),  # 09:01 v1 0 open
        Deposit(a, gbp(10_000), uuid4()),  # 09:02 v2 100.00
        Withdraw(a, gbp(3_000), uuid4()),  # 09:03 v3 70.00
        OpenAccount(b, "Bob", "001", "GBP", 0),  # 09:04 (B v1)
        Transfer(a, b, gbp(2_000), uuid4()),  # 09:05 v4 50.00 (B v2)
        ChangeStatus(a, "freeze", "review"),  # 09:06 v5 frozen
        ChangeStatus(a, "unfreeze", "cleared"),  # 09:07 v6 open
        Withdraw(a, gbp(5_500), uuid4()),  # 09:08 v7 -5.00 (overdraft)
        Deposit(a, gbp(500), uuid4()),  # 09:09 v8 0.00
        ChangeStatus(a, "close", "moved away"),  # 09:10 v9 closed
    )


# (minute after 09:00, version, balance, status) of account A.
EXPECTED_A = [
    (1, 1, "0.00", "open"),
    (2, 2, "100.00", "open"),
    (3, 3, "70.00", "open"),
    (5, 4, "50.00", "open"),
    (6, 5, "50.00", "frozen"),
    (7, 6, "50.00", "open"),
    (8, 7, "-5.00", "open"),
    (9, 8, "0.00", "open"),
    (10, 9, "0.00", "closed"),
]


def test_state_at_each_moment_is_the_one_the_sequence_implies(ledger: Ledger) -> None:
    a, b = uuid4(), uuid4()
    script(ledger, a, b)
    for minute, version, balance, status in EXPECTED_A:
        stamped = T0 + minute * STEP
        for moment in (stamped, stamped + timedelta(seconds=59)):
            view = state_view(account_state(ledger, a, as_of=moment))
            assert (view["version"], view["balance"], view["status"]) == (
                version,
                balance,
                status,
            ), moment
            assert view["as_of"] == moment.strftime("%Y-%m-%dT%H:%M:%S.%fZ")
            assert view["last_event_at"] == stamped.strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    # Between B's opening (09:04) and the transfer (09:05), A is still at v3.
    view = state_view(account_state(ledger, a, as_of=T0 + 4 * STEP))
    assert (view["version"], view["balance"]) == (3, "70.00")
    latest = state_view(account_state(ledger, a, as_of=T0 + timedelta(days=365)))
    assert (latest["version"], latest["status"]) == (9, "closed")
    b_view = state_view(account_state(ledger, b, as_of=T0 + 5 * STEP))
    assert (b_view["version"], b_view["balance"], b_view["owner"]) == (2, "20.00", "Bob")


def test_state_at_each_version_is_the_one_the_sequence_implies(ledger: Ledger) -> None:
    a, b = uuid4(), uuid4()
    script(ledger, a, b)
    for minute, version, balance, status in EXPECTED_A:
        view = state_view(account_state(ledger, a, version=version))
        assert (view["version"], view["balance"], view["status"]) == (version, balance, status)
        assert view["last_event_at"] == (T0 + minute * STEP).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
        assert view["available_balance"] == f"{float(balance) + 10:.2f}"
        assert view["overdraft_limit"] == "10.00"
        assert (view["owner"], view["branch"], view["currency"]) == ("Ada", "001", "GBP")
    # The chain head at each version is that version's stored hash.
    stored = [ledger.mapper.to_domain_event(s) for s in ledger.recorder.select_events(a)]
    for event in stored:
        state = account_state(ledger, a, version=event.originator_version)
        assert state.account.last_hash == event.hash  # type: ignore[attr-defined]


def test_state_before_the_opening_or_beyond_the_last_version_is_not_found(
    ledger: Ledger,
) -> None:
    a, b = uuid4(), uuid4()
    script(ledger, a, b)
    with pytest.raises(AccountNotFound):
        account_state(ledger, a, as_of=T0 + timedelta(seconds=59))
    with pytest.raises(AccountNotFound):
        account_state(ledger, b, as_of=T0 + 3 * STEP)
    with pytest.raises(AccountNotFound):
        account_state(ledger, a, version=10)
    with pytest.raises(AccountNotFound):
        account_state(ledger, uuid4(), version=1)


def test_both_or_neither_of_as_of_and_version_is_refused(ledger: Ledger) -> None:
    a, b = uuid4(), uuid4()
    script(ledger, a, b)
    with pytest.raises(ValidationFailed):
        account_state(ledger, a)
    with pytest.raises(ValidationFailed):
        account_state(ledger, a, as_of=T0, version=1)


def test_as_of_takes_the_last_version_stamped_by_then_even_when_clocks_disagree(
    ledger: Ledger,
) -> None:
    # Two processes with skewed clocks: v3 is stamped before v2.
    a = uuid4()
    clock = ledger.options.clock
    assert isinstance(clock, Clock)
    clock.fixed = [T0, T0 + 10 * STEP, T0 + 5 * STEP, T0 + 20 * STEP]
    run(
        ledger,
        OpenAccount(a, "Skew", "001", "GBP", 0),  # v1 09:00
        Deposit(a, gbp(100), uuid4()),  # v2 09:10
        Deposit(a, gbp(200), uuid4()),  # v3 09:05
        Deposit(a, gbp(400), uuid4()),  # v4 09:20
    )
    at = {
        T0 + 2 * STEP: (1, "0.00"),  # only v1 by then
        T0 + 6 * STEP: (3, "3.00"),  # v3 is the last stamped by 09:06; it includes v2
        T0 + 12 * STEP: (3, "3.00"),
        T0 + 21 * STEP: (4, "7.00"),
    }
    for moment, expected in at.items():
        view = state_view(account_state(ledger, a, as_of=moment))
        assert (view["version"], view["balance"]) == expected, moment
