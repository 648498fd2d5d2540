"""A command group is loaded in one statement and written in one statement after the table
lock: its events, their index rows, its replies, and the notification that wakes the relay
(delivered at commit). The store's sessions plan statements once (generic plans) and bound
the table lock by the event store's lock_timeout."""

from __future__ import annotations

import contextlib
import threading
import time
from uuid import uuid4

import psycopg
import pytest

from application.commands import Deposit, OpenAccount, Submission
from application.ledger import Ledger
from domain.errors import Unavailable
from domain.money import Money
from infrastructure.settings import Settings
from tests.integration.support import TELLER

pytestmark = pytest.mark.integration


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


def test_a_write_waits_for_the_table_lock_no_longer_than_lock_timeout(
    settings: Settings, ledger: Ledger
) -> None:
    account_id = uuid4()
    [opened] = ledger.execute(
        [Submission(OpenAccount(account_id, "Ada", "001", "GBP", 0), TELLER, "c")]
    )
    assert opened.error is None
    url = settings.resolved_database_url()
    table = f"{ledger.recorder.datastore.schema}.{ledger.recorder.events_table_name}"
    locked, release = threading.Event(), threading.Event()

    def hold_the_lock() -> None:
        with psycopg.connect(url) as rival, rival.transaction():
            rival.execute(f"LOCK TABLE {table} IN EXCLUSIVE MODE")
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
