"""The event index on a real PostgreSQL store: one row per stored event, written in the
events' own transaction, and rebuilt identically by `vigil audit reindex`."""

from __future__ import annotations

import argparse
import base64
import os
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any
from uuid import UUID, uuid4

import psycopg
import pytest

from application.commands import ChangeStatus, Deposit, OpenAccount, Submission, Transfer, Withdraw
from application.compliance import Compliance
from application.ledger import Ledger
from domain.account import Account
from domain.case import AlertCase
from domain.errors import Unavailable
from domain.integrity import Actor
from domain.money import Money
from domain.routing import AlertRouting, Suppression
from domain.watchlist import WatchlistEntry
from infrastructure.eventstore.ledger import open_ledger
from infrastructure.eventstore.schema import index_heads
from infrastructure.settings import Settings
from interfaces.cli.commands.audit import run_reindex_cli

pytestmark = pytest.mark.integration

TELLER = Actor("alice", "teller")
ADMIN = Actor("root", "admin")
OFFICER = Actor("olivia", "compliance")
INDEX_ROWS = (
    "SELECT notification_id, aggregate_id, aggregate_type, version, event_type, occurred_at, "
    "actor_subject, actor_role, transaction_id, correlation_id FROM event_index "
    "ORDER BY notification_id"
)
AGGREGATE_TYPES: dict[type[Any], str] = {
    Account.Event: "account",
    AlertCase.Event: "case",
    WatchlistEntry.Event: "watchlist",
    AlertRouting.Event: "routing",
    Suppression.Event: "suppression",
}


def gbp(minor: int) -> Money:
    return Money(minor, "GBP")


@pytest.fixture
def settings(settings_factory) -> Settings:  # type: ignore[no-untyped-def]
    return settings_factory()


@pytest.fixture
def ledger(settings: Settings) -> Iterator[Ledger]:
    app = open_ledger(settings)
    yield app
    app.close()


def run(ledger: Ledger, *commands: Any, actor: Actor = TELLER, corr: str = "corr") -> None:
    for outcome in ledger.execute([Submission(c, actor, corr) for c in commands]):
        assert outcome.error is None, outcome.error


def alert(account_id: UUID) -> dict[str, Any]:
    return {
        "alert_id": str(uuid4()),
        "rule": "structuring",
        "severity": "high",
        "account_id": str(account_id),
        "explanation": "three deposits just under the threshold",
    }


def seed_every_aggregate(ledger: Ledger) -> tuple[UUID, UUID]:
    """Accounts (every kind of movement, a status change), a case, a watchlist entry."""
    a, b = uuid4(), uuid4()
    run(ledger, OpenAccount(a, "Ada", "001", "GBP", 0), OpenAccount(b, "Bob", "001", "GBP", 0))
    run(ledger, Deposit(a, gbp(10_000), uuid4()), corr="corr-deposit")
    run(ledger, Transfer(a, b, gbp(2_500), uuid4()), corr="corr-transfer")
    run(ledger, Withdraw(b, gbp(500), uuid4(), channel="card"))
    run(ledger, ChangeStatus(b, "freeze", "checks"), actor=ADMIN, corr="corr-freeze")
    compliance = Compliance(ledger)
    case = compliance.open_case(alert(a), "corr-case").case
    assert case is not None
    compliance.act_on_case(case.id, "acknowledge", OFFICER, "corr-ack", note="looking")
    compliance.act_on_case(
        case.id, "close", OFFICER, "corr-close", resolution="no_action", note="ok"
    )
    compliance.add_to_watchlist(a, "sanctions hit", OFFICER, "corr-list")
    compliance.remove_from_watchlist(a, "cleared", OFFICER, "corr-unlist")
    return a, b


def expected_rows(ledger: Ledger) -> list[tuple[Any, ...]]:
    """What the index must say, read straight from the stored events."""
    rows = []
    for notification in ledger.recorder.select_notifications(start=None, limit=10_000):
        event: Any = ledger.mapper.to_domain_event(notification)
        kind = next(t for cls, t in AGGREGATE_TYPES.items() if isinstance(event, cls))
        rows.append(
            (
                notification.id,
                notification.originator_id,
                kind,
                notification.originator_version,
                type(event).__name__,
                event.timestamp,
                event.actor["subject"],
                event.actor["role"],
                event.transaction_id,
                event.correlation_id,
            )
        )
    return rows


