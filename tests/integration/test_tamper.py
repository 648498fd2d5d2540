"""Tamper evidence on a real PostgreSQL store: an attacker with database access (the
table owner, triggers disabled) edits, deletes, reorders, forges or truncates stored
events or checkpoints; `vigil audit verify` finds each one, names the aggregate, version
and notification id, and exits 1. An untouched store verifies clean."""

from __future__ import annotations

import argparse
import asyncio
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any
from uuid import UUID, uuid4

import psycopg
import pytest

from application.commands import Deposit, OpenAccount, Submission, Transfer, Withdraw
from application.ledger import Ledger
from domain.account import Account
from domain.integrity import Actor, Stamp
from domain.money import Money
from infrastructure.audit.checkpoints import (
    Checkpoint,
    Checkpointer,
    CheckpointWriter,
    checkpoint_file,
)
from infrastructure.audit.signing import DEV_SIGNING_KEY_FILE, Signer
from infrastructure.audit.verify import Finding, VerifyReport, verify_store
from infrastructure.eventstore.ledger import open_ledger
from infrastructure.eventstore.schema import EVENTS_TABLE
from infrastructure.settings import Settings
from interfaces.cli.commands.audit import run_verify_cli
from tests.ceilings import BALANCE_MAX_MINOR, OVERDRAFT_MAX_MINOR

pytestmark = pytest.mark.integration

TELLER = Actor("alice", "teller")
BULK_EVENTS = 100_000
BULK_ACCOUNTS = 1_000


def gbp(minor: int) -> Money:
    return Money(minor, "GBP")


def run(ledger: Ledger, command: object) -> None:
    ledger.execute_one(Submission(command, TELLER, "corr-tamper", None))  # type: ignore[arg-type]


@dataclass
class History:
    a: UUID
    b: UUID
    c: UUID


@pytest.fixture
def settings(settings_factory) -> Settings:  # type: ignore[no-untyped-def]
    return settings_factory()


@pytest.fixture
def ledger(settings: Settings) -> Iterator[Ledger]:
    app = open_ledger(settings)
    yield app
    app.close()


def write_history(ledger: Ledger) -> History:
    """A: versions 1-5, B: 1-3, C: 1-2, interleaved in notification order."""
    a, b, c = uuid4(), uuid4(), uuid4()
    for account in (a, b, c):
        run(ledger, OpenAccount(account, "Ada", "001", "GBP", 0))
    run(ledger, Deposit(a, gbp(10_000), uuid4()))
    run(ledger, Deposit(b, gbp(5_000), uuid4()))
    run(ledger, Withdraw(a, gbp(1_000), uuid4()))
    run(ledger, Transfer(a, b, gbp(2_000), uuid4()))
    run(ledger, Deposit(a, gbp(777), uuid4()))
    run(ledger, Deposit(c, gbp(300), uuid4()))
    return History(a, b, c)


def checkpoint(settings: Settings, ledger: Ledger) -> Checkpoint | None:
    writer = CheckpointWriter(settings, ledger, Signer.from_settings(settings))
    try:
        assert writer.try_lock()
        assert writer.resume()
        return writer.write_next()
    finally:
        writer.close()


@pytest.fixture
def history(settings: Settings, ledger: Ledger) -> History:
    """The history, then a checkpoint over all of it."""
    story = write_history(ledger)
    assert checkpoint(settings, ledger) is not None
    return story


def tamper(settings: Settings, *statements: tuple[str, tuple[Any, ...]]) -> None:
    """As the table owner would: user triggers (append-only, if present) off, then on."""
    tables = (EVENTS_TABLE, "public.audit_checkpoints")
    with psycopg.connect(settings.resolved_database_url(), autocommit=True) as conn:
        for table in tables:
            conn.execute(f"ALTER TABLE {table} DISABLE TRIGGER USER")  # type: ignore[arg-type]
        try:
            with conn.transaction():
                for statement, params in statements:
                    conn.execute(statement, params)  # type: ignore[arg-type]
        finally:
            for table in tables:
                conn.execute(f"ALTER TABLE {table} ENABLE TRIGGER USER")  # type: ignore[arg-type]


def notification_id(settings: Settings, aggregate_id: UUID, version: int) -> int:
    with psycopg.connect(settings.resolved_database_url()) as conn:
        row = conn.execute(
            f"SELECT notification_id FROM {EVENTS_TABLE} "
            "WHERE originator_id = %s AND originator_version = %s",
            (aggregate_id, version),
        ).fetchone()
    assert row is not None
    return int(row[0])


