"""Projection batches on real PostgreSQL: exactly once by tracking, a contiguous mark that
skips the store's gaps, read models that agree with the aggregates."""

from __future__ import annotations

import asyncio
from typing import Any
from uuid import UUID, uuid4

import psycopg
import pytest

from application.commands import ChangeStatus, Deposit, OpenAccount, Transfer, Withdraw
from application.ledger import Ledger
from domain.integrity import Actor
from domain.money import Money
from infrastructure.ops.replay import SHADOW_SCHEMA
from infrastructure.readmodels import tracking as projection_store
from infrastructure.readmodels.schema import PROJECTIONS, ensure_read_models
from infrastructure.readmodels.tracking import apply_batch
from infrastructure.settings import Settings
from projections.envelope import Envelope
from tests.integration.support import rows, run, run_group, stored_envelopes

pytestmark = pytest.mark.integration

TRACKED_STATEMENTS = "SELECT 1 FROM readmodel.projection_tracking WHERE projection = 'statements'"

TELLER = Actor("alice", "teller")


def seed(ledger: Ledger) -> list[UUID]:
    a, b = uuid4(), uuid4()
    gbp = lambda minor: Money(minor, "GBP")  # noqa: E731
    run(ledger, OpenAccount(a, "Ada", "001", "GBP", 0), OpenAccount(b, "Bob", "002", "GBP", 0))
    run(ledger, Deposit(a, gbp(10_000), uuid4()), Deposit(b, gbp(500), uuid4()))
    run(ledger, Transfer(a, b, gbp(2_500), uuid4()))
    run(ledger, Withdraw(b, gbp(1_000), uuid4(), channel="card"))
    return [a, b]


async def apply_all(
    settings: Settings, projection: str, events: list[Envelope], schema: str = "readmodel"
) -> Any:
    async with await psycopg.AsyncConnection.connect(
        settings.resolved_database_url(), autocommit=True
    ) as conn:
        return await apply_batch(conn, projection, events, schema)


def position(settings: Settings, projection: str) -> int:
    return int(
        rows(
            settings,
            "SELECT position FROM readmodel.projection_positions WHERE projection = %s",
            projection,
        )[0][0]
    )


def test_projected_balances_and_statements_agree_with_the_aggregates(
    ledger: Ledger, settings: Settings
) -> None:
    accounts = seed(ledger)
    events = stored_envelopes(ledger)
    for projection in PROJECTIONS:
        asyncio.run(apply_all(settings, projection, events))
        assert position(settings, projection) == events[-1].notification_id
    for account_id in accounts:
        aggregate = ledger.get_account(account_id)
        [(balance, version, branch)] = rows(
            settings,
            "SELECT balance_minor, version, branch FROM readmodel.accounts WHERE account_id = %s",
            account_id,
        )
        assert (balance, version, branch) == (
            aggregate.balance_minor,
            aggregate.version,
            aggregate.branch,
        )
        [(credits, debits)] = rows(
            settings,
            "SELECT coalesce(sum(amount_minor) FILTER (WHERE direction = 'credit'), 0), "
            "coalesce(sum(amount_minor) FILTER (WHERE direction = 'debit'), 0) "
            "FROM readmodel.transactions WHERE account_id = %s",
            account_id,
        )
        assert credits - debits == aggregate.balance_minor
    assert rows(
        settings, "SELECT count, sum_minor FROM readmodel.kpis_hourly WHERE metric = 'transfers'"
    ) == [(1, 2_500)]
    assert sorted(
        rows(settings, "SELECT branch, count FROM readmodel.kpis_branch WHERE metric = 'deposits'")
    ) == [("001", 1), ("002", 1)]


def test_the_same_events_delivered_twice_change_nothing(ledger: Ledger, settings: Settings) -> None:
    seed(ledger)
    events = stored_envelopes(ledger)
    first = asyncio.run(apply_all(settings, "statements", events))
    before = rows(settings, "SELECT * FROM readmodel.transactions ORDER BY account_id, version")
    again = asyncio.run(apply_all(settings, "statements", events + events[:3]))
    assert first.applied == len(events)
    assert again.applied == 0
    assert again.duplicates == len(events) + 3
    assert (
        rows(settings, "SELECT * FROM readmodel.transactions ORDER BY account_id, version")
        == before
    )


