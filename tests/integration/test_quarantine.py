"""Quarantine on real PostgreSQL (and a real broker for the relay): an event a projection
cannot apply, or the relay cannot decode, is set aside with its error, raises one
`quarantined_event` alert, and every other event is applied around it."""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import os
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar
from uuid import UUID, uuid4

import orjson
import psycopg
import pytest
import redis
from psycopg import AsyncConnection
from pydantic import SecretStr

from application.commands import Deposit, OpenAccount, Transfer, Withdraw
from application.compliance import Compliance
from application.envelope import envelope
from application.ledger import Ledger
from domain.ids import alert_id
from domain.money import Money
from infrastructure.eventstore.ledger import open_ledger
from infrastructure.monitoring.alerts import apply_alerts_batch, register_config
from infrastructure.monitoring.rules_config import config_hash, load_rules
from infrastructure.ops.embedded import EmbeddedBroker
from infrastructure.ops.quarantine import (
    RetryOutcome,
    list_quarantined,
    reasons,
    retry_quarantined,
)
from infrastructure.readmodels.balances_cache import account_cache_key
from infrastructure.readmodels.quarantine import QUARANTINED_RULE
from infrastructure.readmodels.tracking import apply_batch
from infrastructure.relay.events import CannotDecode, Relay, RelayLimits
from infrastructure.settings import Settings
from infrastructure.workers.case_opener_store import Quarantined as OpenerQuarantined
from infrastructure.workers.case_opener_store import prepare_quarantine_table, record_quarantined
from projections.alerts import MOVEMENT_KINDS
from projections.envelope import Envelope
from tests.integration.support import rows, run, stored_envelopes
from tests.integration.test_relay import RelayThread, caught_up, wait_until

pytestmark = pytest.mark.integration
T = TypeVar("T")

GBP = lambda minor: Money(minor, "GBP")  # noqa: E731


def seed(ledger: Ledger) -> tuple[UUID, UUID]:
    a, b = uuid4(), uuid4()
    run(ledger, OpenAccount(a, "Ada", "001", "GBP", 0), OpenAccount(b, "Bob", "002", "GBP", 0))
    run(ledger, Deposit(a, GBP(10_000), uuid4()), Deposit(b, GBP(500), uuid4()))
    run(ledger, Transfer(a, b, GBP(2_500), uuid4()))
    run(ledger, Withdraw(b, GBP(1_000), uuid4(), channel="card"))
    run(ledger, Deposit(a, GBP(700), uuid4()))
    return a, b


def spoiled(events: list[Envelope], notification_id: int, **payload: Any) -> list[Envelope]:
    """The events, with one event's payload changed as if it had been stored so."""
    return [
        dataclasses.replace(e, payload={**e.payload, **payload})
        if e.notification_id == notification_id
        else e
        for e in events
    ]


def on_connection(settings: Settings, use: Callable[[AsyncConnection[Any]], Awaitable[T]]) -> T:
    """`use` on an autocommit connection of its own, run to the end."""

    async def go() -> T:
        async with await psycopg.AsyncConnection.connect(
            settings.resolved_database_url(), autocommit=True
        ) as conn:
            return await use(conn)

    return asyncio.run(go())


def apply(settings: Settings, projection: str, events: list[Envelope]) -> Any:
    async def go(conn: AsyncConnection[Any]) -> Any:
        if projection != "alerts":
            return await apply_batch(conn, projection, events)
        config, source = load_rules(None)
        version = await register_config(conn, config.describe(), config_hash(config), source)
        return await apply_alerts_batch(conn, events, config, version)

    return on_connection(settings, go)


def position(settings: Settings, projection: str) -> int:
    [(value,)] = rows(
        settings,
        "SELECT position FROM readmodel.projection_positions WHERE projection = %s",
        projection,
    )
    return int(value)


def quarantined(settings: Settings, projection: str) -> list[tuple[int, str]]:
    return [
        (int(n), str(error))
        for n, error in rows(
            settings,
            "SELECT notification_id, error FROM readmodel.quarantined_events "
            "WHERE projection = %s ORDER BY notification_id",
            projection,
        )
    ]