def head(settings: Settings) -> int:
    with psycopg.connect(settings.resolved_database_url()) as conn:
        row = conn.execute(f"SELECT max(notification_id) FROM {EVENTS_TABLE}").fetchone()
    assert row is not None
    return int(row[0])


def event_index_exists(settings: Settings) -> bool:
    with psycopg.connect(settings.resolved_database_url()) as conn:
        row = conn.execute("SELECT to_regclass('public.event_index') IS NOT NULL").fetchone()
    return bool(row and row[0])


def cli(settings: Settings, **options: object) -> int:
    args = argparse.Namespace(since=None, until=None, json=False)
    for name, value in options.items():
        setattr(args, name, value)
    return run_verify_cli(args, settings)


def only(report: VerifyReport, kind: str) -> list[Finding]:
    return [finding for finding in report.findings if finding.kind == kind]


# --- Clean ----------------------------------------------------------------------------


def test_an_untouched_store_verifies_clean_and_the_cli_exits_0(
    settings: Settings, ledger: Ledger, history: History, capsys: pytest.CaptureFixture[str]
) -> None:
    run(ledger, Deposit(history.b, gbp(1), uuid4()))  # after the checkpoint: uncovered
    report = verify_store(settings, ledger=ledger)
    assert report.clean, report.findings
    assert (report.events, report.aggregates, report.checkpoints) == (11, 3, 1)
    assert report.events_after_last_checkpoint == 1
    assert cli(settings) == 0
    assert "clean" in capsys.readouterr().out


def test_checkpoints_chain_on_from_each_other_and_match_the_file(
    settings: Settings, ledger: Ledger, history: History
) -> None:
    run(ledger, Deposit(history.c, gbp(5), uuid4()))
    second = checkpoint(settings, ledger)
    assert second is not None
    assert second.notification_id == head(settings)
    assert checkpoint(settings, ledger) is None  # nothing new, nothing signed
    lines = checkpoint_file(settings).read_bytes().splitlines(keepends=True)
    assert len(lines) == 2
    assert lines[-1] == second.line()
    report = verify_store(settings, ledger=ledger)
    assert report.clean
    assert report.checkpoints == 2


# --- Events altered, deleted, reordered, forged, truncated ------------------------------


def test_an_edited_amount_is_reported_as_altered_with_its_place(
    settings: Settings, ledger: Ledger, history: History
) -> None:
    nid = notification_id(settings, history.a, 5)
    tamper(
        settings,
        (
            f"UPDATE {EVENTS_TABLE} SET state = convert_to(replace(convert_from(state, 'UTF8'), "
            "'\"amount_minor\":777', '\"amount_minor\":977'), 'UTF8') "
            "WHERE notification_id = %s",
            (nid,),
        ),
    )
    report = verify_store(settings, ledger=ledger)
    assert [(f.kind, f.aggregate_id, f.version, f.notification_id) for f in report.findings] == [
        ("altered", str(history.a), 5, nid)
    ]
    assert cli(settings) == 1


def test_a_deleted_event_is_reported_with_its_version_and_notification_id(
    settings: Settings, ledger: Ledger, history: History
) -> None:
    nid = notification_id(settings, history.a, 3)
    tamper(settings, (f"DELETE FROM {EVENTS_TABLE} WHERE notification_id = %s", (nid,)))
    report = verify_store(settings, ledger=ledger)
    deleted = only(report, "deleted")
    assert [(f.aggregate_id, f.version, f.notification_id) for f in deleted] == [
        (str(history.a), 3, nid)
    ]
    # The checkpoint covered it: the rolling hash no longer matches either.
    assert only(report, "checkpoint_mismatch")
    assert cli(settings) == 1


def test_a_deleted_last_event_of_an_account_is_caught_by_its_checkpoint(
    settings: Settings, ledger: Ledger, history: History
) -> None:
    # C's version 2 has no successor to break: only the checkpoint covering it knows.
    covered = head(settings)
    assert notification_id(settings, history.c, 2) == covered
    run(ledger, Deposit(history.a, gbp(5), uuid4()))
    assert checkpoint(settings, ledger) is not None
    tamper(settings, (f"DELETE FROM {EVENTS_TABLE} WHERE notification_id = %s", (covered,)))
    report = verify_store(settings, ledger=ledger)
    assert [(f.kind, f.notification_id) for f in report.findings] == [
        ("checkpoint_mismatch", covered),
        ("deleted", covered),
    ]
    if event_index_exists(settings):
        assert (report.findings[1].aggregate_id, report.findings[1].version) == (
            str(history.c),
            2,
        )
    assert cli(settings) == 1