def test_the_mark_waits_for_missing_ids_then_jumps_and_compacts(
    ledger: Ledger, settings: Settings
) -> None:
    seed(ledger)
    events = stored_envelopes(ledger)
    later, earlier = events[4:], events[:4]
    asyncio.run(apply_all(settings, "statements", later))  # another partition got ahead
    assert position(settings, "statements") == 0
    assert len(rows(settings, TRACKED_STATEMENTS)) == len(later)
    asyncio.run(apply_all(settings, "statements", earlier))
    assert position(settings, "statements") == events[-1].notification_id
    assert rows(settings, TRACKED_STATEMENTS) == []


def test_only_ids_beyond_the_mark_keep_a_tracking_row_and_both_kinds_are_duplicates(
    ledger: Ledger, settings: Settings
) -> None:
    seed(ledger)
    events = stored_envelopes(ledger)
    before, missing, after = events[:3], events[3], events[4:]
    first = asyncio.run(apply_all(settings, "statements", before + after))
    assert first.applied == len(events) - 1
    assert position(settings, "statements") == before[-1].notification_id
    tracked = rows(
        settings,
        "SELECT notification_id FROM readmodel.projection_tracking "
        "WHERE projection = 'statements' ORDER BY notification_id",
    )
    assert tracked == [(e.notification_id,) for e in after]  # none at or below the mark
    again = asyncio.run(apply_all(settings, "statements", [before[0], after[0]]))
    assert (again.applied, again.duplicates) == (0, 2)
    last = asyncio.run(apply_all(settings, "statements", [missing, *after]))
    assert (last.applied, last.duplicates) == (1, len(after))
    assert position(settings, "statements") == events[-1].notification_id
    assert rows(settings, TRACKED_STATEMENTS) == []
    lines = rows(settings, "SELECT count(*) FROM readmodel.transactions")
    assert lines == [(sum(e.event_type != "AccountOpened" for e in events),)]


def test_batches_that_leave_the_blocking_id_missing_keep_the_mark_and_the_rows(
    ledger: Ledger, settings: Settings
) -> None:
    seed(ledger)
    events = stored_envelopes(ledger)
    first, rest = events[0], events[1:]
    for event in rest:  # one batch each, while the first id's partition is behind
        asyncio.run(apply_all(settings, "statements", [event]))
        assert position(settings, "statements") == 0
    blocked = rows(
        settings,
        "SELECT blocked_at FROM readmodel.projection_positions WHERE projection = 'statements'",
    )
    assert blocked == [(first.notification_id,)]
    assert len(rows(settings, TRACKED_STATEMENTS)) == len(rest)
    asyncio.run(apply_all(settings, "statements", [first]))
    assert position(settings, "statements") == events[-1].notification_id
    assert rows(settings, TRACKED_STATEMENTS) == []


