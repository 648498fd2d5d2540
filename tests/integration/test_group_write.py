"""A command group is loaded in one statement and written in one statement, its own
transaction: the writers' turn, its events, their index rows, its replies, and the
notification that wakes the relay (delivered at commit). The store's sessions plan
statements once (generic plans) and bound the wait for a rival writer by the event store's
lock_timeout."""

from __future__ import annotations

import contextlib
import threading
import time
from typing import Any
from uuid import UUID, uuid4

import psycopg
import pytest

from application.commands import Deposit, OpenAccount, Submission
from application.ledger import Ledger
from domain.errors import Unavailable
from domain.money import Money
from infrastructure.eventstore.recorder import WRITERS_TURN_TABLE
from infrastructure.settings import Settings
from tests.integration.support import TELLER

pytestmark = pytest.mark.integration

# What a rival writer holds while a group waits for it.
RIVAL_LOCKS = pytest.mark.parametrize(
    "rival_lock",
    [
        # Another writer of this version, holding the writers' turn.
        f"SELECT turn FROM {WRITERS_TURN_TABLE} FOR UPDATE",
        # The library's own insert, or an older version's writer during an upgrade.
        "LOCK TABLE {table} IN EXCLUSIVE MODE",
    ],
    ids=["writers_turn", "table_lock"],
)
WAITING = (
    "SELECT count(*) FROM pg_locks WHERE NOT granted "
    "AND (relation = %s::regclass OR locktype IN ('transactionid', 'tuple'))"
)


def test_a_group_write_notifies_the_relays_channel_at_commit(
    settings: Settings, ledger: Ledger
) -> None:
    url = settings.resolved_database_url()
    with psycopg.connect(url, autocommit=True) as listener:
        listener.execute(f'LISTEN "{ledger.recorder.channel_name}"')
        account_id = uuid4()
        [outcome] = ledger.execute(
            [Submission(OpenAccount(account_id, "Ada", "001", "GBP", 0), TELLER, "c")]
        )
        assert outcome.error is None
        heard = [n.channel for n in listener.notifies(timeout=5, stop_after=1)]
    assert heard == [ledger.recorder.channel_name]
    # The reply was written with the events, in the same statement.
    state = ledger.recorder.select_group_state({account_id: 0}, [account_id])
    assert list(state.replies) == [account_id]
    assert [e.originator_version for e in state.events] == [1]


@RIVAL_LOCKS
def test_a_write_waits_for_a_rival_writer_no_longer_than_lock_timeout(
    settings: Settings, ledger: Ledger, rival_lock: str
) -> None:
    account_id, url, table = open_account(settings, ledger)
    locked, release = threading.Event(), threading.Event()

    def hold_the_lock() -> None:
        with psycopg.connect(url) as rival, rival.transaction():
            rival.execute(rival_lock.format(table=table))
            locked.set()
            release.wait(30)

    holder = threading.Thread(target=hold_the_lock)
    holder.start()
    try:
        assert locked.wait(10)
        started = time.monotonic()
        deposit = Deposit(account_id, Money(100, "GBP"), uuid4())
        with pytest.raises(Unavailable):
            ledger.execute_one(Submission(deposit, TELLER, "c"))
        waited_s = time.monotonic() - started
    finally:
        release.set()
        holder.join(30)
    timeout_s = ledger.recorder.datastore.lock_timeout
    assert timeout_s <= waited_s < timeout_s + 10, waited_s
    [deposited] = ledger.execute([Submission(deposit, TELLER, "c")])
    assert deposited.error is None, "nothing of the refused write was kept"