def test_two_swapped_versions_are_reported_as_reordered(
    settings: Settings, ledger: Ledger, history: History
) -> None:
    second, third = notification_id(settings, history.a, 2), notification_id(settings, history.a, 3)
    swap = f"UPDATE {EVENTS_TABLE} SET notification_id = %s WHERE notification_id = %s"
    tamper(settings, (swap, (-1, second)), (swap, (second, third)), (swap, (third, -1)))
    report = verify_store(settings, ledger=ledger)
    reordered = only(report, "reordered")
    assert [(f.aggregate_id, f.version, f.notification_id) for f in reordered] == [
        (str(history.a), 2, third)
    ]
    assert only(report, "checkpoint_mismatch")
    assert not only(report, "deleted")
    assert cli(settings) == 1


def test_a_forged_event_without_the_mac_key_is_reported_as_inserted(
    settings: Settings, ledger: Ledger, history: History
) -> None:
    # A valid-looking event: right version, right previous_hash, right hash; but its
    # mac made with a key other than the audit MAC key.
    account = ledger.get_account(history.c)
    forged_stamp = Stamp(TELLER, datetime.now(UTC), "corr-forged", str(uuid4()), b"not-the-key")
    account.deposit(
        gbp(1_000_000), "cash", "forged", forged_stamp, balance_max_minor=BALANCE_MAX_MINOR
    )
    (event,) = account.collect_events()
    stored = ledger.mapper.to_stored_event(event)
    tamper(
        settings,
        (
            f"INSERT INTO {EVENTS_TABLE} (originator_id, originator_version, topic, state) "
            "VALUES (%s, %s, %s, %s)",
            (stored.originator_id, stored.originator_version, stored.topic, stored.state),
        ),
    )
    nid = notification_id(settings, history.c, 3)
    report = verify_store(settings, ledger=ledger)
    assert [(f.kind, f.aggregate_id, f.version, f.notification_id) for f in report.findings] == [
        ("inserted", str(history.c), 3, nid)
    ]
    assert cli(settings) == 1


def test_an_altered_event_re_sealed_without_the_key_is_altered_not_inserted(
    settings: Settings, ledger: Ledger, history: History
) -> None:
    # The attacker rewrites A's version 4 from scratch (hash right, mac wrong); version 5
    # still links to the original, so it was altered.
    nid = notification_id(settings, history.a, 4)
    account = ledger.repository.get(history.a, version=3)
    stamp = Stamp(TELLER, datetime.now(UTC), "corr-forged", str(uuid4()), b"not-the-key")
    account.withdraw(gbp(1), "cash", None, stamp)
    (event,) = account.collect_events()
    stored = ledger.mapper.to_stored_event(event)
    tamper(
        settings,
        (
            f"UPDATE {EVENTS_TABLE} SET topic = %s, state = %s WHERE notification_id = %s",
            (stored.topic, stored.state, nid),
        ),
    )
    report = verify_store(settings, ledger=ledger)
    assert [(f.kind, f.aggregate_id, f.version, f.notification_id) for f in report.findings] == [
        ("altered", str(history.a), 4, nid),
        ("checkpoint_mismatch", None, None, head(settings)),
    ]


def test_a_truncated_tail_is_reported_even_with_its_checkpoint_rows_gone(
    settings: Settings, ledger: Ledger, history: History
) -> None:
    last = head(settings)
    tamper(
        settings,
        (f"DELETE FROM {EVENTS_TABLE} WHERE notification_id > %s", (last - 3,)),
        ("DELETE FROM public.audit_checkpoints WHERE notification_id > %s", (last - 3,)),
    )
    report = verify_store(settings, ledger=ledger)
    assert report.head == last - 3
    truncated = only(report, "truncated")
    assert [f.notification_id for f in truncated if f.aggregate_id is None] == [last]
    missing = only(report, "checkpoint_missing")
    assert [f.notification_id for f in missing] == [last]
    # The event index (when the recorder writes one) names the removed events.
    named = {(f.aggregate_id, f.version, f.notification_id) for f in truncated if f.aggregate_id}
    if event_index_exists(settings):
        assert (str(history.c), 2, last) in named
        assert {nid for _, _, nid in named} == {last - 2, last - 1, last}
    assert cli(settings) == 1


