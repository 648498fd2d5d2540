"""The group decision on its own (no store, no clock): replays, branch scope, refusals
failing alone, and money conserved across a group, over random groups of commands."""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any
from uuid import UUID

from hypothesis import given
from hypothesis import strategies as st

from application.commands import (
    ChangeStatus,
    Command,
    Deposit,
    OpenAccount,
    Outcome,
    Submission,
    Transfer,
    Withdraw,
    account_ids,
)
from application.decide import Decision, decide_group
from application.terms import MoneyCeilings, Terms
from domain.account import Account
from domain.errors import DomainError, Forbidden, InsufficientFunds
from domain.integrity import Actor, Stamp
from domain.money import Money

T0 = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)
TERMS = Terms(
    ceilings=MoneyCeilings(
        balance_max_major=1_000_000, overdraft_max_major=1_000, teller_overdraft_max_major=100
    ),
    mac_key=b"test-mac-key",
)
TELLER = Actor("alice", "teller")
OPENING_MINOR = 10_000
# Accounts 0 and 1 are of branch A, 2 and 3 of branch B.
BRANCHES = ("A", "A", "B", "B")
ACCOUNT_IDS = tuple(UUID(int=i + 1) for i in range(len(BRANCHES)))
# A small pool, so random groups reuse transaction ids (replays and conflicts).
TRANSACTION_IDS = tuple(UUID(int=1_000 + i) for i in range(6))


def stored_accounts() -> dict[UUID, Account]:
    """Every account opened and funded, its events already stored (none pending)."""
    accounts = {}
    for account_id, branch in zip(ACCOUNT_IDS, BRANCHES, strict=True):
        stamp = Stamp(TELLER, T0, "corr-setup", None, TERMS.mac_key)
        account = Account.open(account_id, "Owner", branch, "GBP", 0, stamp, overdraft_max_minor=0)
        account.deposit(Money(OPENING_MINOR, "GBP"), "cash", None, stamp, balance_max_minor=10**12)
        account.collect_events()
        accounts[account_id] = account
    return accounts


def moments() -> Iterator[datetime]:
    return (T0 + timedelta(seconds=i) for i in itertools.count(1))


def decide(
    commands: list[Command],
    accounts: dict[UUID, Account],
    stored: dict[UUID, Any] | None = None,
    *,
    branch_scope: str | None = None,
    timestamps: Iterator[datetime] | None = None,
) -> Decision:
    submissions = [Submission(c, TELLER, "corr", branch_scope) for c in commands]
    return decide_group(
        submissions,
        accounts,
        stored or {},
        terms=TERMS,
        timestamps=timestamps if timestamps is not None else moments(),
    )


amounts_minor = st.integers(min_value=1, max_value=6_000)
any_account = st.sampled_from(ACCOUNT_IDS)
transaction_ids = st.sampled_from(TRANSACTION_IDS)
deposits = st.builds(
    Deposit,
    account_id=any_account,
    money=amounts_minor.map(lambda m: Money(m, "GBP")),
    transaction_id=transaction_ids,
)
withdrawals = st.builds(
    Withdraw,
    account_id=any_account,
    money=amounts_minor.map(lambda m: Money(m, "GBP")),
    transaction_id=transaction_ids,
)
transfers = st.builds(
    Transfer,
    from_account_id=any_account,
    to_account_id=any_account,
    money=amounts_minor.map(lambda m: Money(m, "GBP")),
    transaction_id=transaction_ids,
)
money_commands = st.one_of(deposits, withdrawals, transfers)
groups = st.lists(money_commands, min_size=1, max_size=12)


def balances(accounts: dict[UUID, Account]) -> dict[UUID, int]:
    return {i: a.balance_minor for i, a in accounts.items()}


def event_hashes(decision: Decision) -> dict[UUID, list[str]]:
    return {i: [e.hash for e in events] for i, events in decision.events.items()}


def summary(outcome: Outcome) -> tuple[Any, ...]:
    """An outcome as data: refusals compare by kind and message, not by identity."""
    error = outcome.error
    return (outcome.body, outcome.replayed, None if error is None else (type(error), str(error)))


@given(command=money_commands)
def test_a_transaction_id_seen_again_replays_the_stored_reply_and_writes_nothing(
    command: Command,
) -> None:
    accounts = stored_accounts()
    first = decide([command], accounts)
    [outcome] = first.outcomes
    if outcome.error is not None:
        assert first.replies == {}
        assert first.events == {}
        return
    before = balances(first.accounts)
    versions = {i: a.version for i, a in first.accounts.items()}
    again = decide([command], first.accounts, first.replies)
    assert again.outcomes == [Outcome(body=outcome.body, replayed=True)]
    assert again.events == {}
    assert again.replies == {}
    assert balances(again.accounts) == before
    assert {i: a.version for i, a in again.accounts.items()} == versions


