"""The commit pipeline on real PostgreSQL: the next group is judged while the previous one
is written, on top of it; when that write fails, the next group is judged again from the
store; crossing transfers and other lock takers never deadlock it; and money is conserved
whatever the interleaving and whichever writes fail."""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import closing
from uuid import UUID, uuid4

import pytest
from eventsourcing.persistence import OperationalError
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from application.commands import Outcome, Submission, Transfer, Withdraw
from application.group_commit import GroupCommitter
from application.ledger import Ledger
from domain.errors import InsufficientFunds, Unavailable
from domain.integrity import Actor
from domain.money import Money
from infrastructure.eventstore.ledger import open_ledger
from infrastructure.settings import Settings
from tests.integration.support import HookedSaver, rows
from tests.integration.test_group_commit import opened

pytestmark = pytest.mark.integration

ACTOR = Actor("pipe", "teller")
WAIT_S = 30.0


def sub(command: object) -> Submission:
    return Submission(command, ACTOR, "corr-pipe")  # type: ignore[arg-type]


@pytest.fixture
def store(settings_factory: Callable[..., Settings]) -> Settings:
    return settings_factory()


@pytest.fixture
def ledger(store: Settings) -> Iterator[Ledger]:
    app = open_ledger(store)
    yield app
    app.close()


def wait_until(condition: Callable[[], bool]) -> None:
    deadline = time.monotonic() + WAIT_S
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.005)


def versions(store: Settings, account_id: UUID) -> list[int]:
    return [
        int(v)
        for (v,) in rows(
            store,
            "SELECT originator_version FROM ledger_events WHERE originator_id = %s "
            "ORDER BY originator_version",
            account_id,
        )
    ]


def balance(store: Settings, account_id: UUID) -> int:
    """As the store has it, read by a ledger that holds nothing in memory."""
    with closing(open_ledger(store)) as fresh:
        return fresh.get_account(account_id).balance_minor


def test_a_lost_race_judges_that_group_and_the_one_decided_on_it_again(
    ledger: Ledger, store: Settings
) -> None:
    [account] = opened(ledger, 1, 100_00)
    rival = open_ledger(store)  # another process of the command side
    committer = GroupCommitter(ledger, window_s=0, max_commands=100, judge_ahead_min=1)

    def before(write: int) -> None:
        if write == 1:
            # The second group is judged on top of this one before this one is written;
            # meanwhile the rival takes the whole balance, so this write loses the race.
            wait_until(lambda: committer.groups_judged == 2)
            [outcome] = rival.execute([sub(Withdraw(account, Money(100_00, "GBP"), uuid4()))])
            assert outcome.error is None

    HookedSaver(ledger, before)
    try:
        with ThreadPoolExecutor(2) as pool:
            first = pool.submit(
                committer.execute, [sub(Withdraw(account, Money(60_00, "GBP"), uuid4()))]
            )
            wait_until(lambda: committer.groups_judged == 1)
            second = pool.submit(
                committer.execute, [sub(Withdraw(account, Money(40_00, "GBP"), uuid4()))]
            )
            [one], [two] = first.result(WAIT_S), second.result(WAIT_S)
    finally:
        committer.close()
        rival.close()
    # Judged on the balance the rival left (nothing), not on the one each was decided on.
    assert isinstance(one.error, InsufficientFunds)
    assert isinstance(two.error, InsufficientFunds)
    assert ledger.groups_judged_again == 2
    assert balance(store, account) == 0
    assert versions(store, account) == [1, 2, 3]  # opened, deposited, the rival's withdrawal


def test_a_failed_write_judges_the_next_group_again_and_fails_alone(
    ledger: Ledger, store: Settings
) -> None:
    [account] = opened(ledger, 1, 0)
    committer = GroupCommitter(ledger, window_s=0, max_commands=100, judge_ahead_min=1)
    deposit = sub(Transfer(opened(ledger, 1, 500_00)[0], account, Money(100_00, "GBP"), uuid4()))

    def before(write: int) -> None:
        if write == 1:
            wait_until(lambda: committer.groups_judged == 2)
            raise OperationalError("the store went away")

    HookedSaver(ledger, before)
    try:
        with ThreadPoolExecutor(2) as pool:
            first = pool.submit(committer.execute, [deposit])
            wait_until(lambda: committer.groups_judged == 1)
            # Judged on the credit in flight: allowed, until that credit fails to be written.
            second = pool.submit(
                committer.execute, [sub(Withdraw(account, Money(100_00, "GBP"), uuid4()))]
            )
            with pytest.raises(Unavailable):
                first.result(WAIT_S)
            [two] = second.result(WAIT_S)
    finally:
        committer.close()
    assert isinstance(two.error, InsufficientFunds)
    assert ledger.groups_judged_again == 1
    assert balance(store, account) == 0
    assert versions(store, account) == [1]  # never a withdrawal on a credit not stored