# --- Checkpoints tampered ----------------------------------------------------------------


def test_a_checkpoint_line_removed_from_the_file_is_reported(
    settings: Settings, ledger: Ledger, history: History
) -> None:
    first = head(settings)
    run(ledger, Deposit(history.c, gbp(5), uuid4()))
    assert checkpoint(settings, ledger) is not None
    path = checkpoint_file(settings)
    lines = path.read_bytes().splitlines(keepends=True)
    path.write_bytes(b"".join(lines[1:]))
    report = verify_store(settings, ledger=ledger)
    assert [(f.kind, f.notification_id) for f in report.findings] == [("checkpoint_missing", first)]
    assert "not in the checkpoint file" in report.findings[0].detail
    assert cli(settings) == 1


def test_a_checkpoint_row_edited_in_the_database_is_reported(
    settings: Settings, ledger: Ledger, history: History
) -> None:
    last = head(settings)
    tamper(
        settings,
        ("UPDATE public.audit_checkpoints SET rolling_hash = repeat('a', 64)", ()),
    )
    report = verify_store(settings, ledger=ledger)
    kinds = {(f.kind, f.notification_id) for f in report.findings}
    assert kinds == {("checkpoint_altered", last), ("bad_signature", last)}
    assert cli(settings) == 1


def test_checkpoint_rows_are_append_only_while_the_triggers_are_on(
    settings: Settings, history: History
) -> None:
    with psycopg.connect(settings.resolved_database_url(), autocommit=True) as conn:
        for statement in (
            "UPDATE public.audit_checkpoints SET key_id = 'x'",
            "DELETE FROM public.audit_checkpoints",
            "TRUNCATE public.audit_checkpoints",
        ):
            with pytest.raises(psycopg.errors.RaiseException, match="append-only"):
                conn.execute(statement)  # type: ignore[arg-type]


def test_the_checkpointer_catches_the_file_up_after_a_crash_between_table_and_file(
    settings: Settings, ledger: Ledger, history: History
) -> None:
    path = checkpoint_file(settings)
    whole = path.read_bytes()
    path.write_bytes(whole[:-20])  # a torn line: the crash came mid-write
    run(ledger, Deposit(history.a, gbp(5), uuid4()))
    assert checkpoint(settings, ledger) is not None
    lines = path.read_bytes().splitlines(keepends=True)
    assert lines[0] == whole
    assert len(lines) == 2
    assert verify_store(settings, ledger=ledger).clean


def test_the_checkpointer_signs_nothing_while_the_file_is_ahead_of_the_table(
    settings: Settings, ledger: Ledger, history: History
) -> None:
    tamper(settings, ("DELETE FROM public.audit_checkpoints", ()))
    writer = CheckpointWriter(settings, ledger, Signer.from_settings(settings))
    try:
        assert writer.try_lock()
        assert not writer.resume()
    finally:
        writer.close()


def test_the_checkpointer_never_signs_past_an_event_it_cannot_decode(
    settings: Settings, ledger: Ledger, history: History
) -> None:
    run(ledger, Deposit(history.a, gbp(5), uuid4()))
    garbled = head(settings)
    run(ledger, Deposit(history.b, gbp(5), uuid4()))
    tamper(
        settings,
        (f"UPDATE {EVENTS_TABLE} SET state = 'garbage' WHERE notification_id = %s", (garbled,)),
    )
    assert checkpoint(settings, ledger) is None  # stuck just before it
    report = verify_store(settings, ledger=ledger)
    assert [(f.kind, f.aggregate_id, f.version, f.notification_id) for f in report.findings] == [
        ("altered", str(history.a), 6, garbled)
    ]


def test_old_checkpoints_still_verify_after_the_signing_key_rotates(
    settings: Settings, ledger: Ledger, history: History
) -> None:
    old_key = Signer.from_settings(settings).key_id
    (settings.var_dir / DEV_SIGNING_KEY_FILE).unlink()  # development rotation
    run(ledger, Deposit(history.a, gbp(5), uuid4()))
    newer = checkpoint(settings, ledger)
    assert newer is not None
    assert newer.key_id != old_key
    report = verify_store(settings, ledger=ledger)
    assert report.clean
    assert report.checkpoints == 2