def index_rows(settings: Settings) -> list[tuple[Any, ...]]:
    with psycopg.connect(settings.resolved_database_url()) as conn:
        return conn.execute(INDEX_ROWS).fetchall()


def counts(settings: Settings) -> tuple[int, int]:
    with psycopg.connect(settings.resolved_database_url()) as conn:
        row = conn.execute(
            "SELECT (SELECT count(*) FROM ledger_events), (SELECT count(*) FROM event_index)"
        ).fetchone()
    assert row is not None
    return int(row[0]), int(row[1])


def test_every_stored_event_of_every_aggregate_has_exactly_one_row_with_its_metadata(
    ledger: Ledger, settings: Settings
) -> None:
    a, b = seed_every_aggregate(ledger)
    expected = expected_rows(ledger)
    assert index_rows(settings) == expected
    assert {row[2] for row in expected} == {"account", "case", "routing", "watchlist"}
    by_type = {row[4]: row for row in expected}
    transfer_out, transfer_in = by_type["TransferredOut"], by_type["TransferredIn"]
    assert transfer_out[8] == transfer_in[8] is not None, "one transaction id on both legs"
    assert (transfer_out[1], transfer_in[1]) == (a, b)
    assert transfer_out[9] == "corr-transfer"
    assert by_type["Frozen"][6:8] == ("root", "admin")
    assert by_type["CaseAcknowledged"][6:8] == ("olivia", "compliance")
    assert by_type["AccountOpened"][8] is None, "an opening moves no money"


def test_concurrent_writers_from_two_processes_index_each_event_once(
    ledger: Ledger, settings: Settings
) -> None:
    other = open_ledger(settings)
    try:
        accounts = [uuid4() for _ in range(3)]
        run(ledger, *(OpenAccount(i, "Ada", "001", "GBP", 0) for i in accounts))
        run(ledger, *(Deposit(i, gbp(100_000), uuid4()) for i in accounts))
        barrier = threading.Barrier(8)

        def transfer(index: int) -> None:
            if index < 8:
                barrier.wait()
            app = ledger if index % 2 else other
            source, target = accounts[index % 3], accounts[(index + 1) % 3]
            run(app, Transfer(source, target, gbp(100 + index), uuid4()))

        with ThreadPoolExecutor(max_workers=8) as pool:
            list(pool.map(transfer, range(40)))
    finally:
        other.close()
    assert index_rows(settings) == expected_rows(ledger)
    assert counts(settings) == (6 + 80, 6 + 80)


def test_a_transfer_refused_by_the_store_leaves_no_index_rows(
    ledger: Ledger, settings: Settings
) -> None:
    a, b = uuid4(), uuid4()
    run(ledger, OpenAccount(a, "Ada", "001", "GBP", 0), OpenAccount(b, "Bob", "001", "GBP", 0))
    run(ledger, Deposit(a, gbp(10_000), uuid4()))
    before = index_rows(settings)
    # The trick of test_ledger.py: the target's event row fails after the source's went in.
    with psycopg.connect(settings.resolved_database_url(), autocommit=True) as conn:
        conn.execute(
            "CREATE FUNCTION refuse_target() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN "
            f"IF NEW.originator_id = '{b}' THEN RAISE EXCEPTION 'disk on fire'; END IF; "
            "RETURN NEW; END $$"
        )
        conn.execute(
            "CREATE TRIGGER refuse_target BEFORE INSERT ON ledger_events "
            "FOR EACH ROW EXECUTE FUNCTION refuse_target()"
        )
    with pytest.raises(Unavailable):
        run(ledger, Transfer(a, b, gbp(2_500), uuid4()))
    assert index_rows(settings) == before
    assert counts(settings) == (3, 3)