def test_small_groups_gather_while_the_writer_is_busy_instead_of_splitting(
    ledger: Ledger,
) -> None:
    accounts = opened(ledger, 12, 1_000_00)
    committer = GroupCommitter(ledger, window_s=0, max_commands=100)
    release = threading.Event()
    HookedSaver(ledger, lambda write: release.wait(WAIT_S) if write == 1 else None)

    def transfer(i: int) -> list[Outcome]:
        command = Transfer(accounts[i], accounts[i + 1], Money(1_00, "GBP"), uuid4())
        return committer.execute([sub(command)])

    try:
        with ThreadPoolExecutor(11) as pool:
            first = pool.submit(transfer, 0)
            wait_until(lambda: committer.groups_judged == 1)
            rest = [pool.submit(transfer, i) for i in range(1, 11)]
            time.sleep(0.2)  # all ten are waiting while the first group is being written
            release.set()
            outcomes = [o for f in [first, *rest] for o in f.result(WAIT_S)]
    finally:
        committer.close()
    assert all(o.error is None for o in outcomes)
    # Ten single commands are too few to be judged ahead: one transaction for all ten.
    assert (committer.groups_judged, committer.groups_committed) == (2, 2)


def test_a_batch_of_a_hundred_is_judged_while_the_group_before_it_is_written(
    store: Settings, ledger: Ledger
) -> None:
    """A client's batch of 100 is work enough to judge on top of the group being written;
    waiting for the writer instead made every command behind it wait out both in turn."""
    accounts = opened(ledger, 102, 1_000_00)
    committer = GroupCommitter(ledger, window_s=0, max_commands=1_000)
    release = threading.Event()
    HookedSaver(ledger, lambda write: release.wait(WAIT_S) if write == 1 else None)

    def transfers(pairs: range) -> list[Outcome]:
        return committer.execute(
            [
                sub(Transfer(accounts[i], accounts[i + 1], Money(1_00, "GBP"), uuid4()))
                for i in pairs
            ]
        )

    try:
        with ThreadPoolExecutor(2) as pool:
            first = pool.submit(transfers, range(0, 1))
            wait_until(lambda: committer.groups_judged == 1)
            batch = pool.submit(transfers, range(1, 101))
            # Judged while the first group's write is still held back.
            wait_until(lambda: committer.groups_judged == 2)
            assert committer.groups_committed == 0
            release.set()
            outcomes = first.result(WAIT_S) + batch.result(WAIT_S)
    finally:
        release.set()
        committer.close()
    assert all(o.error is None for o in outcomes)
    assert committer.groups_committed == 2
    assert balance(store, accounts[101]) == 1_000_00 + 1_00


def test_crossing_transfers_and_other_lock_takers_never_deadlock(ledger: Ledger) -> None:
    accounts = opened(ledger, 4, 1_000_00)
    committer = GroupCommitter(ledger, window_s=0.001, max_commands=50, judge_ahead_min=1)
    stop = threading.Event()

    def crossing(i: int) -> list[Outcome]:
        a, b = accounts[i % 4], accounts[(i + 1) % 4]
        source, target = (a, b) if i % 2 else (b, a)
        return committer.execute([sub(Transfer(source, target, Money(1, "GBP"), uuid4()))])

    def direct(n: int) -> None:
        # Outside the pipeline: waits for the same locks, in the usual blocking way.
        while not stop.is_set():
            a, b, c = accounts[n % 4], accounts[(n + 2) % 4], accounts[(n + 3) % 4]
            ledger.execute(
                [
                    sub(Transfer(a, b, Money(1, "GBP"), uuid4())),
                    sub(Transfer(c, a, Money(1, "GBP"), uuid4())),
                ]
            )
            ledger.get_account(accounts[(n + 1) % 4])

    others = [threading.Thread(target=direct, args=(n,), daemon=True) for n in range(4)]
    for thread in others:
        thread.start()
    try:
        with ThreadPoolExecutor(16) as pool:
            outcomes = [o for batch in pool.map(crossing, range(1500)) for o in batch]
    finally:
        stop.set()
        for thread in others:
            thread.join(WAIT_S)
        committer.close()
    assert not any(thread.is_alive() for thread in others), "a direct caller is stuck"
    assert all(o.error is None for o in outcomes)
    assert sum(ledger.get_account(a).balance_minor for a in accounts) == 4_000_00