def quarantine_alerts(settings: Settings) -> list[tuple[UUID, str, UUID, int]]:
    return [
        (r[0], r[1], r[2], int(r[3]))
        for r in rows(
            settings,
            "SELECT a.alert_id, a.severity, a.account_id, a.notification_id "
            "FROM readmodel.alerts a JOIN readmodel.alerts_outbox o USING (alert_id) "
            "WHERE a.rule = %s ORDER BY a.notification_id",
            QUARANTINED_RULE,
        )
    ]


def test_a_statement_line_postgres_refuses_is_quarantined_and_the_rest_applied(
    ledger: Ledger, settings: Settings
) -> None:
    a, _ = seed(ledger)
    events = stored_envelopes(ledger)
    bad = next(e for e in events if e.event_type == "Deposited" and e.aggregate_id == a)
    events = spoiled(events, bad.notification_id, reference="a\x00b")

    result = apply(settings, "statements", events)

    assert position(settings, "statements") == events[-1].notification_id
    [(notification_id, error)] = quarantined(settings, "statements")
    assert notification_id == bad.notification_id
    assert "0x00" in error
    assert "\x00" not in error
    movements = [e for e in events if e.event_type in {"Deposited", "Withdrawn"}]
    movements += [e for e in events if e.event_type.startswith("Transferred")]
    lines = rows(settings, "SELECT notification_id FROM readmodel.transactions")
    assert sorted(n for (n,) in lines) == sorted(
        e.notification_id for e in movements if e.notification_id != bad.notification_id
    )
    assert result.applied == len(events) - 1
    assert quarantine_alerts(settings) == [
        (
            alert_id(QUARANTINED_RULE, str(a), bad.notification_id),
            "critical",
            a,
            bad.notification_id,
        )
    ]


def test_a_redelivered_or_twice_quarantined_event_raises_one_alert(
    ledger: Ledger, settings: Settings
) -> None:
    a, _ = seed(ledger)
    events = stored_envelopes(ledger)
    bad = next(e for e in events if e.event_type == "Deposited" and e.aggregate_id == a)
    events = spoiled(events, bad.notification_id, reference="a\x00b", amount_minor="x")

    apply(settings, "statements", events)
    apply(settings, "statements", events)  # Kafka redelivers the whole batch
    apply(settings, "kpis", events)  # another projection cannot apply it either

    assert [n for n, _ in quarantined(settings, "statements")] == [bad.notification_id]
    assert [n for n, _ in quarantined(settings, "kpis")] == [bad.notification_id]
    assert len(quarantine_alerts(settings)) == 1


def test_balances_step_over_a_quarantined_version_and_take_the_next_balance(
    ledger: Ledger, settings: Settings
) -> None:
    a, b = seed(ledger)
    events = stored_envelopes(ledger)
    withdrawal = next(e for e in events if e.event_type == "Withdrawn")
    apply(
        settings,
        "balances",
        spoiled(events, withdrawal.notification_id, balance_after_minor=10**20),
    )
    assert [n for n, _ in quarantined(settings, "balances")] == [withdrawal.notification_id]

    run(ledger, Deposit(b, GBP(250), uuid4()))  # b's next version, in a later batch
    apply(settings, "balances", stored_envelopes(ledger)[len(events) :])

    assert position(settings, "balances") == ledger.recorder.max_notification_id()
    for account_id in (a, b):
        aggregate = ledger.get_account(account_id)
        [(balance, version)] = rows(
            settings,
            "SELECT balance_minor, version FROM readmodel.accounts WHERE account_id = %s",
            account_id,
        )
        assert (balance, version) == (aggregate.balance_minor, aggregate.version)


