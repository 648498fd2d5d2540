"""The hold sweep on a real store: it expires a hold once it is due, never before, and
two sweeps running at once (two case openers) expire it once."""

from __future__ import annotations

import asyncio
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from uuid import UUID, uuid4

import psycopg

from application.commands import Deposit, OpenAccount, PlaceHold
from application.ledger import Ledger
from domain.money import Money
from infrastructure.eventstore.ledger import open_ledger
from infrastructure.postgres.connect import connect
from infrastructure.settings import Settings
from infrastructure.workers.hold_sweeper import HoldSweeper, run_hold_sweeper
from tests.integration.support import run, stored_envelopes


def _account_with_holds(ledger: Ledger) -> tuple[UUID, UUID, UUID]:
    account_id, soon, later = uuid4(), uuid4(), uuid4()
    run(
        ledger,
        OpenAccount(account_id, "Ada", "001", "GBP", 0),
        Deposit(account_id, Money(10_000, "GBP"), uuid4()),
        PlaceHold(account_id, Money(3_000, "GBP"), soon, expires_in_s=1),
        PlaceHold(account_id, Money(2_000, "GBP"), later, expires_in_s=3_600),
    )
    return account_id, soon, later


def test_a_due_hold_is_expired_once_by_two_sweeps_running_at_once(
    ledger: Ledger, settings: Settings
) -> None:
    account_id, soon, later = _account_with_holds(ledger)
    assert ledger.get_account(account_id).available_minor == 5_000
    other = open_ledger(settings)
    sweepers = [HoldSweeper(ledger), HoldSweeper(other)]
    conns = [connect(settings, "test-sweep", autocommit=True) for _ in sweepers]
    try:
        # Not due yet: nothing expires.
        assert [s.sweep_once(c) for s, c in zip(sweepers, conns, strict=True)] == [0, 0]
        assert all(s.accounts_watched == 1 for s in sweepers)
        time.sleep(1.1)
        barrier = threading.Barrier(2)

        def sweep(index: int) -> int:
            barrier.wait()
            return sweepers[index].sweep_once(conns[index])

        with ThreadPoolExecutor(2) as pool:
            expired = list(pool.map(sweep, range(2)))
        assert sum(expired) == 1, expired
    finally:
        for conn in conns:
            conn.close()
        other.close()
    account = ledger.get_account(account_id)
    assert set(account.holds) == {str(later)}
    assert str(soon) in account.expired_holds
    assert account.available_minor == 8_000
    expiries = [e for e in stored_envelopes(ledger) if e.event_type == "HoldExpired"]
    assert [e.payload["hold_id"] for e in expiries] == [str(soon)]
    assert expiries[0].actor == {"subject": "system:holds", "role": "system"}
    # The account stays watched for the hold still pending.
    assert all(s.accounts_watched == 1 for s in sweepers)


def test_the_sweeper_outlives_the_database_dropping_every_connection(
    settings: Settings,
) -> None:
    """The ledger's pooled connections die under it (a PostgreSQL restart, as far as the
    sweeper can tell): that sweep fails, is logged, and the next one expires the hold."""
    ledger = open_ledger(settings)
    try:
        account_id, soon, later = _account_with_holds(ledger)
        ledger.get_account(account_id)  # the pool holds a connection now
        with psycopg.connect(settings.resolved_database_url(), autocommit=True) as admin:
            admin.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                "WHERE datname = current_database() AND pid <> pg_backend_pid()"
            )
        time.sleep(1.1)  # the first hold is due
        quick = settings.model_copy(update={"hold_sweep_interval_s": 0.2})

        async def sweep_for_a_while() -> None:
            stop = asyncio.Event()
            task = asyncio.create_task(run_hold_sweeper(quick, ledger, stop))
            await asyncio.sleep(3)
            stop.set()
            await task  # raises if a failed sweep escaped

        asyncio.run(sweep_for_a_while())
    finally:
        ledger.close()
    fresh = open_ledger(settings)  # the first ledger's pool may still hold dead connections
    try:
        assert set(fresh.get_account(account_id).holds) == {str(later)}
        expired = [e for e in stored_envelopes(fresh) if e.event_type == "HoldExpired"]
        assert [e.payload["hold_id"] for e in expired] == [str(soon)]
    finally:
        fresh.close()