def test_an_index_row_that_cannot_be_written_takes_its_events_with_it(
    ledger: Ledger, settings: Settings
) -> None:
    """Same transaction: the index insert comes after the events, and its failure rolls
    the events back (nothing stored, nothing to publish, nothing unindexed)."""
    a, b = uuid4(), uuid4()
    run(ledger, OpenAccount(a, "Ada", "001", "GBP", 0), OpenAccount(b, "Bob", "001", "GBP", 0))
    run(ledger, Deposit(a, gbp(10_000), uuid4()))
    with psycopg.connect(settings.resolved_database_url(), autocommit=True) as conn:
        conn.execute(
            "CREATE FUNCTION refuse_index() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN "
            "IF NEW.event_type = 'TransferredIn' THEN RAISE EXCEPTION 'index full'; END IF; "
            "RETURN NEW; END $$"
        )
        conn.execute(
            "CREATE TRIGGER refuse_index BEFORE INSERT ON event_index "
            "FOR EACH ROW EXECUTE FUNCTION refuse_index()"
        )
    with pytest.raises(Unavailable):
        run(ledger, Transfer(a, b, gbp(2_500), uuid4()))
    assert counts(settings) == (3, 3)
    assert ledger.get_account(a).balance_minor == 10_000
    assert ledger.get_account(b).version == 1


def delete_index_rows(settings: Settings, where: str = "true") -> None:
    """As the owner, the way an attacker or an accident would: triggers off, then on."""
    with psycopg.connect(settings.resolved_database_url()) as conn:
        conn.execute("ALTER TABLE public.event_index DISABLE TRIGGER USER")
        conn.execute(f"DELETE FROM public.event_index WHERE {where}")
        conn.execute("ALTER TABLE public.event_index ENABLE TRIGGER USER")


def test_reindex_rebuilds_a_deleted_index_identically_and_says_how_many_rows_it_added(
    ledger: Ledger, settings: Settings, capsys: pytest.CaptureFixture[str]
) -> None:
    seed_every_aggregate(ledger)
    original = index_rows(settings)
    delete_index_rows(settings)
    assert index_rows(settings) == []
    with psycopg.connect(settings.resolved_database_url()) as conn:
        assert index_heads(conn, "public", "ledger_events") == (original[-1][0], 0)

    assert run_reindex_cli(argparse.Namespace(), settings) == 0
    assert index_rows(settings) == original
    assert f"added {len(original)} rows" in capsys.readouterr().out

    assert run_reindex_cli(argparse.Namespace(), settings) == 0, "idempotent"
    assert "added 0 rows" in capsys.readouterr().out
    assert index_rows(settings) == original


