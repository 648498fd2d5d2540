"""Group commit across callers, on real PostgreSQL: concurrent commands share
transactions, each still atomic on its own, and every caller hears its own outcome."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from urllib.parse import urlsplit
from uuid import UUID, uuid4

import pytest

from application.commands import Deposit, OpenAccount, Outcome, Submission, Transfer, Withdraw
from application.group_commit import GroupCommitter
from application.ledger import Ledger
from domain.errors import Unavailable
from domain.integrity import Actor
from domain.money import Money
from infrastructure.settings import Settings
from infrastructure.store import open_ledger
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