def test_an_event_the_rules_cannot_read_is_quarantined_and_later_events_still_scored(
    ledger: Ledger, settings: Settings
) -> None:
    a, _ = seed(ledger)
    events = stored_envelopes(ledger)
    first_deposit = next(e for e in events if e.event_type == "Deposited")
    events = spoiled(events, first_deposit.notification_id, amount_minor="not a number")
    later = [uuid4() for _ in range(3)]
    for transaction_id in later:  # three cash deposits just under the threshold
        run(ledger, Deposit(a, GBP(950_000), transaction_id))
    more = stored_envelopes(ledger)[len(events) :]

    apply(settings, "alerts", events + more)

    assert position(settings, "alerts") == more[-1].notification_id
    assert [n for n, _ in quarantined(settings, "alerts")] == [first_deposit.notification_id]
    structuring = rows(
        settings, "SELECT account_id FROM readmodel.alerts WHERE rule = 'structuring'"
    )
    assert structuring == [(a,)]


def set_aside_by_relay(settings: Settings, event: Envelope) -> None:
    """As the relay records an event it could not decode (this one it could)."""
    with psycopg.connect(settings.resolved_database_url(), autocommit=True) as conn:
        conn.execute(
            "INSERT INTO public.relay_quarantine (notification_id, topic, originator_id, "
            "originator_version, error) VALUES (%s, %s, %s, %s, 'test')",
            (
                event.notification_id,
                f"domain.account:Account.{event.event_type}",
                event.aggregate_id,
                event.version,
            ),
        )


def test_ids_the_relay_quarantined_count_as_done_in_every_projection(
    ledger: Ledger, settings: Settings
) -> None:
    seed(ledger)
    events = stored_envelopes(ledger)
    missing = events[3]
    set_aside_by_relay(settings, missing)
    delivered = [e for e in events if e is not missing]

    for projection in ("balances", "statements", "kpis", "alerts"):
        apply(settings, projection, delivered)
        assert position(settings, projection) == events[-1].notification_id, projection


def test_the_relay_quarantines_an_event_it_cannot_decode_and_publishes_the_rest(
    ledger: Ledger, settings: Settings, broker: EmbeddedBroker
) -> None:
    relay_settings = settings.model_copy(
        update={"kafka_bootstrap": broker.bootstrap, "topic_prefix": f"q{uuid4().hex[:8]}."}
    )
    a, _ = seed(ledger)
    # Another process, with a cipher key this relay does not have, writes an account.
    key = base64.b64encode(os.urandom(32)).decode()
    other = open_ledger(settings.model_copy(update={"cipher_key": SecretStr(key)}))
    c = uuid4()
    try:
        run(other, OpenAccount(c, "Cy", "001", "GBP", 0), Deposit(c, GBP(5_000), uuid4()))
    finally:
        other.close()
    run(ledger, Deposit(a, GBP(300), uuid4()))

    limits = RelayLimits.from_settings(relay_settings, poll_interval_s=0.1)
    with RelayThread(Relay(relay_settings, limits)):
        wait_until(caught_up(relay_settings, ledger), "the relay reached the head")

    quarantined_ids = rows(
        settings,
        "SELECT notification_id, originator_id, error FROM public.relay_quarantine "
        "ORDER BY notification_id",
    )
    assert [r[1] for r in quarantined_ids] == [c, c]
    deposit_id = int(quarantined_ids[1][0])
    alerts = quarantine_alerts(settings)
    assert alerts == [(alert_id(QUARANTINED_RULE, str(c), deposit_id), "critical", c, deposit_id)]
    # Its case opens, though the account cannot be read to find its branch.
    [(payload,)] = rows(
        settings, "SELECT payload FROM readmodel.alerts_outbox WHERE alert_id = %s", alerts[0][0]
    )
    routed = Compliance(ledger).open_case(payload, "test")
    assert routed.outcome == "opened"
    case = routed.case
    assert case is not None
    assert (case.rule, case.severity, case.branch) == (QUARANTINED_RULE, "critical", None)
    # Every projection's mark passes the two ids it will never receive.
    delivered = stored_envelopes_decodable(ledger)
    apply(settings, "balances", delivered)
    assert position(settings, "balances") == ledger.recorder.max_notification_id()


