"""The alerts outbox relay against a real tansu broker and PostgreSQL: every alert in the
outbox reaches `vigil.alerts` again, sealed as it was first, in a new epoch, after the log
was lost: the broker restarted empty, or the topic was recreated with another partition
count (an operator changing `VIGIL_TOPIC_PARTITIONS`, and the ledger relay of the restarted
process recreating both topics). Alerts the case opener had not yet consumed are not lost
with the old log."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any
from uuid import uuid4

import orjson
import psycopg
import pytest
from aiokafka import ConsumerRecord
from psycopg.types.json import Jsonb

from infrastructure.kafka.authenticity import check_alert_message
from infrastructure.kafka.topics import alerts_topic, ledger_events_topic
from infrastructure.ops.embedded import EmbeddedBroker
from infrastructure.readmodels.schema import SCHEMA, ensure_read_models
from infrastructure.relay.broker import RelayBroker
from infrastructure.relay.outbox import AlertsOutboxRelay
from infrastructure.settings import Settings
from tests.integration.support import Running
from tests.integration.test_relay import consume_until, header, partition_count, wait_until

pytestmark = pytest.mark.integration

ALERTS = 24  # over many accounts: every partition gets some


def outbox_settings(settings_factory: Any, bootstrap: str, partitions: int) -> Settings:
    settings: Settings = settings_factory(
        kafka_bootstrap=bootstrap,
        topic_prefix=f"t{uuid4().hex[:8]}.",
        topic_partitions=partitions,
        relay_health_interval_s=0.5,
        outbox_poll_interval_s=0.2,
    )
    with psycopg.connect(settings.resolved_database_url(), autocommit=True) as conn:
        ensure_read_models(conn)
    return settings


def add_alerts(settings: Settings, count: int) -> set[str]:
    """Alerts in the outbox, as the alerts projection writes them."""
    ids = [uuid4() for _ in range(count)]
    with psycopg.connect(settings.resolved_database_url(), autocommit=True) as conn:
        for alert_id in ids:
            account_id = uuid4()
            payload = {"alert_id": str(alert_id), "account_id": str(account_id), "rule": "test"}
            conn.execute(
                f"INSERT INTO {SCHEMA}.alerts_outbox (alert_id, account_id, payload) "
                "VALUES (%s, %s, %s)",
                (alert_id, account_id, Jsonb(payload)),
            )
    return {str(i) for i in ids}


def last_outbox_id(settings: Settings) -> int:
    with psycopg.connect(settings.resolved_database_url()) as conn:
        row = conn.execute(f"SELECT max(id) FROM {SCHEMA}.alerts_outbox").fetchone()
    assert row is not None
    return int(row[0])


def published(relay: AlertsOutboxRelay, settings: Settings) -> Callable[[], bool]:
    last = last_outbox_id(settings)
    return lambda: relay.state.position == last


def republished(relay: AlertsOutboxRelay, settings: Settings, epoch: int) -> Callable[[], bool]:
    """Every alert published again, in an epoch after `epoch`."""
    done = published(relay, settings)
    return lambda: relay.state.epoch > epoch and done()


def consume_alerts(settings: Settings, expected: set[str]) -> list[ConsumerRecord]:
    """The alerts topic from its beginning, read until every expected alert was seen."""

    def seen_all(records: list[ConsumerRecord]) -> bool:
        return expected <= {header(r, "alert_id") for r in records}

    bootstrap = settings.resolved_kafka_bootstrap()
    return asyncio.run(consume_until(bootstrap, alerts_topic(settings), seen_all))


def check_records(settings: Settings, records: list[ConsumerRecord], expected: set[str]) -> None:
    assert {header(r, "alert_id") for r in records} == expected
    keys = settings.audit_mac_keys_resolved()
    for record in records:
        check_alert_message(orjson.loads(record.value), keys)  # sealed, as first sent


def recreate_topics(settings: Settings) -> None:
    """What the ledger relay of a process started with another partition count does."""
    broker = RelayBroker(
        settings,
        ledger_events_topic(settings),
        [ledger_events_topic(settings), alerts_topic(settings)],
    )

    async def ensure() -> None:
        try:
            await broker.ensure_topics()
        finally:
            await broker.close()

    asyncio.run(ensure())


def test_alerts_are_published_again_once_the_topic_is_recreated_with_other_partitions(
    settings_factory: Any, broker: EmbeddedBroker
) -> None:
    before = outbox_settings(settings_factory, broker.bootstrap, partitions=3)
    expected = add_alerts(before, ALERTS)
    relay = AlertsOutboxRelay(before)
    with Running(relay.run_until):
        wait_until(published(relay, before), "the outbox relay published every alert")
    first_epoch = relay.state.epoch

    # The operator changes the partition count: the restarted relay process recreates the
    # topics, and the alerts the case opener had not consumed are gone from the broker.
    after = before.model_copy(update={"topic_partitions": 6})
    recreate_topics(after)
    assert asyncio.run(partition_count(broker.bootstrap, alerts_topic(after))) == 6
    later = add_alerts(after, 2)  # raised meanwhile
    relay = AlertsOutboxRelay(after)
    with Running(relay.run_until):
        wait_until(
            republished(relay, after, first_epoch),
            "the outbox relay noticed the new topic and published every alert again",
        )
    check_records(after, consume_alerts(after, expected | later), expected | later)


def test_alerts_are_published_again_after_the_broker_restarts_empty(
    settings_factory: Any, restartable_broker: Callable[[], EmbeddedBroker]
) -> None:
    first = restartable_broker()
    settings = outbox_settings(settings_factory, first.bootstrap, partitions=3)
    expected = add_alerts(settings, ALERTS)
    relay = AlertsOutboxRelay(settings)
    with Running(relay.run_until):
        wait_until(published(relay, settings), "the outbox relay published every alert")
        epoch = relay.state.epoch
        first.stop()
        time.sleep(0.5)
        restartable_broker()  # the same port, nothing in it
        later = add_alerts(settings, 2)
        wait_until(
            republished(relay, settings, epoch),
            "the outbox relay noticed the lost log and published every alert again",
            timeout_s=45.0,
        )
    check_records(settings, consume_alerts(settings, expected | later), expected | later)
    assert asyncio.run(partition_count(first.bootstrap, alerts_topic(settings))) == 3