@given(command=money_commands)
def test_an_id_repeated_within_a_group_is_settled_in_memory_as_a_replay(
    command: Command,
) -> None:
    decision = decide([command, command], stored_accounts())
    first, second = decision.outcomes
    if first.error is None:
        assert second == Outcome(body=first.body, replayed=True)
        assert len(decision.replies) == 1
    else:
        assert type(second.error) is type(first.error)
        assert decision.replies == {}
        assert decision.events == {}


branch_b_commands = st.one_of(
    st.builds(
        Deposit,
        account_id=st.sampled_from(ACCOUNT_IDS[:2]),
        money=amounts_minor.map(lambda m: Money(m, "GBP")),
        transaction_id=transaction_ids,
    ),
    st.builds(
        Withdraw,
        account_id=st.sampled_from(ACCOUNT_IDS[:2]),
        money=amounts_minor.map(lambda m: Money(m, "GBP")),
        transaction_id=transaction_ids,
    ),
    st.builds(
        Transfer,
        from_account_id=st.sampled_from(ACCOUNT_IDS[:2]),
        to_account_id=any_account,
        money=amounts_minor.map(lambda m: Money(m, "GBP")),
        transaction_id=transaction_ids,
    ),
    st.builds(
        ChangeStatus,
        account_id=st.sampled_from(ACCOUNT_IDS[:2]),
        action=st.sampled_from(["freeze", "close"]),
        reason=st.just("why"),
    ),
    st.builds(
        OpenAccount,
        account_id=st.uuids(),
        owner=st.just("New"),
        branch=st.just("A"),
        currency=st.just("GBP"),
        overdraft_limit_minor=st.just(0),
    ),
)


@given(command=branch_b_commands)
def test_a_teller_of_branch_b_cannot_act_on_an_account_of_branch_a(command: Command) -> None:
    accounts = stored_accounts()
    before = balances(accounts)
    decision = decide([command], accounts, branch_scope="B")
    [outcome] = decision.outcomes
    assert isinstance(outcome.error, Forbidden)
    assert decision.events == {}
    assert decision.replies == {}
    assert balances(decision.accounts) == before
    assert all(a.version == 2 for a in decision.accounts.values())


@given(group=groups, refused_at=st.integers(min_value=0, max_value=12))
def test_a_refusal_fails_alone_and_the_rest_of_the_group_decides_as_without_it(
    group: list[Command], refused_at: int
) -> None:
    # Beyond any balance: refused by the domain, after it has drawn its moment.
    refused = Withdraw(ACCOUNT_IDS[0], Money(10**9, "GBP"), UUID(int=9_999))
    with_refusal = [*group[:refused_at], refused, *group[refused_at:]]
    position = min(refused_at, len(group))
    alone = decide(group, stored_accounts(), timestamps=itertools.repeat(T0))
    among = decide(with_refusal, stored_accounts(), timestamps=itertools.repeat(T0))
    assert isinstance(among.outcomes[position].error, InsufficientFunds)
    others = among.outcomes[:position] + among.outcomes[position + 1 :]
    assert [summary(o) for o in others] == [summary(o) for o in alone.outcomes]
    assert event_hashes(among) == event_hashes(alone)
    assert among.replies == alone.replies
    assert balances(among.accounts) == balances(alone.accounts)


@given(group=groups)
def test_a_group_conserves_money(group: list[Command]) -> None:
    accounts = stored_accounts()
    before = balances(accounts)
    decision = decide(group, accounts)
    deposited = withdrawn = 0
    for command, outcome in zip(group, decision.outcomes, strict=True):
        assert outcome.error is None or isinstance(outcome.error, DomainError)
        if outcome.error is not None or outcome.replayed:
            continue
        match command:
            case Deposit(money=money):
                deposited += money.amount_minor
            case Withdraw(money=money):
                withdrawn += money.amount_minor
    after = balances(decision.accounts)
    assert sum(after[i] - before[i] for i in before) == deposited - withdrawn
    # Each account's change is what its new events moved; no balance went below zero.
    for account_id, events in decision.events.items():
        moved = sum(
            e.amount_minor * (1 if isinstance(e, Account.Deposited | Account.TransferredIn) else -1)
            for e in events
            if isinstance(e, Account.Movement)
        )
        assert after[account_id] - before[account_id] == moved
    assert all(balance >= 0 for balance in after.values())
    untouched = set(ACCOUNT_IDS) - {i for c in group for i in account_ids(c)}
    assert all(after[i] == before[i] for i in untouched)
