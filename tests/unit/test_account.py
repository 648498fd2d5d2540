"""The Account aggregate's rules: each refusal raises before anything changes."""

from __future__ import annotations

import itertools
from datetime import UTC, datetime, timedelta
from uuid import UUID, uuid4

import pytest

from domain.account import Account, AccountStatus
from domain.errors import (
    AccountClosed,
    AccountFrozen,
    AccountNotEmpty,
    AccountNotFrozen,
    BalanceLimitExceeded,
    CurrencyMismatch,
    DomainError,
    InsufficientFunds,
    InvalidAmount,
    UnknownCurrency,
    ValidationFailed,
)
from domain.integrity import Actor, Stamp
from domain.money import Money
from domain.postings import transfer
from tests.ceilings import BALANCE_MAX_MINOR, OVERDRAFT_MAX_MINOR

T0 = datetime(2026, 1, 5, 12, 0, tzinfo=UTC)


def stamp(minutes: int = 0, transaction_id: str | None = "t") -> Stamp:
    return Stamp(
        Actor("alice", "teller"), T0 + timedelta(minutes=minutes), "corr", transaction_id, b"k"
    )


def gbp(minor: int) -> Money:
    return Money(minor, "GBP")


def opened(currency: str = "GBP", overdraft_minor: int = 0, balance_minor: int = 0) -> Account:
    account = Account.open(
        uuid4(),
        "Ada Lovelace",
        "001",
        currency,
        overdraft_minor,
        stamp(),
        overdraft_max_minor=OVERDRAFT_MAX_MINOR,
    )
    if balance_minor:
        account.deposit(
            Money(balance_minor, currency),
            "cash",
            None,
            stamp(1),
            balance_max_minor=BALANCE_MAX_MINOR,
        )
    return account


def snapshot(account: Account) -> dict[str, object]:
    return {k: v for k, v in account.__dict__.items() if k != "_pending_events"}


def refuses(account: Account, error: type[DomainError], command) -> None:  # type: ignore[no-untyped-def]
    before = snapshot(account)
    pending = len(account.pending_events)
    with pytest.raises(error):
        command()
    assert snapshot(account) == before, "a refused command changes nothing"
    assert len(account.pending_events) == pending


def test_an_opened_account_is_open_and_empty_at_the_given_time() -> None:
    account = opened()
    assert account.status is AccountStatus.OPEN
    assert account.balance_minor == 0
    assert account.version == 1
    assert account.created_on == T0


def test_opening_in_an_unknown_currency_is_refused() -> None:
    with pytest.raises(UnknownCurrency):
        Account.open(
            uuid4(), "Ada", "001", "XYZ", 0, stamp(), overdraft_max_minor=OVERDRAFT_MAX_MINOR
        )


def test_a_negative_overdraft_limit_is_refused() -> None:
    with pytest.raises(InvalidAmount):
        Account.open(
            uuid4(), "Ada", "001", "GBP", -1, stamp(), overdraft_max_minor=OVERDRAFT_MAX_MINOR
        )


@pytest.mark.parametrize(
    ("owner", "branch", "field"),
    [
        ("", "001", "body.owner"),
        ("   ", "001", "body.owner"),
        (" Ada", "001", "body.owner"),  # not trimmed
        ("Ade\u0301le", "001", "body.owner"),  # not NFC
        ("Ada\x00", "001", "body.owner"),
        ("Ada\u202eecilA", "001", "body.owner"),
        ("A" * 201, "001", "body.owner"),
        ("Ada", "", "body.branch"),
        ("Ada", "00-1", "body.branch"),
        ("Ada", "1" * 17, "body.branch"),
    ],
)
def test_an_owner_or_branch_the_record_cannot_keep_is_refused(
    owner: str, branch: str, field: str
) -> None:
    with pytest.raises(ValidationFailed) as refused:
        Account.open(
            uuid4(), owner, branch, "GBP", 0, stamp(), overdraft_max_minor=OVERDRAFT_MAX_MINOR
        )
    assert refused.value.errors[0]["field"] == field


def test_the_longest_owner_and_branch_are_kept_as_given() -> None:
    owner, branch = "Adèle " + "Ä" * 194, "B" * 16
    account = Account.open(
        uuid4(), owner, branch, "GBP", 0, stamp(), overdraft_max_minor=OVERDRAFT_MAX_MINOR
    )
    assert (account.owner, account.branch) == (owner, branch)


