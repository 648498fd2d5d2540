"""Random sequences of holds, captures, voids, expiries, reversals and transfers through the
ledger on a real store (each command a group commit, as the API sends them; reversals
find their original through the store as the route does). After every step: money is
conserved, no available balance is below zero, the reversals of a transaction never add
up to more than it, and each account rebuilt from the store equals the one in memory."""

from __future__ import annotations

from datetime import timedelta
from typing import Any
from uuid import UUID, uuid4

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    rule,
    run_state_machine_as_test,
)

from application.commands import (
    CaptureHold,
    Deposit,
    ExpireHold,
    OpenAccount,
    PlaceHold,
    ReverseTransaction,
    Submission,
    Transfer,
    VoidHold,
    Withdraw,
)
from application.ledger import Ledger
from application.lookups import find_hold, find_original
from domain.account import Account
from domain.errors import DomainError
from domain.integrity import SYSTEM_ROLE, Actor
from domain.money import Money
from tests.integration.support import TELLER, Clock

ACCOUNTS = 3
amounts = st.integers(min_value=1, max_value=5_000)
indexes = st.integers(min_value=0, max_value=ACCOUNTS - 1)
ADMIN = Actor("root", "admin")
SWEEP = Actor("system:holds", SYSTEM_ROLE)


def test_holds_and_reversals_keep_the_ledger_invariants(ledger: Ledger) -> None:
    clock = Clock(step=timedelta(seconds=1))
    ledger.options.clock = clock

    class Machine(RuleBasedStateMachine):
        def __init__(self) -> None:
            super().__init__()
            self.ids: list[UUID] = []
            self.net_minor = 0  # deposits, withdrawals and card captures from outside
            self.holds: list[UUID] = []
            self.transactions: list[UUID] = []  # reversible movements
            self.reversed: dict[UUID, int] = {}
            self.amounts: dict[UUID, int] = {}

        def run(self, command: Any, actor: Actor = TELLER) -> dict[str, Any] | None:
            [outcome] = ledger.execute([Submission(command, actor, "corr-prop")])
            if outcome.error is not None:
                assert isinstance(outcome.error, DomainError)
                return None
            assert outcome.body is not None
            return outcome.body

        @initialize()
        def open_accounts(self) -> None:
            for number in range(ACCOUNTS):
                account_id = uuid4()
                assert self.run(OpenAccount(account_id, f"prop {number}", "001", "GBP", 1_000))
                self.ids.append(account_id)

        @rule(index=indexes, amount=amounts)
        def deposit(self, index: int, amount: int) -> None:
            tid = uuid4()
            if self.run(Deposit(self.ids[index], Money(amount, "GBP"), tid)):
                self.net_minor += amount
                self.transactions.append(tid)
                self.amounts[tid] = amount

        @rule(index=indexes, amount=amounts)
        def withdraw(self, index: int, amount: int) -> None:
            tid = uuid4()
            if self.run(Withdraw(self.ids[index], Money(amount, "GBP"), tid)):
                self.net_minor -= amount
                self.transactions.append(tid)
                self.amounts[tid] = amount

        @rule(source=indexes, payee=indexes, amount=amounts)
        def transfer(self, source: int, payee: int, amount: int) -> None:
            tid = uuid4()
            command = Transfer(self.ids[source], self.ids[payee], Money(amount, "GBP"), tid)
            if self.run(command):
                self.transactions.append(tid)
                self.amounts[tid] = amount

        @rule(index=indexes, payee=st.none() | indexes, amount=amounts, expires=st.integers(1, 5))
        def place(self, index: int, payee: int | None, amount: int, expires: int) -> None:
            hold_id = uuid4()
            to = None if payee is None or payee == index else self.ids[payee]
            if self.run(PlaceHold(self.ids[index], Money(amount, "GBP"), hold_id, expires, to)):
                self.holds.append(hold_id)

        @rule(data=st.data(), part=st.none() | amounts)
        def capture(self, data: st.DataObject, part: int | None) -> None:
            if not self.holds:
                return
            ref = find_hold(ledger, data.draw(st.sampled_from(self.holds)))
            tid = uuid4()
            body = self.run(CaptureHold(ref.hold_id, ref.account_id, ref.to_account_id, tid, part))
            if body:
                captured = int(body["captured_amount"].replace(".", ""))
                if ref.to_account_id is None:
                    self.net_minor -= captured
                self.transactions.append(tid)
                self.amounts[tid] = captured

        @rule(data=st.data(), expire=st.booleans(), wait_s=st.integers(0, 6))
        def end(self, data: st.DataObject, expire: bool, wait_s: int) -> None:
            if not self.holds:
                return
            ref = find_hold(ledger, data.draw(st.sampled_from(self.holds)))
            if expire:
                clock.jump(timedelta(seconds=wait_s))
                self.run(
                    ExpireHold(ref.hold_id, ref.account_id), Actor("system:holds", SYSTEM_ROLE)
                )
            else:
                self.run(VoidHold(ref.hold_id, ref.account_id, uuid4(), "changed mind"))

        @rule(data=st.data(), part=st.none() | amounts)
        def reverse(self, data: st.DataObject, part: int | None) -> None:
            if not self.transactions:
                return
            tid = data.draw(st.sampled_from(self.transactions))
            original = find_original(ledger, tid)
            assert original.amount_minor == self.amounts[tid]
            body = self.run(ReverseTransaction(original, uuid4(), "mistake", part), ADMIN)
            if body:
                amount = int(body["amount"].replace(".", ""))
                self.reversed[tid] = self.reversed.get(tid, 0) + amount
                # A reversal gives back to what was debited, takes from what was credited.
                self.net_minor += amount * (
                    (original.debited is not None) - (original.credited is not None)
                )

        def accounts(self) -> list[Account]:
            return [ledger.get_account(i) for i in self.ids]

        @invariant()
        def money_is_conserved(self) -> None:
            if self.ids:
                assert sum(a.balance_minor for a in self.accounts()) == self.net_minor

        @invariant()
        def available_never_below_zero(self) -> None:
            for account in self.accounts():
                assert account.available_minor >= 0, account.id
                assert account.balance_minor >= -account.overdraft_limit_minor

        @invariant()
        def reversals_never_exceed_their_original(self) -> None:
            for tid, total in self.reversed.items():
                assert total <= self.amounts[tid]

        @invariant()
        def rebuilt_from_the_store_equals_the_live_account(self) -> None:
            if not self.ids:
                return
            stored = ledger.loader.load_aggregates(self.ids)
            for account in self.accounts():
                assert stored[account.id] == account

    run_state_machine_as_test(
        Machine,
        settings=settings(
            max_examples=40,
            stateful_step_count=30,
            deadline=None,
            suppress_health_check=[HealthCheck.too_slow],
        ),
    )