def test_reindex_fills_holes_below_the_head_and_leaves_other_rows_alone(
    ledger: Ledger, settings: Settings, capsys: pytest.CaptureFixture[str]
) -> None:
    seed_every_aggregate(ledger)
    original = index_rows(settings)
    holes = [original[1][0], original[len(original) // 2][0]]
    delete_index_rows(settings, f"notification_id IN ({holes[0]}, {holes[1]})")
    assert run_reindex_cli(argparse.Namespace(), settings) == 0
    assert "added 2 rows" in capsys.readouterr().out
    assert index_rows(settings) == original


def test_reindex_of_an_encrypted_store_decrypts_with_the_ledgers_cipher(
    settings_factory: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    settings = settings_factory(cipher_key=base64.b64encode(os.urandom(32)).decode())
    ledger = open_ledger(settings)
    try:
        seed_every_aggregate(ledger)
        original = index_rows(settings)
        delete_index_rows(settings)
        assert run_reindex_cli(argparse.Namespace(), settings) == 0
        assert index_rows(settings) == original == expected_rows(ledger)
    finally:
        ledger.close()
    assert f"added {len(original)} rows" in capsys.readouterr().out


INDEX_CONSTRAINTS = (
    "SELECT conname FROM pg_constraint WHERE conrelid = 'public.event_index'::regclass "
    "ORDER BY conname"
)


def test_an_index_made_with_a_per_aggregate_unique_constraint_loses_it_at_migration(
    settings: Settings,
) -> None:
    """The stored events' own unique (originator_id, originator_version) finds an
    aggregate's rows; a second one on the index only cost every write an entry."""
    open_one_account(settings)  # the store, as this version makes it
    with psycopg.connect(settings.resolved_database_url(), autocommit=True) as conn:
        assert [r[0] for r in conn.execute(INDEX_CONSTRAINTS)] == ["event_index_pkey"]
        # As an earlier version made it.
        conn.execute(
            "ALTER TABLE event_index ADD CONSTRAINT event_index_aggregate_id_version_key "
            "UNIQUE (aggregate_id, version)"
        )
    open_one_account(settings)  # a start migrates it
    with psycopg.connect(settings.resolved_database_url(), autocommit=True) as conn:
        assert [r[0] for r in conn.execute(INDEX_CONSTRAINTS)] == ["event_index_pkey"]
    assert counts(settings) == (2, 2)


def open_one_account(settings: Settings) -> None:
    """A ledger opened on the store (migrating it), one account opened, closed again."""
    ledger = open_ledger(settings)
    try:
        run(ledger, OpenAccount(uuid4(), "Ada", "001", "GBP", 0))
    finally:
        ledger.close()


def test_a_process_starting_on_a_live_store_waits_for_no_writer(
    settings: Settings, ledger: Ledger
) -> None:
    # A writer's statement holds ROW EXCLUSIVE on the store's tables while it runs; a
    # start that asked for SHARE on one (CREATE INDEX IF NOT EXISTS does, even when the
    # index is there) would wait for it, and could deadlock with it.
    tables = "ledger_events, event_index, command_replies"
    with psycopg.connect(settings.resolved_database_url()) as writer:
        writer.execute(f"LOCK TABLE {tables} IN ROW EXCLUSIVE MODE")
        started = threading.Event()

        def start() -> None:
            open_ledger(settings).close()
            started.set()

        thread = threading.Thread(target=start, daemon=True)
        thread.start()
        try:
            assert started.wait(15), "the start waited for a writer's table lock"
        finally:
            writer.rollback()
            thread.join(30)


def test_a_write_picked_as_deadlock_victim_is_judged_again_and_commits(
    settings: Settings, ledger: Ledger
) -> None:
    # Another session (an index build, say) holds SHARE on the events table; the writer
    # takes its first locks, then waits for the events table; the session then asks for a
    # table the writer holds: a deadlock. PostgreSQL rolls the writer back (its
    # deadlock_timeout runs out first); nothing of it was written, so the command is judged
    # again and commits, once.
    account = uuid4()
    run(ledger, OpenAccount(account, "Ada", "001", "GBP", 0))
    deposit = Deposit(account, gbp(700), uuid4())
    with psycopg.connect(settings.resolved_database_url(), autocommit=True) as other:
        other.execute("SET deadlock_timeout = '60s'")  # the writer must be the one to give
        other.execute("BEGIN")
        other.execute("LOCK TABLE ledger_events IN SHARE MODE")
        with ThreadPoolExecutor(1) as pool:
            submitted = pool.submit(ledger.execute, [Submission(deposit, TELLER, "corr-deadlock")])
            held = _held_by_writer_waiting_on_events_table(other)
            # Blocks until PostgreSQL rolls the writer back.
            other.execute(f"LOCK TABLE {held} IN ACCESS EXCLUSIVE MODE")
            other.execute("ROLLBACK")
            [outcome] = submitted.result(timeout=30)
    assert outcome.error is None, outcome.error
    with psycopg.connect(settings.resolved_database_url()) as conn:
        deadlocks = conn.execute(
            "SELECT deadlocks FROM pg_stat_database WHERE datname = current_database()"
        ).fetchone()
    assert deadlocks is not None
    assert deadlocks[0] >= 1, "no deadlock happened"
    view = ledger.get_account(account)
    assert view.balance_minor == 700
    assert view.version == 2  # opened, deposited: once


def _held_by_writer_waiting_on_events_table(other: psycopg.Connection[Any]) -> str:
    """A table the writer holds a lock on while it waits for `ledger_events`."""
    for _ in range(300):
        rows = other.execute(
            "SELECT l.relation::regclass::text, l.granted FROM pg_locks l "
            "JOIN pg_class c ON c.oid = l.relation AND c.relkind = 'r' "
            "WHERE l.pid <> pg_backend_pid() AND l.locktype = 'relation' "
            "AND c.relnamespace <> 'pg_catalog'::regnamespace"
        ).fetchall()
        waiting = {name for name, granted in rows if not granted}
        holding = [name for name, granted in rows if granted and name != "ledger_events"]
        if "ledger_events" in waiting:
            assert holding, "the writer waits for ledger_events holding no other table"
            return str(holding[0])
        time.sleep(0.02)
    raise AssertionError("the writer never waited for ledger_events")