def test_deposits_and_withdrawals_move_the_balance_and_record_the_time() -> None:
    account = opened()
    account.deposit(gbp(10_000), "cash", "salary", stamp(5), balance_max_minor=BALANCE_MAX_MINOR)
    account.withdraw(gbp(2_500), "card", None, stamp(6))
    assert account.balance_minor == 7_500
    assert account.version == 3
    assert account.last_transaction_at == T0 + timedelta(minutes=6)


def test_withdrawal_beyond_balance_is_refused_and_changes_nothing() -> None:
    account = opened(balance_minor=1_000)
    refuses(account, InsufficientFunds, lambda: account.withdraw(gbp(1_001), "cash", None, stamp()))


def test_withdrawal_may_use_the_overdraft_down_to_its_limit_and_no_further() -> None:
    account = opened(overdraft_minor=5_000, balance_minor=1_000)
    account.withdraw(gbp(6_000), "cash", None, stamp())
    assert account.balance_minor == -5_000
    refuses(account, InsufficientFunds, lambda: account.withdraw(gbp(1), "cash", None, stamp()))


def test_zero_and_negative_amounts_are_refused() -> None:
    account = opened(balance_minor=1_000)
    refuses(
        account,
        InvalidAmount,
        lambda: account.deposit(gbp(0), "cash", None, stamp(), balance_max_minor=BALANCE_MAX_MINOR),
    )
    refuses(account, InvalidAmount, lambda: account.withdraw(gbp(-5), "cash", None, stamp()))


def test_a_deposit_in_another_currency_is_refused() -> None:
    account = opened()
    refuses(
        account,
        CurrencyMismatch,
        lambda: account.deposit(
            Money(100, "EUR"), "cash", None, stamp(), balance_max_minor=BALANCE_MAX_MINOR
        ),
    )


def test_a_frozen_account_moves_no_money_until_unfrozen() -> None:
    account = opened(balance_minor=1_000)
    account.freeze("suspected fraud", stamp())
    refuses(
        account,
        AccountFrozen,
        lambda: account.deposit(gbp(1), "cash", None, stamp(), balance_max_minor=BALANCE_MAX_MINOR),
    )
    refuses(account, AccountFrozen, lambda: account.withdraw(gbp(1), "cash", None, stamp()))
    refuses(account, AccountFrozen, lambda: account.freeze("again", stamp()))
    account.unfreeze("cleared", stamp())
    account.withdraw(gbp(1), "cash", None, stamp())
    assert account.balance_minor == 999


def test_unfreezing_an_open_account_is_refused() -> None:
    account = opened()
    refuses(account, AccountNotFrozen, lambda: account.unfreeze("why", stamp()))


def test_closing_needs_a_zero_balance_and_then_nothing_moves() -> None:
    account = opened(balance_minor=1_000)
    refuses(account, AccountNotEmpty, lambda: account.close("customer left", stamp()))
    account.withdraw(gbp(1_000), "cash", None, stamp())
    account.close("customer left", stamp())
    assert account.status is AccountStatus.CLOSED
    refuses(
        account,
        AccountClosed,
        lambda: account.deposit(gbp(1), "cash", None, stamp(), balance_max_minor=BALANCE_MAX_MINOR),
    )
    refuses(account, AccountClosed, lambda: account.freeze("late", stamp()))
    refuses(account, AccountClosed, lambda: account.unfreeze("late", stamp()))
    refuses(account, AccountClosed, lambda: account.close("again", stamp()))


def test_an_overdrawn_account_cannot_be_closed() -> None:
    account = opened(overdraft_minor=100)
    account.withdraw(gbp(50), "cash", None, stamp())
    refuses(account, AccountNotEmpty, lambda: account.close("x", stamp()))


def test_a_transfer_moves_money_between_two_accounts_and_conserves_it() -> None:
    source, target = opened(balance_minor=5_000), opened()
    transfer(source, target, gbp(1_500), "rent", stamp(), balance_max_minor=BALANCE_MAX_MINOR)
    assert (source.balance_minor, target.balance_minor) == (3_500, 1_500)
    out_event, in_event = source.pending_events[-1], target.pending_events[-1]
    assert isinstance(out_event, Account.TransferredOut)
    assert isinstance(in_event, Account.TransferredIn)
    assert out_event.counterparty_account_id == str(target.id)
    assert in_event.counterparty_account_id == str(source.id)
    assert out_event.transaction_id == in_event.transaction_id