def test_every_connection_of_the_store_has_its_session_options(ledger: Ledger) -> None:
    """A custom plan at every execute cost the group-state query five times its run; a
    session without lock_timeout would wait for the table lock for ever. Every connection
    the pool holds, taken at once, not only the first one."""
    datastore = ledger.recorder.datastore
    timeout_ms = str(datastore.lock_timeout * 1000)
    wanted = {"plan_cache_mode": "force_generic_plan", "lock_timeout": timeout_ms, "jit": "off"}
    with contextlib.ExitStack() as stack:
        connections = [
            stack.enter_context(datastore.get_connection()) for _ in range(datastore.pool.min_size)
        ]
        for conn in connections:
            rows = conn.execute(
                "SELECT name, setting FROM pg_settings "
                "WHERE name IN ('plan_cache_mode', 'lock_timeout', 'jit')"
            ).fetchall()
            assert {row["name"]: row["setting"] for row in rows} == wanted


@RIVAL_LOCKS
def test_a_write_waits_for_a_rival_writer_before_it_draws_an_id_or_holds_a_reply(
    settings: Settings, ledger: Ledger, rival_lock: str
) -> None:
    """While a group waits for a rival writer it has drawn no notification id (ids are
    issued in commit order) and holds no reply row (a rival writing the same command id
    would wait for it while holding the lock: a deadlock)."""
    account_id, url, table = open_account(settings, ledger)
    command_id = uuid4()
    deposit = Submission(Deposit(account_id, Money(100, "GBP"), command_id), TELLER, "c")
    outcomes: list[object] = []
    with psycopg.connect(url) as rival, psycopg.connect(url, autocommit=True) as watcher:
        sequence = f"pg_get_serial_sequence('{table}', 'notification_id')"
        drawn = f"SELECT last_value FROM {_scalar(rival, f'SELECT {sequence}')}"
        rival.execute(rival_lock.format(table=table))
        before = rival.execute(drawn).fetchone()
        writer = threading.Thread(target=lambda: outcomes.extend(ledger.execute([deposit])))
        writer.start()
        try:
            deadline = time.monotonic() + 4
            while _scalar(watcher, WAITING, table) == 0:
                assert time.monotonic() < deadline, "the write never waited for the lock"
                time.sleep(0.02)
            assert rival.execute(drawn).fetchone() == before
            # The rival can write the same command id without waiting: the writer holds
            # nothing (a row of its own would make this wait, then deadlock).
            rival.execute("SET LOCAL statement_timeout = '2s'")
            rival.execute(
                "INSERT INTO command_replies (command_id, kind, subject, fingerprint, body) "
                "VALUES (%s, 'deposit', 'rival', 'x', '{}')",
                (command_id,),
            )
        finally:
            rival.rollback()
            writer.join(30)
    [outcome] = outcomes
    assert outcome.error is None  # type: ignore[attr-defined]
    assert ledger.get_account(account_id).balance_minor == 100


def _scalar(conn: psycopg.Connection[Any], query: str, *params: object) -> Any:
    row = conn.execute(query, params).fetchone()  # type: ignore[arg-type]
    assert row is not None
    return row[0]


def open_account(settings: Settings, ledger: Ledger) -> tuple[UUID, str, str]:
    """An account opened; the database's URL and the stored events' table."""
    account_id = uuid4()
    [opened] = ledger.execute(
        [Submission(OpenAccount(account_id, "Ada", "001", "GBP", 0), TELLER, "c")]
    )
    assert opened.error is None
    table = f"{ledger.recorder.datastore.schema}.{ledger.recorder.events_table_name}"
    return account_id, settings.resolved_database_url(), table


def test_a_store_without_the_writers_turn_refuses_to_write_instead_of_losing_it(
    settings: Settings, ledger: Ledger
) -> None:
    account_id, url, _ = open_account(settings, ledger)
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(f"DELETE FROM {WRITERS_TURN_TABLE}")
    deposit = Deposit(account_id, Money(100, "GBP"), uuid4())
    with pytest.raises(RuntimeError, match="vigil migrate"):
        ledger.execute([Submission(deposit, TELLER, "c")])
    assert ledger.get_account(account_id).version == 1, "nothing was written"
