"""The alerts outbox is trimmed: an alert the relay published, that the case opener routed
(a case it opened or joined, a suppression that held it back) and that is older than the
retention is deleted; every other stays, and a broker that lost its log is sent exactly
what stayed. Against a real PostgreSQL and a real tansu broker."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any
from uuid import UUID, uuid4

import psycopg
import pytest
from psycopg.types.json import Jsonb

from infrastructure.ops.embedded import EmbeddedBroker
from infrastructure.readmodels.schema import SCHEMA
from infrastructure.relay import outbox
from infrastructure.relay.outbox import AlertsOutboxRelay, trim_outbox
from infrastructure.settings import Settings
from tests.integration.support import Running
from tests.integration.test_alerts_outbox_relay import (
    add_alerts,
    check_records,
    consume_alerts,
    outbox_settings,
    published,
)
from tests.integration.test_relay import wait_until

pytestmark = pytest.mark.integration

WEEK_S = 7 * 24 * 3600.0


def outbox_ids(conn: psycopg.Connection[Any]) -> dict[str, int]:
    rows = conn.execute(f"SELECT alert_id, id FROM {SCHEMA}.alerts_outbox").fetchall()
    return {str(alert_id): int(row_id) for alert_id, row_id in rows}


def age(conn: psycopg.Connection[Any], alert_id: str, days: float) -> None:
    conn.execute(
        f"UPDATE {SCHEMA}.alerts_outbox SET created_at = now() - make_interval(days => %s) "
        "WHERE alert_id = %s",
        (days, alert_id),
    )


def route(conn: psycopg.Connection[Any], alert_id: str, how: str) -> None:
    """What the cases projection writes once the case opener routed the alert."""
    alert, account, case = UUID(alert_id), uuid4(), uuid4()
    if how == "opened":
        conn.execute(
            f"INSERT INTO {SCHEMA}.cases (case_id, alert_id, account_id, rule, severity, "
            "status, explanation, version, opened_at, updated_at, notification_id) "
            "VALUES (%s, %s, %s, 'velocity', 'medium', 'open', 'test', 1, now(), now(), 1)",
            (case, alert, account),
        )
    elif how == "joined":
        conn.execute(
            f"INSERT INTO {SCHEMA}.case_history (case_id, version, event_type, status, "
            "actor_subject, actor_role, details, at, notification_id) "
            "VALUES (%s, 2, 'CaseAlertJoined', 'open', 'system:rules', 'system', %s, now(), 2)",
            (case, Jsonb({"alert_id": alert_id})),
        )
    elif how == "suppressed":
        conn.execute(
            f"INSERT INTO {SCHEMA}.suppressed_alerts "
            "(alert_id, suppression_id, account_id, at, notification_id) "
            "VALUES (%s, %s, %s, now(), 3)",
            (alert, uuid4(), account),
        )
    else:
        raise AssertionError(how)


def test_only_published_routed_alerts_past_the_retention_are_trimmed(
    settings_factory: Any, broker: EmbeddedBroker
) -> None:
    settings = outbox_settings(settings_factory, broker.bootstrap, partitions=1)
    alerts = sorted(add_alerts(settings, 8))
    with psycopg.connect(settings.resolved_database_url(), autocommit=True) as conn:
        ids = outbox_ids(conn)
        alerts.sort(key=ids.__getitem__)  # in outbox order
        opened, joined, suppressed, unrouted, recent, also_opened, also_unrouted, unpublished = (
            alerts
        )
        for alert in alerts:
            if alert != recent:
                age(conn, alert, days=8)
        for alert, how in [
            (opened, "opened"),
            (joined, "joined"),
            (suppressed, "suppressed"),
            (recent, "opened"),
            (also_opened, "opened"),
            (unpublished, "opened"),
        ]:
            route(conn, alert, how)
        position = ids[alerts[-2]]  # the relay has published all but the last

    async def trim() -> tuple[int, int]:
        async with await psycopg.AsyncConnection.connect(
            settings.resolved_database_url(), autocommit=True
        ) as conn:
            first = await trim_outbox(conn, position, WEEK_S)
            return first, await trim_outbox(conn, position, WEEK_S)

    assert asyncio.run(trim()) == (4, 0)
    with psycopg.connect(settings.resolved_database_url(), autocommit=True) as conn:
        kept = set(outbox_ids(conn))
    assert kept == {unrouted, recent, also_unrouted, unpublished}


def test_the_relay_trims_and_a_lost_log_gets_what_stayed(
    settings_factory: Any,
    restartable_broker: Callable[[], EmbeddedBroker],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(outbox, "TRIM_EVERY_S", 0.2)
    first = restartable_broker()
    settings: Settings = outbox_settings(settings_factory, first.bootstrap, partitions=3)
    settings = settings.model_copy(update={"outbox_retention_h": 1 / 3600})  # a second
    alerts = add_alerts(settings, 12)
    routed = set(sorted(alerts)[:5])
    relay = AlertsOutboxRelay(settings)
    with (
        psycopg.connect(settings.resolved_database_url(), autocommit=True) as conn,
        Running(relay.run_until),
    ):
        wait_until(published(relay, settings), "the outbox relay published every alert")
        for alert in routed:
            route(conn, alert, "opened")
        wait_until(
            lambda: set(outbox_ids(conn)) == alerts - routed,
            "the relay trimmed the routed alerts a second old",
        )
        sent, epoch = relay.published, relay.state.epoch
        first.stop()
        time.sleep(0.5)
        restartable_broker()  # the same port, nothing in it
        wait_until(
            lambda: relay.state.epoch > epoch and relay.published >= sent + 7,
            "the outbox relay published again what the outbox kept",
            timeout_s=45.0,
        )
        # Read while the relay runs: it would publish again had the new log been lost.
        records = consume_alerts(settings, alerts - routed)
    check_records(settings, records, alerts - routed)  # none of the trimmed ones
    assert (relay.published - sent) % 7 == 0, "only what the outbox kept, each time"