@pytest.mark.parametrize(
    ("setup", "error"),
    [
        ("poor_source", InsufficientFunds),
        ("frozen_target", AccountFrozen),
        ("closed_target", AccountClosed),
        ("euro_target", CurrencyMismatch),
        ("frozen_source", AccountFrozen),
    ],
)
def test_a_refused_transfer_changes_neither_account(setup: str, error: type[DomainError]) -> None:
    source = opened(balance_minor=100 if setup == "poor_source" else 5_000)
    target = opened(currency="EUR" if setup == "euro_target" else "GBP")
    if setup == "frozen_target":
        target.freeze("x", stamp())
    if setup == "closed_target":
        target.close("x", stamp())
    if setup == "frozen_source":
        source.freeze("x", stamp())
    before = (snapshot(source), snapshot(target))
    with pytest.raises(error):
        transfer(source, target, gbp(1_000), None, stamp(), balance_max_minor=BALANCE_MAX_MINOR)
    assert (snapshot(source), snapshot(target)) == before


def test_a_transfer_to_the_same_account_is_refused() -> None:
    account = opened(balance_minor=1_000)
    with pytest.raises(ValidationFailed):
        transfer(account, account, gbp(1), None, stamp(), balance_max_minor=BALANCE_MAX_MINOR)


def test_the_aggregate_rebuilt_from_its_events_equals_the_live_one() -> None:
    account = opened(overdraft_minor=1_000, balance_minor=5_000)
    account.withdraw(gbp(5_500), "wire", "x", stamp(9))
    account.freeze("check", stamp(10))
    events = account.collect_events()
    rebuilt: Account | None = None
    for event in events:
        rebuilt = event.mutate(rebuilt)
    assert rebuilt == account


def test_every_event_records_who_when_why_and_its_chain_link() -> None:
    account = opened(balance_minor=100)
    account.freeze("fraud", Stamp(Actor("bob", "admin"), T0, "corr-9", None, b"k"))
    events = account.collect_events()
    for previous, event in itertools.pairwise(events):
        assert event.previous_hash == previous.hash
    frozen = events[-1]
    assert frozen.actor == {"subject": "bob", "role": "admin"}
    assert frozen.correlation_id == "corr-9"
    assert frozen.transaction_id is None
    assert frozen.timestamp == T0
    assert isinstance(account.id, UUID)


# --- Ceilings (passed in by the application, from the settings) -------------------------


def test_an_overdraft_up_to_the_ceiling_is_granted_and_above_it_refused() -> None:
    for limit_minor in (0, 1, OVERDRAFT_MAX_MINOR):
        account = Account.open(
            uuid4(),
            "Ada",
            "001",
            "GBP",
            limit_minor,
            stamp(),
            overdraft_max_minor=OVERDRAFT_MAX_MINOR,
        )
        assert account.overdraft_limit_minor == limit_minor
    with pytest.raises(InvalidAmount, match="exceeds the ceiling"):
        Account.open(
            uuid4(),
            "Ada",
            "001",
            "GBP",
            OVERDRAFT_MAX_MINOR + 1,
            stamp(),
            overdraft_max_minor=OVERDRAFT_MAX_MINOR,
        )


def test_a_deposit_up_to_the_balance_ceiling_is_taken_and_a_unit_more_is_refused() -> None:
    account = opened(balance_minor=1_000)
    account.deposit(gbp(4_000), "cash", None, stamp(), balance_max_minor=5_000)
    assert account.balance_minor == 5_000
    refuses(
        account,
        BalanceLimitExceeded,
        lambda: account.deposit(gbp(1), "cash", None, stamp(), balance_max_minor=5_000),
    )


def test_an_overdrawn_account_may_take_credits_up_to_the_ceiling() -> None:
    account = opened(overdraft_minor=2_000)
    account.withdraw(gbp(2_000), "cash", None, stamp())
    account.deposit(gbp(7_000), "cash", None, stamp(), balance_max_minor=5_000)
    assert account.balance_minor == 5_000


def test_a_transfer_above_the_targets_ceiling_changes_neither_account() -> None:
    source, target = opened(balance_minor=5_000), opened(balance_minor=4_000)
    before = (snapshot(source), snapshot(target))
    with pytest.raises(BalanceLimitExceeded):
        transfer(source, target, gbp(1_001), None, stamp(), balance_max_minor=5_000)
    assert (snapshot(source), snapshot(target)) == before
    transfer(source, target, gbp(1_000), None, stamp(), balance_max_minor=5_000)
    assert (source.balance_minor, target.balance_minor) == (4_000, 5_000)


def test_a_refusal_for_the_ceiling_comes_after_the_accounts_own_refusals() -> None:
    account = opened(balance_minor=5_000)
    account.freeze("check", stamp())
    refuses(
        account,
        AccountFrozen,
        lambda: account.deposit(gbp(1), "cash", None, stamp(), balance_max_minor=5_000),
    )
