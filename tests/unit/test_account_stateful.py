"""Random command sequences against accounts, checking the invariants after every step:
money is conserved across transfers, captures and reversals, no balance goes below its
overdraft limit nor above the ceiling, no available balance (balance, overdraft, less
pending holds) below zero, the reversals of a transaction never add up to more than it,
and each account rebuilt from its events equals the live one."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from uuid import UUID, uuid4

from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule

from domain.account import Account, Original
from domain.errors import DomainError
from domain.integrity import GENESIS_HASH, Actor, Stamp, chain_hash
from domain.money import Money
from domain.postings import capture_hold, reverse, transfer

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
        self.hold_ids: list[tuple[int, str]] = []  # (account index, hold id)
        # Reversible transactions: (original, amount reversed so far).
        self.originals: list[Original] = []
        self.reversed_minor: dict[str, int] = {}

    def stamp(self, transaction_id: str = "tx") -> Stamp:
        self.clock += timedelta(seconds=1)
        return Stamp(Actor("prop", "teller"), self.clock, "corr", transaction_id, b"key")

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
        tid = str(uuid4())
        if self.attempt(
            lambda: account.deposit(
                Money(amount, "GBP"),
                "cash",
                None,
                self.stamp(tid),
                balance_max_minor=BALANCE_MAX_MINOR,
            ),
            account,
        ):
            self.external_net_minor += amount
            self.originals.append(Original(tid, amount, "GBP", None, account.id))

    @rule(
        index=indexes,
        payee=st.none() | indexes,
        amount=amounts,
        expires_in_s=st.integers(1, 30),
    )
    def place_hold(self, index: int, payee: int | None, amount: int, expires_in_s: int) -> None:
        account = self.accounts[index]
        to = None if payee is None or payee == index else self.accounts[payee].id
        hold_id = uuid4()
        stamp = self.stamp(str(hold_id))
        if self.attempt(
            lambda: account.place_hold(
                hold_id,
                Money(amount, "GBP"),
                to,
                stamp.timestamp + timedelta(seconds=expires_in_s),
                None,
                stamp,
            ),
            account,
        ):
            self.hold_ids.append((index, str(hold_id)))

    @rule(data=st.data(), part=st.none() | amounts)
    def capture(self, data: st.DataObject, part: int | None) -> None:
        if not self.hold_ids:
            return
        index, hold_id = data.draw(st.sampled_from(self.hold_ids))
        source = self.accounts[index]
        hold = source.holds.get(hold_id)
        target = None
        if hold is not None and hold.to_account_id is not None:
            target = next(a for a in self.accounts if str(a.id) == hold.to_account_id)
        tid = str(uuid4())
        captured: list[Money] = []
        touched = [source] if target is None else [source, target]
        if self.attempt(
            lambda: captured.append(
                capture_hold(
                    source,
                    target,
                    hold_id,
                    part,
                    self.stamp(tid),
                    balance_max_minor=BALANCE_MAX_MINOR,
                )[1]
            ),
            *touched,
        ):
            amount = captured[0].amount_minor
            if target is None:
                self.external_net_minor -= amount
            self.originals.append(
                Original(tid, amount, "GBP", source.id, None if target is None else target.id)
            )

    @rule(data=st.data(), expire=st.booleans())
    def end_hold(self, data: st.DataObject, expire: bool) -> None:
        if not self.hold_ids:
            return
        index, hold_id = data.draw(st.sampled_from(self.hold_ids))
        account = self.accounts[index]
        if expire:
            self.clock += timedelta(seconds=data.draw(st.integers(0, 40)))
            self.attempt(lambda: account.expire_hold(hold_id, self.stamp()), account)
        else:
            self.attempt(lambda: account.void_hold(hold_id, "no", self.stamp()), account)

    @rule(data=st.data(), part=st.none() | amounts)
    def reverse(self, data: st.DataObject, part: int | None) -> None:
        if not self.originals:
            return
        original = data.draw(st.sampled_from(self.originals))
        by_id = {a.id: a for a in self.accounts}
        debit = None if original.credited is None else by_id[original.credited]
        credit = None if original.debited is None else by_id[original.debited]
        touched = [a for a in (debit, credit) if a is not None]
        moved: list[Money] = []
        if self.attempt(
            lambda: moved.append(
                reverse(
                    original,
                    debit,
                    credit,
                    part,
                    "mistake",
                    self.stamp(str(uuid4())),
                    balance_max_minor=BALANCE_MAX_MINOR,
                )
            ),
            *touched,
        ):
            amount = moved[0].amount_minor
            self.external_net_minor += (credit is not None) * amount - (debit is not None) * amount
            key = original.transaction_id
            self.reversed_minor[key] = self.reversed_minor.get(key, 0) + amount

    @rule(index=indexes, amount=amounts)
    def withdraw(self, index: int, amount: int) -> None:
        account = self.accounts[index]
        tid = str(uuid4())
        if self.attempt(
            lambda: account.withdraw(Money(amount, "GBP"), "cash", None, self.stamp(tid)), account
        ):
            self.external_net_minor -= amount
            self.originals.append(Original(tid, amount, "GBP", account.id, None))

    @rule(source=indexes, destination=indexes, amount=amounts)
    def transfer(self, source: int, destination: int, amount: int) -> None:
        a, b = self.accounts[source], self.accounts[destination]
        tid = str(uuid4())
        if self.attempt(
            lambda: transfer(
                a,
                b,
                Money(amount, "GBP"),
                None,
                self.stamp(tid),
                balance_max_minor=BALANCE_MAX_MINOR,
            ),
            a,
            b,
        ):
            self.originals.append(Original(tid, amount, "GBP", a.id, b.id))

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
    def available_never_below_zero(self) -> None:
        for account in self.accounts:
            assert account.available_minor >= 0
            assert account.held_minor == sum(h.amount_minor for h in account.holds.values())

    @invariant()
    def reversals_never_exceed_their_original(self) -> None:
        for original in self.originals:
            reversed_minor = self.reversed_minor.get(original.transaction_id, 0)
            assert reversed_minor <= original.amount_minor
            for account_id in (original.debited, original.credited):
                if account_id is not None:
                    account = next(a for a in self.accounts if a.id == account_id)
                    assert account.reversed_minor.get(original.transaction_id, 0) == reversed_minor

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
