"""Group commit across callers, on real PostgreSQL: concurrent commands share
transactions, each still atomic on its own, and every caller hears its own outcome."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from urllib.parse import urlsplit
from uuid import UUID, uuid4

import pytest

from application.commands import Deposit, OpenAccount, Outcome, Submission, Transfer, Withdraw
from application.group_commit import GroupCommitter
from application.ledger import Ledger
from domain.account import Account
from domain.errors import InsufficientFunds, Unavailable
from domain.integrity import GENESIS_HASH, Actor, chain_hash
from domain.money import Money
from infrastructure.eventstore.ledger import open_ledger
from infrastructure.settings import Settings
from tests.conftest import _admin_execute
from tests.integration.support import run

pytestmark = pytest.mark.integration

ACTOR = Actor("gc", "teller")


@pytest.fixture
def settings(settings_factory) -> Settings:  # type: ignore[no-untyped-def]
    return settings_factory()  # type: ignore[no-any-return]


@pytest.fixture
def ledger(settings: Settings) -> Iterator[Ledger]:
    app = open_ledger(settings)
    yield app
    app.close()


def sub(command: object) -> Submission:
    return Submission(command, ACTOR, "corr-gc")  # type: ignore[arg-type]


def opened(ledger: Ledger, count: int, balance_minor: int) -> list[UUID]:
    ids = [uuid4() for _ in range(count)]
    run(ledger, *(OpenAccount(i, "GC", "001", "GBP", 0) for i in ids))
    if balance_minor:
        run(ledger, *(Deposit(i, Money(balance_minor, "GBP"), uuid4()) for i in ids))
    return ids


def test_concurrent_callers_share_transactions_and_lose_nothing(ledger: Ledger) -> None:
    accounts = opened(ledger, 10, 100_000)
    committer = GroupCommitter(ledger, window_s=0.005, max_commands=1000)
    barrier = threading.Barrier(40)

    def call(i: int) -> Outcome:
        source, target = accounts[i % 10], accounts[(i + 3) % 10]
        barrier.wait()
        [outcome] = committer.execute(
            [sub(Transfer(source, target, Money(100 + i, "GBP"), uuid4()))]
        )
        return outcome

    try:
        with ThreadPoolExecutor(max_workers=40) as pool:
            outcomes = list(pool.map(call, range(40)))
    finally:
        committer.close()
    assert all(o.error is None for o in outcomes)
    assert committer.commands_committed == 40
    assert committer.groups_committed < 40, "callers were coalesced"
    expected = dict.fromkeys(accounts, 100_000)
    for i in range(40):
        expected[accounts[i % 10]] -= 100 + i
        expected[accounts[(i + 3) % 10]] += 100 + i
    assert {a: ledger.get_account(a).balance_minor for a in accounts} == expected
    for i, outcome in enumerate(outcomes):
        assert outcome.body is not None
        assert outcome.body["from"]["account_id"] == str(accounts[i % 10])


def test_coroutine_callers_get_their_own_outcomes_one_loop_wake_up_per_group(
    ledger: Ledger,
) -> None:
    """`submit`, as the command API calls it: every coroutine hears its own outcome; a
    caller that stopped waiting does not keep the others waiting; the committer wakes the
    event loop once per group, not once per caller."""
    accounts = opened(ledger, 10, 100_000)
    committer = GroupCommitter(ledger, window_s=0.05, max_commands=1000)
    transactions = [uuid4() for _ in range(41)]

    async def main() -> tuple[list[Outcome], int]:
        loop = asyncio.get_running_loop()
        wake_ups = 0
        call_soon_threadsafe = loop.call_soon_threadsafe

        def counted(*args, **kwargs):  # type: ignore[no-untyped-def]
            nonlocal wake_ups
            wake_ups += 1
            return call_soon_threadsafe(*args, **kwargs)

        loop.call_soon_threadsafe = counted  # type: ignore[method-assign]

        async def call(i: int) -> Outcome:
            source, target = accounts[i % 10], accounts[(i + 3) % 10]
            [outcome] = await committer.submit(
                [sub(Transfer(source, target, Money(100 + i, "GBP"), transactions[i]))]
            )
            return outcome

        gone = asyncio.create_task(call(40))  # its caller stops waiting at once
        await asyncio.sleep(0)
        gone.cancel()
        outcomes = await asyncio.gather(*(call(i) for i in range(40)))
        return outcomes, wake_ups

    try:
        outcomes, wake_ups = asyncio.run(main())
    finally:
        committer.close()
    assert all(o.error is None for o in outcomes)
    for i, outcome in enumerate(outcomes):
        assert outcome.body is not None
        assert outcome.body["from"]["account_id"] == str(accounts[i % 10])
        assert outcome.body["transaction_id"] == str(transactions[i])
    assert committer.commands_committed == 41, "the cancelled caller's transfer committed too"
    assert committer.groups_committed < 41, "callers were coalesced"
    assert wake_ups <= committer.groups_committed
    expected = dict.fromkeys(accounts, 100_000)
    for i in range(41):
        expected[accounts[i % 10]] -= 100 + i
        expected[accounts[(i + 3) % 10]] += 100 + i
    assert {a: ledger.get_account(a).balance_minor for a in accounts} == expected


def test_a_refused_command_fails_alone_and_duplicates_across_callers_replay(
    ledger: Ledger,
) -> None:
    [poor, rich] = opened(ledger, 2, 1_000)
    repeated = uuid4()
    committer = GroupCommitter(ledger, window_s=0.2, max_commands=1000)
    requests = [
        [sub(Withdraw(poor, Money(5_000, "GBP"), uuid4()))],
        [sub(Deposit(rich, Money(250, "GBP"), repeated))],
        [sub(Deposit(rich, Money(250, "GBP"), repeated))],
        [sub(Deposit(rich, Money(999, "GBP"), repeated))],
    ]
    try:
        with ThreadPoolExecutor(max_workers=4) as pool:
            results = list(pool.map(committer.execute, requests))
    finally:
        committer.close()
    codes = [r[0].error.code if r[0].error else "ok" for r in results]
    assert codes[0] == "insufficient_funds"
    assert sorted(codes[1:]) == ["ok", "ok", "transaction_conflict"]
    oks = [r[0] for r in results[1:] if r[0].error is None]
    assert oks[0].body == oks[1].body
    assert sorted(o.replayed for o in oks) == [False, True]
    assert ledger.get_account(rich).balance_minor == 1_250
    assert ledger.get_account(poor).balance_minor == 1_000


def test_a_group_is_capped_and_a_request_is_never_split(ledger: Ledger) -> None:
    [account] = opened(ledger, 1, 0)
    committer = GroupCommitter(ledger, window_s=0.2, max_commands=5)
    requests = [
        [sub(Deposit(account, Money(1, "GBP"), uuid4())) for _ in range(3)] for _ in range(4)
    ]
    try:
        with ThreadPoolExecutor(max_workers=4) as pool:
            results = list(pool.map(committer.execute, requests))
    finally:
        committer.close()
    assert [len(r) for r in results] == [3, 3, 3, 3]
    assert committer.groups_committed == 4, "3 + 3 would pass the cap of 5"
    assert ledger.get_account(account).balance_minor == 12


def test_a_steady_stream_of_callers_is_paced_into_few_groups(ledger: Ledger) -> None:
    [account] = opened(ledger, 1, 0)
    interval_s = 0.05
    committer = GroupCommitter(ledger, window_s=0.002, max_commands=1000, interval_s=interval_s)
    barrier = threading.Barrier(60)

    def call(i: int) -> Outcome:
        barrier.wait()
        time.sleep(i * 0.003)  # a burst of five, then one request every 3 ms
        [outcome] = committer.execute([sub(Deposit(account, Money(1, "GBP"), uuid4()))])
        return outcome

    started = time.monotonic()
    try:
        with ThreadPoolExecutor(max_workers=60) as pool:
            outcomes = list(pool.map(call, [0, 0, 0, 0, *range(56)]))
    finally:
        committer.close()
    elapsed_s = time.monotonic() - started
    assert all(o.error is None for o in outcomes)
    assert committer.commands_committed == 60
    # Unpaced, a write takes about as long as the gap between requests: dozens of groups.
    # Paced, a group closes at most once an interval, but after a lone request's group.
    assert committer.groups_committed <= elapsed_s / interval_s + 3
    assert ledger.get_account(account).balance_minor == 60


def test_a_caller_waiting_for_each_reply_is_never_paced(ledger: Ledger) -> None:
    [account] = opened(ledger, 1, 0)
    interval_s = 5.0
    committer = GroupCommitter(ledger, window_s=0, max_commands=1000, interval_s=interval_s)
    started = time.monotonic()
    try:
        for _ in range(4):
            [outcome] = committer.execute([sub(Deposit(account, Money(1, "GBP"), uuid4()))])
            assert outcome.error is None
    finally:
        committer.close()
    assert time.monotonic() - started < interval_s, "each group held one request: no pacing"
    assert committer.groups_committed == 4
    assert ledger.get_account(account).balance_minor == 4


def test_when_the_store_is_gone_every_caller_is_told_to_retry(settings: Settings) -> None:
    ledger = open_ledger(settings)
    [account] = opened(ledger, 1, 0)
    committer = GroupCommitter(ledger, window_s=0.05, max_commands=100)
    database = urlsplit(settings.resolved_database_url()).path.lstrip("/")
    _admin_execute(f'DROP DATABASE "{database}" WITH (FORCE)')
    try:
        with ThreadPoolExecutor(max_workers=3) as pool:
            futures = [
                pool.submit(committer.execute, [sub(Deposit(account, Money(1, "GBP"), uuid4()))])
                for _ in range(3)
            ]
            for future in futures:
                with pytest.raises(Unavailable):
                    future.result()
    finally:
        committer.close()
        ledger.close()
    with pytest.raises(Unavailable, match="stopping"):
        committer.execute([sub(Deposit(account, Money(1, "GBP"), uuid4()))])


# Accounts held in memory, and races with other processes ------------------------------


class WritesBetweenLoadAndSave:
    """Another process (a second real ledger on the same store) writes the given account
    right after this ledger has loaded its group and before it saves: the race the
    unique constraint settles. `times` races, then the store is left alone."""

    def __init__(self, ledger: Ledger, other: Ledger, account_id: UUID, times: int) -> None:
        self.other, self.account_id, self.remaining = other, account_id, times
        self.loads = 0
        self._select = ledger.replies.select_group_state
        ledger.replies.select_group_state = self  # type: ignore[method-assign]

    def __call__(self, versions, command_ids):  # type: ignore[no-untyped-def]
        state = self._select(versions, command_ids)
        self.loads += 1
        if self.remaining > 0 and self.account_id in versions:
            self.remaining -= 1
            run(self.other, Deposit(self.account_id, Money(1, "GBP"), uuid4()))
        return state


@pytest.fixture
def other(settings: Settings) -> Iterator[Ledger]:
    app = open_ledger(settings)
    yield app
    app.close()


def judge(ledger: Ledger, *commands: object) -> list[Outcome]:
    """All the commands in one group; their outcomes, refusals included."""
    return ledger.execute([sub(c) for c in commands])


def chain_is_whole(ledger: Ledger, account_id: UUID) -> bool:
    previous = GENESIS_HASH
    for version, event in enumerate(ledger.events.get(account_id), start=1):
        assert isinstance(event, Account.Event)
        if event.previous_hash != previous or chain_hash(event.chain_record()) != event.hash:
            return False
        if event.originator_version != version:
            return False
        previous = event.hash
    return True


def test_an_account_in_memory_is_brought_up_to_date_before_each_group(
    ledger: Ledger, other: Ledger
) -> None:
    [account_id] = opened(ledger, 1, 100)
    run(ledger, Deposit(account_id, Money(1, "GBP"), uuid4()))
    # Another process takes everything; this one still holds the account in memory.
    run(other, Withdraw(account_id, Money(101, "GBP"), uuid4()))
    [refused] = judge(ledger, Withdraw(account_id, Money(1, "GBP"), uuid4()))
    assert isinstance(refused.error, InsufficientFunds)
    [accepted] = judge(ledger, Deposit(account_id, Money(5, "GBP"), uuid4()))
    assert accepted.body is not None
    assert accepted.body["version"] == 5
    assert chain_is_whole(ledger, account_id)


def test_a_lost_race_is_judged_again_from_the_store_and_loses_nothing(
    ledger: Ledger, other: Ledger
) -> None:
    [raced, quiet] = opened(ledger, 2, 1_000)
    race = WritesBetweenLoadAndSave(ledger, other, raced, times=2)
    outcomes = judge(
        ledger,
        Withdraw(raced, Money(300, "GBP"), uuid4()),
        Transfer(quiet, raced, Money(200, "GBP"), uuid4()),
        Deposit(quiet, Money(50, "GBP"), uuid4()),
    )
    assert [o.error for o in outcomes] == [None, None, None]
    assert race.loads == 3  # two lost races, then the save went through
    # Both of the other process's deposits and all three commands, each applied once.
    assert ledger.get_account(raced).balance_minor == 1_000 - 300 + 200 + 2
    assert ledger.get_account(quiet).balance_minor == 1_000 - 200 + 50
    assert ledger.get_account(raced).version == 2 + 2 + 2
    assert all(chain_is_whole(ledger, a) for a in (raced, quiet))


def test_commands_on_an_account_that_keeps_changing_are_held_back_and_the_rest_commit(
    settings_factory,  # type: ignore[no-untyped-def]
) -> None:
    settings = settings_factory(command_retries_max=3)
    ledger, other = open_ledger(settings), open_ledger(settings)
    try:
        [hot, calm] = opened(ledger, 2, 1_000)
        WritesBetweenLoadAndSave(ledger, other, hot, times=1_000)
        outcomes = judge(
            ledger,
            Deposit(calm, Money(10, "GBP"), uuid4()),
            Transfer(calm, hot, Money(20, "GBP"), uuid4()),
            Withdraw(hot, Money(30, "GBP"), uuid4()),
            Deposit(calm, Money(40, "GBP"), uuid4()),
        )
        held_back = [o.error for o in outcomes[1:3]]
        assert all(isinstance(e, Unavailable) and e.retry_after_s >= 1 for e in held_back)
        assert outcomes[0].error is None
        assert outcomes[3].error is None
        # The held-back transfer took nothing from the calm account.
        assert other.get_account(calm).balance_minor == 1_000 + 10 + 40
        assert all(chain_is_whole(other, a) for a in (hot, calm))
    finally:
        ledger.close()
        other.close()


def test_two_processes_with_committers_on_shared_accounts_keep_money_and_chains(
    ledger: Ledger, other: Ledger
) -> None:
    accounts = opened(ledger, 6, 10_000)
    committers = [GroupCommitter(app, window_s=0.002, max_commands=50) for app in (ledger, other)]
    transaction_ids = [uuid4() for _ in range(120)]
    try:

        def send(index: int) -> Outcome:
            source = accounts[index % 6]
            target = accounts[(index * 5 + 1) % 6]
            if source == target:
                target = accounts[(index + 1) % 6]
            command = Transfer(source, target, Money(7, "GBP"), transaction_ids[index % 60])
            return committers[index % 2].execute([sub(command)])[0]

        with ThreadPoolExecutor(16) as pool:
            outcomes = list(pool.map(send, range(120)))
    finally:
        for committer in committers:
            committer.close()
    # Each id was sent twice, from both processes: recorded once, the other a replay.
    assert all(o.error is None for o in outcomes)
    assert sum(1 for o in outcomes if o.replayed) == 60
    assert sum(ledger.get_account(a).balance_minor for a in accounts) == 60_000
    assert all(chain_is_whole(ledger, a) for a in accounts)
