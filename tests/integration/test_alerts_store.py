"""The alerts projection on real PostgreSQL: alerts and outbox rows with the window in one
transaction, no second alert for a replayed event, the same alerts after a rebuild."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any
from uuid import UUID, uuid4

import psycopg
import pytest

from application.commands import Deposit, OpenAccount, Transfer
from application.compliance import Compliance
from application.ledger import Ledger
from domain.ids import alert_id
from domain.integrity import Actor
from domain.money import Money
from domain.rules.config import RulesConfig
from infrastructure.eventstore.ledger import open_ledger
from infrastructure.monitoring.alerts import (
    WatchlistSteps,
    apply_alerts_batch,
    complete_event_index,
    register_config,
)
from infrastructure.monitoring.rules_config import config_hash
from infrastructure.monitoring.windows import WindowCache
from infrastructure.settings import Settings
from infrastructure.workers.projections import migrate_read_models
from projections.envelope import Envelope
from tests.integration.support import Clock, rows, run, stored_envelopes

pytestmark = pytest.mark.integration

TELLER = Actor("alice", "teller")
OFFICER = Actor("olivia", "compliance")
T0 = datetime(2026, 6, 1, 9, 0, tzinfo=UTC)
WINDOWS = "SELECT * FROM readmodel.rule_windows ORDER BY account_id"
MOVEMENTS = "SELECT * FROM readmodel.rule_window_movements ORDER BY account_id, notification_id"


@pytest.fixture
def settings(settings_factory) -> Settings:  # type: ignore[no-untyped-def]
    settings = settings_factory()
    asyncio.run(migrate_read_models(settings))
    return settings


@pytest.fixture
def ledger(settings: Settings) -> Iterator[Ledger]:
    app = open_ledger(settings)
    app.options.clock = Clock(T0)
    yield app
    app.close()


async def score(
    settings: Settings,
    events: list[Envelope],
    config: RulesConfig,
    cache: WindowCache | None = None,
    watchlist: WatchlistSteps | None = None,
) -> Any:
    async with await psycopg.AsyncConnection.connect(
        settings.resolved_database_url(), autocommit=True
    ) as conn:
        version = await register_config(conn, config.describe(), config_hash(config), "")
        return await apply_alerts_batch(
            conn, events, config, version, cache=cache, watchlist=watchlist
        )


def structuring(ledger: Ledger) -> UUID:
    account = uuid4()
    run(ledger, OpenAccount(account, "Smurf", "001", "GBP", 0))
    for _ in range(3):
        run(ledger, Deposit(account, Money(950_000, "GBP"), uuid4()))
    return account


def test_structuring_raises_one_alert_with_its_outbox_row(
    ledger: Ledger, settings: Settings
) -> None:
    account = structuring(ledger)
    events = stored_envelopes(ledger)
    result, hits = asyncio.run(score(settings, events, RulesConfig()))
    assert [h.rule for h in hits] == ["structuring"]
    expected_id = alert_id("structuring", str(account), events[-1].notification_id)
    assert rows(settings, "SELECT alert_id, rule, severity, positions FROM readmodel.alerts") == [
        (expected_id, "structuring", "high", [e.notification_id for e in events[1:]])
    ]
    [(outbox_alert, payload)] = rows(
        settings, "SELECT alert_id, payload FROM readmodel.alerts_outbox"
    )
    assert outbox_alert == expected_id
    assert payload["explanation"] == (
        "3 cash deposits totalling 28,500.00 GBP within 1d, each under 10,000.00"
    )
    assert payload["chain_head"] == events[-1].hash
    assert result.position == events[-1].notification_id


def test_replayed_events_raise_no_second_alert(ledger: Ledger, settings: Settings) -> None:
    structuring(ledger)
    events = stored_envelopes(ledger)
    asyncio.run(score(settings, events, RulesConfig()))
    result, hits = asyncio.run(score(settings, events + events, RulesConfig()))
    assert hits == []
    assert result.duplicates == 2 * len(events)
    assert len(rows(settings, "SELECT 1 FROM readmodel.alerts_outbox")) == 1


ALERTS = "SELECT * FROM readmodel.alerts ORDER BY alert_id"


def scored_history(ledger: Ledger, settings: Settings) -> tuple[list[Envelope], UUID]:
    """Structuring, a large deposit and its pass-through, scored in three batches; returns
    the events and the pass-through's source account."""
    structuring(ledger)
    source, target = uuid4(), uuid4()
    run(
        ledger, OpenAccount(source, "A", "001", "GBP", 0), OpenAccount(target, "B", "001", "GBP", 0)
    )
    run(ledger, Deposit(source, Money(6_000_000, "GBP"), uuid4(), channel="wire"))
    run(ledger, Transfer(source, target, Money(5_900_000, "GBP"), uuid4()))
    events = stored_envelopes(ledger)
    for chunk in (events[:5], events[5:9], events[9:]):
        asyncio.run(score(settings, chunk, RulesConfig()))
    return events, source