def test_from_and_to_only_filter_what_is_reported(
    settings: Settings, ledger: Ledger, history: History
) -> None:
    nid = notification_id(settings, history.a, 5)
    tamper(
        settings,
        (
            f"UPDATE {EVENTS_TABLE} SET state = convert_to(replace(convert_from(state, 'UTF8'), "
            "'\"amount_minor\":777', '\"amount_minor\":977'), 'UTF8') "
            "WHERE notification_id = %s",
            (nid,),
        ),
    )
    later = datetime.now(UTC) + timedelta(hours=1)
    assert verify_store(settings, ledger=ledger, since=later).clean
    assert cli(settings, since=later) == 0
    assert not verify_store(settings, ledger=ledger, until=later).clean


def test_the_relay_process_checkpointer_signs_new_events_every_interval(
    settings_factory,  # type: ignore[no-untyped-def]
) -> None:
    settings = settings_factory(checkpoint_interval_s=0.05)
    ledger = open_ledger(settings)
    try:
        write_history(ledger)

        async def run_for_a_while() -> int:
            stop = asyncio.Event()
            checkpointer = Checkpointer(settings)
            task = asyncio.create_task(checkpointer.run_until(stop))
            deadline = time.monotonic() + 10
            while checkpointer.written < 1 and time.monotonic() < deadline:
                await asyncio.sleep(0.05)
            stop.set()
            await task
            return checkpointer.written

        assert asyncio.run(run_for_a_while()) == 1
        report = verify_store(settings, ledger=ledger)
        assert report.clean
        assert report.last_checkpoint == head(settings)
    finally:
        ledger.close()


# --- A large store ------------------------------------------------------------------------


def bulk_load(settings: Settings, ledger: Ledger, events: int, accounts: int) -> None:
    """`events` stored events, encoded by the ledger's mapper, written with COPY (the
    application would take minutes): `accounts` accounts, each opened then deposited
    into, interleaved in notification order as live traffic would be."""
    mac_key = settings.audit_mac_key_resolved()
    moment = datetime(2026, 1, 1, tzinfo=UTC)
    opened = [
        Account.open(
            uuid4(),
            "Ada",
            "001",
            "GBP",
            0,
            Stamp(TELLER, moment, "bulk", None, mac_key),
            overdraft_max_minor=OVERDRAFT_MAX_MINOR,
        )
        for _ in range(accounts)
    ]
    columns = "originator_id, originator_version, topic, state"
    with (
        psycopg.connect(settings.resolved_database_url()) as conn,
        conn.cursor() as cursor,
        cursor.copy(f"COPY {EVENTS_TABLE} ({columns}) FROM STDIN") as copy,
    ):
        for round_number in range(events // accounts):
            for index, account in enumerate(opened):
                if round_number:
                    moment += timedelta(microseconds=1)
                    stamp = Stamp(TELLER, moment, "bulk", str(uuid4()), mac_key)
                    account.deposit(
                        gbp(100 + index), "cash", None, stamp, balance_max_minor=BALANCE_MAX_MINOR
                    )
                (event,) = account.collect_events()
                stored = ledger.mapper.to_stored_event(event)
                copy.write_row(
                    (stored.originator_id, stored.originator_version, stored.topic, stored.state)
                )


def test_verify_rate_on_a_store_of_100k_events(
    settings: Settings, ledger: Ledger, capsys: pytest.CaptureFixture[str]
) -> None:
    started = time.monotonic()
    bulk_load(settings, ledger, BULK_EVENTS, BULK_ACCOUNTS)
    loaded_s = time.monotonic() - started
    started = time.monotonic()
    while checkpoint(settings, ledger) is not None:
        pass
    checkpoint_s = time.monotonic() - started
    report = verify_store(settings, ledger=ledger)
    assert report.clean, report.findings[:5]
    assert report.events == BULK_EVENTS
    assert report.aggregates == BULK_ACCOUNTS
    assert report.last_checkpoint == BULK_EVENTS
    with capsys.disabled():
        print(
            f"\nbulk load {BULK_EVENTS} events {loaded_s:.1f} s; checkpoints "
            f"{BULK_EVENTS / checkpoint_s:,.0f} events/s; verify {report.summary}"
        )
    assert report.rate_events_per_s > 5_000
