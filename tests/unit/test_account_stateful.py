"""Random command sequences against accounts, checking the invariants after every step:
money is conserved across transfers, no balance goes below its overdraft limit nor above
the ceiling, and each account rebuilt from its events equals the live one."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from uuid import UUID

from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule

from domain.account import Account, transfer
from domain.errors import DomainError
from domain.integrity import GENESIS_HASH, Actor, Stamp, chain_hash
from domain.money import Money

ACCOUNTS = 4
# Ceilings a few movements reach, so that sequences run into them.
BALANCE_MAX_MINOR = 50_000
OVERDRAFT_MAX_MINOR = 5_000
amounts = st.integers(min_value=1, max_value=20_000)
indexes = st.integers(min_value=0, max_value=ACCOUNTS - 1)


class Ledger(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.clock = datetime(2026, 1, 1, tzinfo=UTC)
        self.accounts: list[Account] = []
        self.events: dict[UUID, list[Account.Event]] = {}
        self.external_net_minor = 0  # deposits minus withdrawals: all else is conserved

    def stamp(self) -> Stamp:
        self.clock += timedelta(seconds=1)
        return Stamp(Actor("prop", "teller"), self.clock, "corr", "tx", b"key")

    def keep(self, account: Account) -> None:
        self.events.setdefault(account.id, []).extend(account.collect_events())

    @initialize(
        overdrafts=st.lists(
            st.integers(0, OVERDRAFT_MAX_MINOR), min_size=ACCOUNTS, max_size=ACCOUNTS
        )
    )
    def open_accounts(self, overdrafts: list[int]) -> None:
        for number, overdraft in enumerate(overdrafts):
            account_id = UUID(int=number + 1)
            account = Account.open(
                account_id,
                f"owner {number}",
                "001",
                "GBP",
                overdraft,
                self.stamp(),
                overdraft_max_minor=OVERDRAFT_MAX_MINOR,
            )
            self.accounts.append(account)
            self.keep(account)

    def attempt(self, action, *touched: Account) -> bool:  # type: ignore[no-untyped-def]
        try:
            action()
        except DomainError:
            return False
        finally:
            for account in touched:
                self.keep(account)
        return True

    @rule(index=indexes, amount=amounts)
    def deposit(self, index: int, amount: int) -> None:
        account = self.accounts[index]
        if self.attempt(
            lambda: account.deposit(
                Money(amount, "GBP"),
                "cash",
                None,
                self.stamp(),
                balance_max_minor=BALANCE_MAX_MINOR,
            ),
            account,
        ):
            self.external_net_minor += amount

    @rule(index=indexes, amount=amounts)
    def withdraw(self, index: int, amount: int) -> None:
        account = self.accounts[index]
        if self.attempt(
            lambda: account.withdraw(Money(amount, "GBP"), "cash", None, self.stamp()), account
        ):
            self.external_net_minor -= amount

    @rule(source=indexes, destination=indexes, amount=amounts)
    def transfer(self, source: int, destination: int, amount: int) -> None:
        a, b = self.accounts[source], self.accounts[destination]
        self.attempt(
            lambda: transfer(
                a, b, Money(amount, "GBP"), None, self.stamp(), balance_max_minor=BALANCE_MAX_MINOR
            ),
            a,
            b,
        )

    @rule(index=indexes, action=st.sampled_from(["freeze", "unfreeze"]))
    def change_status(self, index: int, action: str) -> None:
        account = self.accounts[index]
        self.attempt(lambda: getattr(account, action)("because", self.stamp()), account)

    @invariant()
    def money_is_conserved(self) -> None:
        if self.accounts:
            assert sum(a.balance_minor for a in self.accounts) == self.external_net_minor

    @invariant()
    def no_balance_below_its_overdraft_limit(self) -> None:
        for account in self.accounts:
            assert account.balance_minor >= -account.overdraft_limit_minor

    @invariant()
    def no_balance_above_the_ceiling(self) -> None:
        for account in self.accounts:
            assert account.balance_minor <= BALANCE_MAX_MINOR

    @invariant()
    def rebuilt_from_events_equals_live(self) -> None:
        for account in self.accounts:
            rebuilt: Account | None = None
            previous_hash = GENESIS_HASH
            for event in self.events[account.id]:
                assert event.previous_hash == previous_hash
                assert chain_hash(event.chain_record()) == event.hash
                previous_hash = event.hash
                rebuilt = event.mutate(rebuilt)
            assert rebuilt == account


TestLedgerInvariants = Ledger.TestCase
