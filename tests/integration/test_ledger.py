"""The ledger on a real PostgreSQL event store (and real Redis for the reply cache)."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from uuid import UUID, uuid4

import psycopg
import pytest

from application.commands import (
    ChangeStatus,
    Deposit,
    OpenAccount,
    Outcome,
    Submission,
    Transfer,
    Withdraw,
)
from application.ledger import Ledger
from application.lookups import find_original, find_reply
from domain.account import Account
from domain.errors import (
    AccountFrozen,
    Forbidden,
    InsufficientFunds,
    TransactionConflict,
    Unavailable,
)
from domain.integrity import GENESIS_HASH, Actor, chain_hash, mac_matches
from domain.money import Money
from infrastructure.eventstore.ledger import open_ledger
from infrastructure.eventstore.reply_cache import RedisReplyCache
from infrastructure.settings import Settings

pytestmark = pytest.mark.integration

TELLER = Actor("alice", "teller")


def gbp(minor: int) -> Money:
    return Money(minor, "GBP")


def sub(command, branch_scope: str | None = "001") -> Submission:  # type: ignore[no-untyped-def]
    return Submission(command, TELLER, "corr-test", branch_scope)


@pytest.fixture
def settings(settings_factory) -> Settings:  # type: ignore[no-untyped-def]
    return settings_factory()


@pytest.fixture
def ledger(settings: Settings) -> Iterator[Ledger]:
    cache = RedisReplyCache.from_url(
        settings.resolved_redis_url(), prefix=settings.redis_key_prefix, ttl_s=60, timeout_s=1
    )
    app = open_ledger(settings, cache)
    yield app
    app.close()


def open_account(ledger: Ledger, balance_minor: int = 0, branch: str = "001") -> UUID:
    account_id = uuid4()
    ledger.execute_one(sub(OpenAccount(account_id, "Ada", branch, "GBP", 0), None))
    if balance_minor:
        ledger.execute_one(sub(Deposit(account_id, gbp(balance_minor), uuid4()), None))
    return account_id


def balance(ledger: Ledger, account_id: UUID) -> int:
    return ledger.get_account(account_id).balance_minor


def test_a_transfer_saves_both_accounts_in_one_transaction(ledger: Ledger) -> None:
    source, target = open_account(ledger, 10_000), open_account(ledger)
    outcome = ledger.execute_one(sub(Transfer(source, target, gbp(2_500), uuid4())))
    assert outcome.body is not None
    assert outcome.body["from"]["balance"] == "75.00"
    assert outcome.body["to"]["balance"] == "25.00"
    assert (balance(ledger, source), balance(ledger, target)) == (7_500, 2_500)


def test_a_transfer_that_fails_between_the_two_accounts_leaves_neither_changed(
    ledger: Ledger, settings: Settings
) -> None:
    source, target = open_account(ledger, 10_000), open_account(ledger)
    # A real failure inside the transaction, after the source's event was inserted:
    # a trigger refuses the target's row.
    with psycopg.connect(settings.resolved_database_url(), autocommit=True) as conn:
        conn.execute(
            "CREATE FUNCTION refuse_target() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN "
            f"IF NEW.originator_id = '{target}' THEN RAISE EXCEPTION 'disk on fire'; END IF; "
            "RETURN NEW; END $$"
        )
        conn.execute(
            "CREATE TRIGGER refuse_target BEFORE INSERT ON ledger_events "
            "FOR EACH ROW EXECUTE FUNCTION refuse_target()"
        )
    with pytest.raises(Unavailable):
        ledger.execute_one(sub(Transfer(source, target, gbp(2_500), uuid4())))
    assert (balance(ledger, source), balance(ledger, target)) == (10_000, 0)
    assert ledger.get_account(source).version == 2
    assert ledger.get_account(target).version == 1


def test_fifty_concurrent_transfers_between_few_accounts_lose_no_update(ledger: Ledger) -> None:
    accounts = [open_account(ledger, 100_000) for _ in range(3)]
    pairs = [(accounts[i % 3], accounts[(i + 1) % 3]) for i in range(50)]
    amounts = [100 + i for i in range(50)]

    def run(index: int) -> Outcome:
        source, target = pairs[index]
        return ledger.execute_one(sub(Transfer(source, target, gbp(amounts[index]), uuid4())))

    with ThreadPoolExecutor(max_workers=16) as pool:
        outcomes = list(pool.map(run, range(50)))
    assert all(o.body is not None for o in outcomes)
    expected = dict.fromkeys(accounts, 100_000)
    for (source, target), amount in zip(pairs, amounts, strict=True):
        expected[source] -= amount
        expected[target] += amount
    assert {a: balance(ledger, a) for a in accounts} == expected
    assert sum(expected.values()) == 300_000
    for account_id in accounts:
        # 2 events to open and fund, then one per transfer touching the account.
        touching = sum(account_id in pair for pair in pairs)
        assert ledger.get_account(account_id).version == 2 + touching


def test_two_ledger_processes_writing_one_account_retry_and_lose_nothing(
    ledger: Ledger, settings: Settings
) -> None:
    other = open_ledger(settings)
    try:
        account_id = open_account(ledger, 0)
        barrier = threading.Barrier(2)

        def deposits(app: Ledger) -> None:
            barrier.wait()
            for _ in range(25):
                app.execute_one(sub(Deposit(account_id, gbp(100), uuid4())))

        threads = [threading.Thread(target=deposits, args=(app,)) for app in (ledger, other)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert balance(ledger, account_id) == 5_000
        assert ledger.get_account(account_id).version == 51
    finally:
        other.close()


def test_twenty_concurrent_submissions_of_one_id_record_it_once_with_one_reply(
    ledger: Ledger, settings: Settings
) -> None:
    account_id = open_account(ledger, 0)
    transaction_id = uuid4()
    barrier = threading.Barrier(20)

    def submit(_: int) -> Outcome:
        barrier.wait()
        return ledger.execute_one(sub(Deposit(account_id, gbp(700), transaction_id)))

    with ThreadPoolExecutor(max_workers=20) as pool:
        outcomes = list(pool.map(submit, range(20)))
    bodies = {str(o.body) for o in outcomes}
    assert len(bodies) == 1
    assert sum(not o.replayed for o in outcomes) == 1
    assert balance(ledger, account_id) == 700

    # A restart of the application process in between changes nothing.
    ledger.close()
    restarted = open_ledger(settings)
    try:
        again = restarted.execute_one(sub(Deposit(account_id, gbp(700), transaction_id)))
        assert again.replayed
        assert str(again.body) in bodies
        assert balance(restarted, account_id) == 700
    finally:
        restarted.close()


def test_the_same_id_with_another_body_is_a_conflict_that_changes_nothing(ledger: Ledger) -> None:
    account_id = open_account(ledger, 0)
    transaction_id = uuid4()
    ledger.execute_one(sub(Deposit(account_id, gbp(500), transaction_id)))
    with pytest.raises(TransactionConflict):
        ledger.execute_one(sub(Deposit(account_id, gbp(501), transaction_id)))
    with pytest.raises(TransactionConflict):
        ledger.execute_one(sub(Withdraw(account_id, gbp(500), transaction_id)))
    assert balance(ledger, account_id) == 500


def test_a_failed_command_records_nothing_so_a_retry_is_judged_afresh(ledger: Ledger) -> None:
    account_id = open_account(ledger, 0)
    transaction_id = uuid4()
    with pytest.raises(InsufficientFunds):
        ledger.execute_one(sub(Withdraw(account_id, gbp(300), transaction_id)))
    ledger.execute_one(sub(Deposit(account_id, gbp(1_000), uuid4())))
    outcome = ledger.execute_one(sub(Withdraw(account_id, gbp(300), transaction_id)))
    assert not outcome.replayed
    assert balance(ledger, account_id) == 700


def test_a_group_applies_items_in_order_each_atomic_on_its_own(ledger: Ledger) -> None:
    a, b = open_account(ledger, 1_000), open_account(ledger, 0)
    repeated = uuid4()
    outcomes = ledger.execute(
        [
            sub(Withdraw(a, gbp(600), uuid4())),
            sub(Transfer(a, b, gbp(600), uuid4())),  # only 400 left: refused alone
            sub(Transfer(a, b, gbp(400), repeated)),
            sub(Transfer(a, b, gbp(400), repeated)),  # same id, same body: a replay
            sub(Deposit(b, gbp(1), repeated)),  # same id, other body: a conflict
        ]
    )
    assert [o.error.code if o.error else "ok" for o in outcomes] == [
        "ok",
        "insufficient_funds",
        "ok",
        "ok",
        "transaction_conflict",
    ]
    assert outcomes[3].replayed
    assert outcomes[3].body == outcomes[2].body
    assert (balance(ledger, a), balance(ledger, b)) == (0, 400)


def test_tellers_act_only_on_their_own_branch(ledger: Ledger) -> None:
    theirs = open_account(ledger, 1_000, branch="002")
    with pytest.raises(Forbidden):
        ledger.execute_one(sub(Deposit(theirs, gbp(1), uuid4()), branch_scope="001"))
    with pytest.raises(Forbidden):
        ledger.execute_one(sub(OpenAccount(uuid4(), "Eve", "002", "GBP", 0), branch_scope="001"))
    assert balance(ledger, theirs) == 1_000


def test_a_frozen_account_refuses_money_until_unfrozen(ledger: Ledger) -> None:
    account_id = open_account(ledger, 1_000)
    ledger.execute_one(sub(ChangeStatus(account_id, "freeze", "fraud check"), None))
    with pytest.raises(AccountFrozen):
        ledger.execute_one(sub(Withdraw(account_id, gbp(1), uuid4())))
    ledger.execute_one(sub(ChangeStatus(account_id, "unfreeze", "cleared"), None))
    ledger.execute_one(sub(Withdraw(account_id, gbp(1), uuid4())))
    assert balance(ledger, account_id) == 999


def test_stored_events_chain_and_verify_with_the_mac_key(
    ledger: Ledger, settings: Settings
) -> None:
    source, target = open_account(ledger, 5_000), open_account(ledger)
    ledger.execute_one(sub(Transfer(source, target, gbp(1_000), uuid4())))
    for account_id in (source, target):
        previous = GENESIS_HASH
        for event in ledger.events.get(account_id):
            assert isinstance(event, Account.Event)
            assert event.previous_hash == previous
            assert chain_hash(event.chain_record()) == event.hash
            assert mac_matches(settings.audit_mac_key_resolved(), event.hash, event.mac)
            assert event.correlation_id == "corr-test"
            previous = event.hash


def test_commands_read_replies_from_the_store_and_look_ups_fill_the_cache(
    ledger: Ledger,
) -> None:
    cache = ledger.options.reply_cache
    assert isinstance(cache, RedisReplyCache)
    account_id = open_account(ledger)
    transaction_id = uuid4()
    first = ledger.execute_one(sub(Deposit(account_id, gbp(250), transaction_id)))
    # The group path writes and reads no reply in Redis: the store has it.
    assert cache.get_many([transaction_id]) == {}
    assert ledger.execute_one(sub(Deposit(account_id, gbp(250), transaction_id))).replayed
    assert cache.get_many([transaction_id]) == {}
    # A look-up reads the store, then caches what it found; an unknown id stays uncached.
    original = find_original(ledger, transaction_id)
    assert (original.amount_minor, original.credited) == (250, account_id)
    cached = cache.get_many([transaction_id])[transaction_id]
    assert cached.body == first.body
    assert find_reply(ledger, transaction_id) == cached
    missing = uuid4()
    assert find_reply(ledger, missing) is None
    assert cache.get_many([missing]) == {}


def test_commands_work_and_replay_correctly_with_redis_down(settings: Settings) -> None:
    dead_cache = RedisReplyCache.from_url(
        "redis://127.0.0.1:1/0", prefix="x:", ttl_s=60, timeout_s=0.2
    )
    app = open_ledger(settings, dead_cache)
    try:
        account_id = open_account(app, 0)
        transaction_id = uuid4()
        first = app.execute_one(sub(Deposit(account_id, gbp(250), transaction_id)))
        second = app.execute_one(sub(Deposit(account_id, gbp(250), transaction_id)))
        assert second.replayed
        assert second.body == first.body
        assert balance(app, account_id) == 250
    finally:
        app.close()


def test_the_event_store_ignores_stray_postgres_variables_in_the_environment(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("POSTGRES_DBNAME", "does_not_exist")
    monkeypatch.setenv("PERSISTENCE_MODULE", "eventsourcing.popo")
    app = open_ledger(settings)
    try:
        assert open_account(app, 100)
    finally:
        app.close()
