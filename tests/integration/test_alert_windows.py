"""The alerts projection's windows as rows on real PostgreSQL: a header per account and a
row per movement, written as movements come and go. Read back cold they score as the
windows a worker holds; windows stored whole as JSON by earlier versions still score and
become rows; pruned movements leave; evidence marks survive a restart."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from datetime import timedelta
from typing import Any
from uuid import UUID, uuid4

import orjson
import psycopg
import pytest

from application.commands import Deposit, OpenAccount, Transfer, Withdraw
from application.ledger import Ledger
from domain.money import Money
from domain.rules.config import RulesConfig
from domain.rules.window import AccountWindow
from infrastructure.eventstore.ledger import open_ledger
from infrastructure.monitoring.windows import WindowCache, load_windows
from infrastructure.readmodels.schema import alerts_ddl
from infrastructure.readmodels.tracking import use_schema
from infrastructure.settings import Settings
from projections.envelope import Envelope
from tests.integration.support import Clock, rows, run, stored_envelopes
from tests.integration.test_alerts_store import (
    ALERTS,
    MOVEMENTS,
    T0,
    WINDOWS,
    forget_alerts,
    score,
)

pytestmark = pytest.mark.integration

JUST_UNDER = Money(950_000, "GBP")  # a cash deposit just under the reporting threshold


@pytest.fixture
def ledger(settings: Settings) -> Iterator[Ledger]:
    app = open_ledger(settings)
    app.options.clock = Clock(T0)
    yield app
    app.close()


def busy_history(ledger: Ledger) -> list[Envelope]:
    """Structuring twice over, a pass-through, a large deposit and quiet days that prune."""
    smurf, source, target = uuid4(), uuid4(), uuid4()
    run(
        ledger,
        OpenAccount(smurf, "Smurf", "001", "GBP", 0),
        OpenAccount(source, "A", "001", "GBP", 0),
        OpenAccount(target, "B", "001", "GBP", 0),
    )
    ledger.options.clock.jump(timedelta(days=8))  # past the new-account window
    for _ in range(4):
        run(ledger, Deposit(smurf, JUST_UNDER, uuid4()))
    run(ledger, Deposit(source, Money(6_000_000, "GBP"), uuid4(), channel="wire"))
    run(ledger, Transfer(source, target, Money(5_900_000, "GBP"), uuid4()))
    ledger.options.clock.jump(timedelta(days=2))  # every movement so far is past the horizon
    for _ in range(3):
        run(ledger, Deposit(smurf, JUST_UNDER, uuid4()))
    run(ledger, Withdraw(target, Money(10_000, "GBP"), uuid4()))
    return stored_envelopes(ledger)


def in_batches(events: list[Envelope], size: int) -> list[list[Envelope]]:
    return [events[k : k + size] for k in range(0, len(events), size)]


def stored(settings: Settings) -> tuple[list[Any], list[Any], list[Any]]:
    return rows(settings, ALERTS), rows(settings, WINDOWS), rows(settings, MOVEMENTS)


async def read_cold(settings: Settings, events: list[Envelope]) -> dict[UUID, AccountWindow]:
    """The windows as a worker holding none would read them from the rows."""
    async with await psycopg.AsyncConnection.connect(settings.resolved_database_url()) as conn:
        await use_schema(conn, "readmodel")
        return (await load_windows(conn, events, None)).windows


def test_windows_read_back_from_rows_score_as_the_windows_a_worker_holds(
    ledger: Ledger, settings: Settings
) -> None:
    events = busy_history(ledger)
    cache = WindowCache()
    for batch in in_batches(events, 3):
        asyncio.run(score(settings, batch, RulesConfig(), cache))
    warm = stored(settings)
    assert {r[1] for r in warm[0]} >= {"structuring", "pass_through", "large_transaction"}
    held = {a: cache.get(a) for a in {e.aggregate_id for e in events}}
    assert asyncio.run(read_cold(settings, events)) == held

    forget_alerts(settings)
    for batch in in_batches(events, 3):
        asyncio.run(score(settings, batch, RulesConfig(), WindowCache()))
    assert stored(settings) == warm


def test_a_window_stored_whole_by_an_earlier_version_scores_and_becomes_rows(
    ledger: Ledger, settings: Settings
) -> None:
    account = uuid4()
    run(ledger, OpenAccount(account, "Smurf", "001", "GBP", 0))
    for _ in range(3):
        run(ledger, Deposit(account, JUST_UNDER, uuid4()))
    events = stored_envelopes(ledger)
    asyncio.run(score(settings, events, RulesConfig()))
    expected = stored(settings)
    forget_alerts(settings)
    cache = WindowCache()
    asyncio.run(score(settings, events[:-1], RulesConfig(), cache))  # two deposits scored
    window = cache.get(account)
    assert window is not None
    assert len(window.movements) == 2
    with psycopg.connect(settings.resolved_database_url(), autocommit=True) as conn:
        # The table as an earlier version made it, holding the window as one JSON state.
        conn.execute("DROP TABLE readmodel.rule_windows")
        conn.execute("TRUNCATE readmodel.rule_window_movements")
        conn.execute(
            "CREATE TABLE readmodel.rule_windows (account_id uuid PRIMARY KEY, "
            "version bigint NOT NULL, state jsonb NOT NULL)"
        )
        conn.execute(
            "INSERT INTO readmodel.rule_windows VALUES (%s, %s, %s::jsonb)",
            (account, window.version, orjson.dumps(window.to_json()).decode()),
        )
        conn.execute(alerts_ddl())
    assert asyncio.run(read_cold(settings, events)) == {account: window}

    _, hits = asyncio.run(score(settings, events[-1:], RulesConfig()))

    assert [(h.rule, h.account_id) for h in hits] == [("structuring", str(account))]
    assert stored(settings) == expected
    assert rows(settings, "SELECT 1 FROM readmodel.rule_windows WHERE state IS NOT NULL") == []
    assert (
        rows(settings, "SELECT used FROM readmodel.rule_window_movements")
        == [(["structuring"],)] * 3
    )


def test_movements_pruned_from_a_window_leave_its_rows(ledger: Ledger, settings: Settings) -> None:
    account = uuid4()
    run(ledger, OpenAccount(account, "A", "001", "GBP", 0))
    ledger.options.clock.jump(timedelta(days=8))  # past the new-account window
    run(ledger, Deposit(account, Money(10_000, "GBP"), uuid4()))
    run(ledger, Deposit(account, Money(20_000, "GBP"), uuid4()))
    first = stored_envelopes(ledger)
    asyncio.run(score(settings, first, RulesConfig(), WindowCache()))
    ledger.options.clock.jump(timedelta(days=2))
    run(ledger, Deposit(account, Money(30_000, "GBP"), uuid4()))
    last = stored_envelopes(ledger)[-1]

    asyncio.run(score(settings, [last], RulesConfig(), WindowCache()))

    assert rows(
        settings,
        "SELECT account_id, notification_id, amount_minor FROM readmodel.rule_window_movements",
    ) == [(account, last.notification_id, 30_000)]


def test_evidence_marks_survive_a_restart_and_no_alert_is_raised_twice_from_them(
    ledger: Ledger, settings: Settings
) -> None:
    account = uuid4()
    run(ledger, OpenAccount(account, "Smurf", "001", "GBP", 0))
    for _ in range(5):
        run(ledger, Deposit(account, JUST_UNDER, uuid4()))
    events = stored_envelopes(ledger)
    deposits = [e.notification_id for e in events[1:]]
    # The third deposit completes structuring with two stored ones: their marks change.
    asyncio.run(score(settings, events[:3], RulesConfig(), WindowCache()))
    _, hits = asyncio.run(score(settings, events[3:4], RulesConfig(), WindowCache()))
    assert [h.notification_ids for h in hits] == [deposits[:3]]

    # Each batch a restarted worker: the marks come back from the rows.
    for event in events[4:]:
        _, hits = asyncio.run(score(settings, [event], RulesConfig(), WindowCache()))
        assert hits == []
    assert rows(
        settings,
        "SELECT notification_id, used FROM readmodel.rule_window_movements ORDER BY 1",
    ) == [(n, ["structuring"]) for n in deposits[:3]] + [(n, []) for n in deposits[3:]]