def forget_alerts(settings: Settings) -> None:
    """The alerts projection back to nothing scored."""
    with psycopg.connect(settings.resolved_database_url(), autocommit=True) as conn:
        conn.execute(
            "TRUNCATE readmodel.alerts, readmodel.rule_windows, readmodel.rule_window_movements"
        )
        conn.execute("DELETE FROM readmodel.projection_tracking WHERE projection = 'alerts'")
        conn.execute(
            "UPDATE readmodel.projection_positions SET position = 0 WHERE projection = 'alerts'"
        )


def test_a_rebuild_from_zero_raises_exactly_the_same_alerts(
    ledger: Ledger, settings: Settings
) -> None:
    events, _ = scored_history(ledger, settings)
    before = rows(settings, ALERTS)
    assert {r[1] for r in before} >= {"structuring", "large_transaction", "pass_through"}
    forget_alerts(settings)
    asyncio.run(score(settings, events, RulesConfig()))
    assert rows(settings, ALERTS) == before


def test_workers_holding_windows_score_as_one_that_reads_them_all_from_the_store(
    ledger: Ledger, settings: Settings
) -> None:
    events, source = scored_history(ledger, settings)
    expected, windows = rows(settings, ALERTS), rows(settings, WINDOWS)
    movements = rows(settings, MOVEMENTS)
    forget_alerts(settings)
    first, second = WindowCache(), WindowCache()
    # Two workers take turns on the same accounts (a rebalance): each must read what the
    # other stored, not the window it held from before.
    for k, chunk in enumerate((events[:3], events[3:5], events[5:8], events[8:9], events[9:])):
        asyncio.run(score(settings, chunk, RulesConfig(), first if k % 2 == 0 else second))
    assert rows(settings, ALERTS) == expected
    assert rows(settings, WINDOWS) == windows
    assert rows(settings, MOVEMENTS) == movements
    held = first.get(source)
    assert held is not None
    assert held.version == max(e.version for e in events if e.aggregate_id == source)


def test_a_lower_threshold_is_another_stored_configuration_version(settings: Settings) -> None:
    async def versions() -> tuple[int, int, int]:
        async with await psycopg.AsyncConnection.connect(
            settings.resolved_database_url(), autocommit=True
        ) as conn:
            default, lower = RulesConfig(), RulesConfig(large_transaction=40_000)
            first = await register_config(conn, default.describe(), config_hash(default), "")
            second = await register_config(conn, lower.describe(), config_hash(lower), "x")
            again = await register_config(conn, default.describe(), config_hash(default), "")
            return first, second, again

    first, second, again = asyncio.run(versions())
    assert first != second
    assert again == first


def test_one_batch_scores_each_transfer_against_the_watchlist_as_it_was_then(
    ledger: Ledger, settings: Settings
) -> None:
    payer, payee = uuid4(), uuid4()
    run(ledger, OpenAccount(payer, "A", "001", "GBP", 0), OpenAccount(payee, "B", "001", "GBP", 0))
    run(ledger, Deposit(payer, Money(100_000, "GBP"), uuid4(), channel="wire"))
    run(ledger, Transfer(payer, payee, Money(1_000, "GBP"), uuid4()))
    Compliance(ledger).add_to_watchlist(payee, "sanctions hit", OFFICER, "w1")
    run(ledger, Transfer(payer, payee, Money(1_000, "GBP"), uuid4()))
    run(ledger, Transfer(payer, payee, Money(1_000, "GBP"), uuid4()))
    events = stored_envelopes(ledger)
    after_listing = [
        e.notification_id
        for e in events
        if e.event_type == "TransferredOut" and e.aggregate_id == payer
    ][1:]
    result, hits = asyncio.run(score(settings, events, RulesConfig()))
    assert [(h.rule, h.notification_id) for h in hits] == [("watchlist", n) for n in after_listing]
    assert result.applied == len(events)
    assert rows(
        settings, "SELECT rule, notification_id FROM readmodel.alerts ORDER BY notification_id"
    ) == [("watchlist", n) for n in after_listing]
    outbox = rows(settings, "SELECT alert_id, payload FROM readmodel.alerts_outbox ORDER BY id")
    assert [payload["scored_at_position"] for _, payload in outbox] == after_listing
    assert [alert for alert, _ in outbox] == [
        alert_id("watchlist", str(payer), n) for n in after_listing
    ]