class Faults:
    """Which writes fail, as a Hypothesis draw: a real rival's race or a store failure.
    Each write first gives the next group a moment to be judged on top of it, so that the
    failures fall on groups with others decided ahead of their write."""

    def __init__(self, plan: list[str], rival: Ledger, victim: UUID, peer: UUID) -> None:
        self.plan = plan
        self.rival = rival
        self.victim = victim
        self.peer = peer
        self.rival_moved = 0
        self.committer: GroupCommitter | None = None

    def __call__(self, write: int) -> None:
        assert self.committer is not None
        judged = self.committer.groups_judged
        deadline = time.monotonic() + 0.02
        while self.committer.groups_judged == judged and time.monotonic() < deadline:
            time.sleep(0.001)
        fault = self.plan[write % len(self.plan)]
        if fault == "race":
            command = Transfer(self.victim, self.peer, Money(1, "GBP"), uuid4())
            [outcome] = self.rival.execute([sub(command)])
            if outcome.error is None:
                self.rival_moved += 1
        elif fault == "down":
            raise OperationalError("injected: the store went away")


@settings(
    max_examples=12,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    moves=st.lists(
        st.tuples(st.integers(0, 4), st.integers(0, 4), st.integers(1, 300_00)),
        min_size=6,
        max_size=60,
    ),
    plan=st.lists(st.sampled_from(["ok", "ok", "ok", "race", "down"]), min_size=1, max_size=6),
)
def test_money_is_conserved_whatever_the_interleaving_and_the_failed_writes(
    store: Settings, moves: list[tuple[int, int, int]], plan: list[str]
) -> None:
    with contextlib.ExitStack() as stack:
        ledger, rival, fresh = (stack.enter_context(closing(open_ledger(store))) for _ in "123")
        conserved(store, ledger, rival, fresh, moves, plan)


def conserved(
    store: Settings,
    ledger: Ledger,
    rival: Ledger,
    fresh: Ledger,
    moves: list[tuple[int, int, int]],
    plan: list[str],
) -> None:
    accounts = opened(ledger, 5, 500_00)
    faults = Faults(plan, rival, accounts[0], accounts[1])
    HookedSaver(ledger, faults)
    committer = faults.committer = GroupCommitter(
        ledger, window_s=0.0005, max_commands=3, judge_ahead_min=1
    )

    def move(item: tuple[int, int, int]) -> tuple[tuple[int, int, int], Outcome | None]:
        source, target, amount = item
        command = Transfer(accounts[source], accounts[target], Money(amount, "GBP"), uuid4())
        try:
            [outcome] = committer.execute([sub(command)])
        except Unavailable:
            return item, None  # nothing of it was written
        return item, outcome

    try:
        with ThreadPoolExecutor(6) as pool:
            results = list(pool.map(move, moves))
    finally:
        committer.close()
    expected = dict.fromkeys(range(5), 500_00)
    for (source, target, amount), outcome in results:
        if outcome is not None and outcome.error is None:
            expected[source] -= amount
            expected[target] += amount
    expected[0] -= faults.rival_moved
    expected[1] += faults.rival_moved
    stored = {i: fresh.get_account(a).balance_minor for i, a in enumerate(accounts)}
    assert stored == expected, "every acknowledged transfer stored, nothing else"
    for account in accounts:
        chain = versions(store, account)
        assert chain == list(range(1, len(chain) + 1)), "no gap in an account's events"