def stored_envelopes_decodable(ledger: Ledger) -> list[Envelope]:
    """The stored events this ledger's settings can decode, as projections receive them."""
    found: list[Envelope] = []
    for notification in ledger.recorder.select_notifications(start=None, limit=100_000):
        try:
            event: Any = ledger.mapper.to_domain_event(notification)
        except Exception:  # noqa: S112  # written with another key: the point of the test
            continue
        found.append(Envelope.from_json(envelope(notification.id, event)))
    return found


# Retrying, once the cause is fixed ------------------------------------------------------


def retry(settings: Settings, ledger: Ledger, **only: Any) -> list[RetryOutcome]:
    return on_connection(settings, lambda conn: retry_quarantined(settings, ledger, conn, **only))


def test_a_retried_event_is_applied_once_however_often_it_is_retried(
    ledger: Ledger, settings: Settings
) -> None:
    a, _ = seed(ledger)
    events = stored_envelopes(ledger)
    bad = next(e for e in events if e.event_type == "Deposited" and e.aggregate_id == a)
    spoilt = spoiled(events, bad.notification_id, reference="a\x00b", amount_minor="x")
    for projection in ("statements", "kpis"):
        apply(settings, projection, spoilt)

    # The store holds the event as it was written: read from there, it applies.
    outcomes = retry(settings, ledger)
    again = retry(settings, ledger)

    assert {(o.consumer, o.resolved) for o in outcomes} == {("kpis", True), ("statements", True)}
    assert again == []
    [(line,)] = rows(
        settings,
        "SELECT count(*) FROM readmodel.transactions WHERE notification_id = %s",
        bad.notification_id,
    )
    assert line == 1
    deposits = sum(e.payload["amount_minor"] for e in events if e.event_type == "Deposited")
    [(total,)] = rows(
        settings, "SELECT sum(sum_minor) FROM readmodel.kpis_hourly WHERE metric = 'deposits'"
    )
    assert int(total) == deposits
    assert (
        rows(settings, "SELECT 1 FROM readmodel.quarantined_events WHERE resolved_at IS NULL") == []
    )


def test_a_retried_event_rebuilds_the_account_from_its_whole_stream_in_order(
    ledger: Ledger, settings: Settings
) -> None:
    a, _ = seed(ledger)
    events = stored_envelopes(ledger)
    opened = next(e for e in events if e.event_type == "AccountOpened" and e.aggregate_id == a)
    deposit = next(e for e in events if e.event_type == "Deposited" and e.aggregate_id == a)
    apply(settings, "balances", spoiled(events, opened.notification_id, owner="A\x00da"))
    apply(settings, "alerts", spoiled(events, deposit.notification_id, amount_minor="x"))
    assert rows(settings, "SELECT 1 FROM readmodel.accounts WHERE account_id = %s", a) == []
    assert position(settings, "balances") == events[-1].notification_id

    outcomes = retry(settings, ledger)

    assert {(o.consumer, o.resolved) for o in outcomes} == {("balances", True), ("alerts", True)}
    aggregate = ledger.get_account(a)
    [(balance, version, owner)] = rows(
        settings,
        "SELECT balance_minor, version, owner FROM readmodel.accounts WHERE account_id = %s",
        a,
    )
    assert (balance, version, owner) == (aggregate.balance_minor, aggregate.version, "Ada")
    [(window_version,)] = rows(
        settings, "SELECT version FROM readmodel.rule_windows WHERE account_id = %s", a
    )
    assert window_version == aggregate.version
    # The window rebuilt from the stream replaces the rows stored without the deposit.
    assert rows(
        settings,
        "SELECT notification_id FROM readmodel.rule_window_movements WHERE account_id = %s "
        "ORDER BY notification_id",
        a,
    ) == [
        (e.notification_id,)
        for e in events
        if e.aggregate_id == a and e.event_type in MOVEMENT_KINDS
    ]