def test_watchlist_steps_kept_between_batches_answer_as_the_store_did_at_each_event(
    ledger: Ledger, settings: Settings
) -> None:
    """Listed, removed, restored, with one account's partition far ahead of another's:
    each transfer is scored against the watchlist just before it, though the steps were
    read (through the event index) when a later batch came first."""
    payer, other, payee = uuid4(), uuid4(), uuid4()
    for account in (payer, other, payee):
        run(ledger, OpenAccount(account, "A", "001", "GBP", 0))
    for account in (payer, other):
        run(ledger, Deposit(account, Money(100_000, "GBP"), uuid4(), channel="wire"))
    compliance = Compliance(ledger)

    def both_pay() -> None:
        for account in (payer, other):
            run(ledger, Transfer(account, payee, Money(1_000, "GBP"), uuid4()))

    both_pay()
    compliance.add_to_watchlist(payee, "sanctions hit", OFFICER, "w1")
    both_pay()
    compliance.remove_from_watchlist(payee, "cleared", OFFICER, "w2")
    both_pay()
    compliance.add_to_watchlist(payee, "listed again", OFFICER, "w3")
    both_pay()
    events = stored_envelopes(ledger)

    def listed_transfers(account: UUID) -> list[int]:
        out = [
            e.notification_id
            for e in events
            if e.aggregate_id == account and e.event_type == "TransferredOut"
        ]
        return [out[1], out[3]]

    assert asyncio.run(_complete(settings))
    steps = WatchlistSteps()
    # Everything but the payer's account first (its partition ahead), then the payer's
    # events one batch each, every one of them below the steps already read.
    _, ahead = asyncio.run(
        score(settings, [e for e in events if e.aggregate_id != payer], RulesConfig(), None, steps)
    )
    assert [(h.account_id, h.notification_id) for h in ahead] == [
        (str(other), n) for n in listed_transfers(other)
    ]
    behind = []
    for event in [e for e in events if e.aggregate_id == payer]:
        behind += asyncio.run(score(settings, [event], RulesConfig(), None, steps))[1]
    assert [(h.rule, h.notification_id) for h in behind] == [
        ("watchlist", n) for n in listed_transfers(payer)
    ]
    # Three steps of one entry, each read once.
    assert [len(v) for v in steps.steps.values()] == [3]
    # Steps after the last batch are read by the next: removed again, then listed again.
    seen = len(events)
    compliance.remove_from_watchlist(payee, "cleared again", OFFICER, "w4")
    both_pay()
    compliance.add_to_watchlist(payee, "and again", OFFICER, "w5")
    both_pay()
    later = stored_envelopes(ledger)[seen:]
    _, hits = asyncio.run(score(settings, later, RulesConfig(), None, steps))
    transfers = [e for e in later if e.event_type == "TransferredOut"]
    assert [(h.account_id, h.notification_id) for h in hits] == [
        (str(e.aggregate_id), e.notification_id) for e in transfers[2:]
    ]
    assert [len(v) for v in steps.steps.values()] == [5]


async def _complete(settings: Settings) -> bool:
    async with await psycopg.AsyncConnection.connect(
        settings.resolved_database_url(), autocommit=True
    ) as conn:
        return await complete_event_index(conn)


def test_the_steps_are_kept_only_where_the_event_index_is_as_far_as_the_store(
    settings: Settings,
) -> None:
    # No store yet: the recorder will create the index with it.
    assert asyncio.run(_complete(settings))
    ledger = open_ledger(settings)
    try:
        run(ledger, OpenAccount(uuid4(), "A", "001", "GBP", 0))
    finally:
        ledger.close()
    assert asyncio.run(_complete(settings))
    # An event the index does not have (a store written before there was one).
    with psycopg.connect(settings.resolved_database_url(), autocommit=True) as conn:
        conn.execute(
            "INSERT INTO ledger_events (originator_id, originator_version, topic, state) "
            "VALUES (%s, 1, 'legacy', '\\x00')",
            (uuid4(),),
        )
    assert not asyncio.run(_complete(settings))