def test_the_walk_goes_on_step_by_step_past_the_scan_limit_to_the_end(
    ledger: Ledger, settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    seed(ledger)
    events = stored_envelopes(ledger)
    monkeypatch.setattr(projection_store, "MARK_SCAN_MAX", 2)
    first, rest = events[0], events[1:]
    # Every id but the first applied: tracked above the mark, many steps' worth of them.
    for event in rest:
        asyncio.run(apply_all(settings, "statements", [event]))
    assert position(settings, "statements") == 0
    assert len(rows(settings, TRACKED_STATEMENTS)) == len(rest) > 2 * 2
    # The one missing id arrives, and no batch after it: the mark must reach the end now.
    done = asyncio.run(apply_all(settings, "statements", [first]))
    assert done.applied == 1
    assert position(settings, "statements") == events[-1].notification_id
    assert rows(settings, TRACKED_STATEMENTS) == []
    again = asyncio.run(apply_all(settings, "statements", events[:1]))  # nothing new
    assert (again.applied, again.duplicates) == (0, 1)


def test_a_walk_stepping_past_the_limit_stops_at_the_next_missing_id(
    ledger: Ledger, settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    seed(ledger)
    events = stored_envelopes(ledger)
    monkeypatch.setattr(projection_store, "MARK_SCAN_MAX", 2)
    missing = events[-2]
    present = [e for e in events if e is not missing]
    asyncio.run(apply_all(settings, "statements", present))
    assert position(settings, "statements") == events[-3].notification_id
    blocked = rows(
        settings,
        "SELECT blocked_at FROM readmodel.projection_positions WHERE projection = 'statements'",
    )
    assert blocked == [(missing.notification_id,)]
    asyncio.run(apply_all(settings, "statements", [missing]))
    assert position(settings, "statements") == events[-1].notification_id
    assert rows(settings, TRACKED_STATEMENTS) == []


def test_the_mark_skips_gaps_the_store_will_never_fill(ledger: Ledger, settings: Settings) -> None:
    seed(ledger)
    # A rolled-back insert burns sequence values: a permanent gap in notification ids.
    with psycopg.connect(settings.resolved_database_url()) as conn:
        conn.execute(
            "INSERT INTO ledger_events (originator_id, originator_version, topic, state) "
            "VALUES (%s, 1, 'x', ''::bytea), (%s, 1, 'x', ''::bytea)",
            (uuid4(), uuid4()),
        )
        conn.rollback()
    account = uuid4()
    run(ledger, OpenAccount(account, "Cy", "001", "GBP", 0))
    events = stored_envelopes(ledger)
    ids = [e.notification_id for e in events]
    assert ids[-1] - ids[-2] == 3, "the store has a gap of two ids"
    asyncio.run(apply_all(settings, "kpis", events))
    assert position(settings, "kpis") == ids[-1]


def test_a_balance_event_that_arrives_before_its_predecessor_waits_for_it(
    ledger: Ledger, settings: Settings
) -> None:
    seed(ledger)
    events = stored_envelopes(ledger)
    opened, deposited = events[0], events[2]
    assert (opened.aggregate_id, opened.version, deposited.version) == (
        deposited.aggregate_id,
        1,
        2,
    )
    early = asyncio.run(apply_all(settings, "balances", [deposited]))
    assert (early.applied, early.deferred) == (0, 1)
    asyncio.run(apply_all(settings, "balances", [opened, deposited]))
    [(balance, version)] = rows(
        settings,
        "SELECT balance_minor, version FROM readmodel.accounts WHERE account_id = %s",
        opened.aggregate_id,
    )
    assert (balance, version) == (10_000, 2)


def busy_history(ledger: Ledger) -> list[UUID]:
    """Three accounts of two branches; several movements and status changes of each one
    close together, so that one batch holds many rows of the same account."""
    a, b, c = uuid4(), uuid4(), uuid4()
    gbp = lambda minor: Money(minor, "GBP")  # noqa: E731
    run_group(
        ledger,
        OpenAccount(a, "Ada", "001", "GBP", 500),
        OpenAccount(b, "Bob", "002", "GBP", 0),
        OpenAccount(c, "Cy", "002", "GBP", 0),
    )
    run_group(ledger, Deposit(a, gbp(10_000), uuid4()), Deposit(b, gbp(700), uuid4()))
    run(ledger, Transfer(a, b, gbp(2_500), uuid4()), Transfer(b, c, gbp(1_000), uuid4()))
    run(ledger, ChangeStatus(a, "freeze", "check"), ChangeStatus(a, "unfreeze", "cleared"))
    run(ledger, Withdraw(a, gbp(600), uuid4(), channel="card"), Deposit(c, gbp(5), uuid4()))
    run(ledger, Transfer(c, a, gbp(105), uuid4()), ChangeStatus(b, "freeze", "check"))
    return [a, b, c]


LEDGER_TABLES = {
    "balances": ("accounts",),
    "statements": ("transactions",),
    "kpis": ("kpis_hourly", "kpis_branch", "kpi_account_branches"),
}


def test_one_batch_leaves_the_same_read_models_as_one_event_per_batch(
    ledger: Ledger, settings: Settings
) -> None:
    accounts = busy_history(ledger)
    events = stored_envelopes(ledger)
    with psycopg.connect(settings.resolved_database_url(), autocommit=True) as conn:
        ensure_read_models(conn, SHADOW_SCHEMA)
    for projection, tables in LEDGER_TABLES.items():
        whole = asyncio.run(apply_all(settings, projection, events))
        assert (whole.applied, whole.deferred) == (len(events), 0)
        for event in events:
            asyncio.run(apply_all(settings, projection, [event], SHADOW_SCHEMA))
        for table in tables:
            # Sorted by key (the leading columns): no two rows tie on it.
            live = sorted(rows(settings, f"SELECT * FROM readmodel.{table}"))
            shadow = sorted(rows(settings, f"SELECT * FROM {SHADOW_SCHEMA}.{table}"))
            assert live == shadow, table
            assert live, table
    for account_id in accounts:
        aggregate = ledger.get_account(account_id)
        [(balance, version, status, moved_at)] = rows(
            settings,
            "SELECT balance_minor, version, status, last_transaction_at FROM readmodel.accounts "
            "WHERE account_id = %s",
            account_id,
        )
        assert (balance, version, status, moved_at) == (
            aggregate.balance_minor,
            aggregate.version,
            aggregate.status.value,
            aggregate.last_transaction_at,
        )
    assert rows(settings, "SELECT count(*) FROM readmodel.transactions") == [(10,)]
    assert sorted(
        rows(settings, "SELECT branch, count, sum_minor FROM readmodel.kpis_branch "
             "WHERE metric = 'transfers'")
    ) == [("001", 1, 2_500), ("002", 2, 1_105)]  # fmt: skip


def test_an_early_event_in_a_batch_is_deferred_while_the_rest_of_it_applies(
    ledger: Ledger, settings: Settings
) -> None:
    a, _, _ = busy_history(ledger)
    events = stored_envelopes(ledger)
    own = [e for e in events if e.aggregate_id == a]
    opened, deposited, moved_out = own[:3]
    assert (opened.version, deposited.version, moved_out.version) == (1, 2, 3)
    first = asyncio.run(apply_all(settings, "balances", [e for e in events if e != deposited]))
    later = own[2:]  # each comes before its predecessor now
    assert (first.applied, first.deferred) == (len(events) - 1 - len(later), len(later))
    assert position(settings, "balances") == opened.notification_id + 2  # b and c opened
    tracked = [
        n
        for (n,) in rows(
            settings,
            "SELECT notification_id FROM readmodel.projection_tracking "
            "WHERE projection = 'balances'",
        )
    ]
    assert moved_out.notification_id not in tracked
    assert rows(
        settings, "SELECT balance_minor, version FROM readmodel.accounts WHERE account_id = %s", a
    ) == [(0, 1)]
    redelivered = own[1:]
    again = asyncio.run(apply_all(settings, "balances", redelivered))
    assert (again.applied, again.deferred) == (len(redelivered), 0)
    aggregate = ledger.get_account(a)
    assert rows(
        settings, "SELECT balance_minor, version FROM readmodel.accounts WHERE account_id = %s", a
    ) == [(aggregate.balance_minor, aggregate.version)]
    assert position(settings, "balances") == events[-1].notification_id
    assert rows(settings, "SELECT 1 FROM readmodel.projection_tracking") == []


def test_a_batch_notifies_each_account_once_with_its_latest_version_in_one_notice(
    ledger: Ledger, settings: Settings
) -> None:
    accounts = busy_history(ledger)
    events = stored_envelopes(ledger)
    with psycopg.connect(settings.resolved_database_url(), autocommit=True) as listener:
        listener.execute("LISTEN readmodel_accounts")
        asyncio.run(apply_all(settings, "balances", events))
        [payload] = [n.payload for n in listener.notifies(timeout=2, stop_after=1)]
        assert list(listener.notifies(timeout=0.3)) == [], "one notice for the batch"
    assert sorted(payload.split(",")) == sorted(
        f"{a}:{ledger.get_account(a).version}" for a in accounts
    )