def test_a_retried_balances_event_leaves_the_cache_holding_the_account_as_stored(
    ledger: Ledger, settings: Settings, redis_client: redis.Redis
) -> None:
    """The query API reads an account from Redis first: once a retry has written the
    account's row, the cached copy is that row, not an older one."""
    a, _ = seed(ledger)
    run(ledger, Deposit(a, GBP(125), uuid4()))
    events = stored_envelopes(ledger)
    last = events[-1]  # the account's last event: its row stays a version behind
    apply(settings, "balances", spoiled(events, last.notification_id, balance_after_minor=10**20))
    key = account_cache_key(settings.redis_key_prefix, a)
    stale = {"account_id": str(a), "version": last.version - 1, "balance_minor": 0}
    redis_client.set(key, orjson.dumps(stale))  # what a worker cached before it

    outcomes = retry(settings, ledger)

    assert {(o.consumer, o.resolved) for o in outcomes} == {("balances", True)}
    cached = orjson.loads(redis_client.get(key))  # type: ignore[arg-type]
    [(balance, version)] = rows(
        settings, "SELECT balance_minor, version FROM readmodel.accounts WHERE account_id = %s", a
    )
    aggregate = ledger.get_account(a)
    assert (cached["balance_minor"], cached["version"]) == (balance, version)
    assert (balance, version) == (aggregate.balance_minor, aggregate.version)


def test_an_event_the_relay_set_aside_is_retried_in_every_projection(
    ledger: Ledger, settings: Settings
) -> None:
    seed(ledger)
    events = stored_envelopes(ledger)
    missing = next(e for e in events if e.event_type == "TransferredOut")
    set_aside_by_relay(settings, missing)
    delivered = [e for e in events if e is not missing]
    for projection in ("balances", "statements", "kpis", "alerts"):
        apply(settings, projection, delivered)

    [outcome] = retry(settings, ledger, consumer="relay")

    assert outcome.resolved
    assert rows(
        settings,
        "SELECT 1 FROM readmodel.transactions WHERE notification_id = %s",
        missing.notification_id,
    ) == [(1,)]
    [(transfers,)] = rows(
        settings, "SELECT sum(count) FROM readmodel.kpis_hourly WHERE metric = 'transfers'"
    )
    assert transfers == 1


def test_a_relay_that_can_decode_nothing_stops_instead_of_quarantining_everything(
    settings: Settings, broker: EmbeddedBroker
) -> None:
    key = base64.b64encode(os.urandom(32)).decode()
    writer = open_ledger(settings.model_copy(update={"cipher_key": SecretStr(key)}))
    try:
        seed(writer)
    finally:
        writer.close()
    relay_settings = settings.model_copy(  # the relay forgot the cipher key
        update={"kafka_bootstrap": broker.bootstrap, "topic_prefix": f"q{uuid4().hex[:8]}."}
    )
    limits = RelayLimits.from_settings(relay_settings, poll_interval_s=0.1)
    relay = RelayThread(Relay(relay_settings, limits))
    with relay:
        wait_until(lambda: relay.error is not None, "the relay stopped")

    assert isinstance(relay.error, CannotDecode)
    assert "VIGIL_CIPHER_KEY" in str(relay.error)
    assert rows(settings, "SELECT count(*) FROM public.relay_quarantine") == [(0,)]


def test_the_list_and_health_show_every_consumers_set_aside_events(
    ledger: Ledger, settings: Settings
) -> None:
    seed(ledger)
    events = stored_envelopes(ledger)
    deposit = next(e for e in events if e.event_type == "Deposited")
    apply(settings, "statements", spoiled(events, deposit.notification_id, reference="\x00"))

    async def listed(conn: AsyncConnection[Any]) -> tuple[list[Any], list[str]]:
        await prepare_quarantine_table(conn, settings)
        await record_quarantined(
            conn, OpenerQuarantined("t.vigil.alerts", 0, 7, None, None, "ValueError: x", b"{")
        )
        items = await list_quarantined(conn)
        return items, reasons(items)

    items, said = on_connection(settings, listed)

    assert [(i.consumer, i.notification_id) for i in items] == [
        ("statements", deposit.notification_id),
        ("case_opener", None),
    ]
    assert said == [
        "2 events quarantined (1 by case_opener, 1 by statements): see `vigil quarantine list`"
    ]
