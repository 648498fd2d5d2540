"""Stopping Kafka clients when the broker has gone away, against a real broker."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any
from uuid import uuid4

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.errors import KafkaError

from infrastructure.kafka.clients import stop_client
from infrastructure.ops.embedded import EmbeddedBroker
from infrastructure.relay.broker import RelayBroker

# Long enough for a fetch to fail and its task to be sleeping off the failure.
OUTAGE_S = 0.5


async def _fetching_consumer(bootstrap: str, topic: str) -> AIOKafkaConsumer:
    """A consumer of no group, assigned to a partition holding one record, fetching."""
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, enable_idempotence=False)
    await producer.start()
    try:
        await producer.send_and_wait(topic, b"x", partition=0)
    finally:
        await producer.stop()
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap, group_id=None, auto_offset_reset="none"
    )
    await consumer.start()
    partition = TopicPartition(topic, 0)
    consumer.assign([partition])
    consumer.seek(partition, 0)
    assert await consumer.getmany(partition, timeout_ms=5_000)
    return consumer


def test_a_consumer_whose_broker_went_away_stops_without_a_stray_cancellation(
    restartable_broker: Callable[[], EmbeddedBroker],
) -> None:
    """aiokafka's own `stop()` raises `CancelledError` here: it cancels the fetch task that
    is sleeping off its failed fetch and awaits it. That is no cancellation of ours, and
    it ended the relay process; `stop_client` ends the consumer and returns."""
    broker = restartable_broker()

    async def stop_after_outage(stop: Callable[[AIOKafkaConsumer], Any]) -> None:
        consumer = await _fetching_consumer(broker.bootstrap, f"stop-{uuid4().hex[:8]}")
        broker.stop()
        await asyncio.sleep(OUTAGE_S)
        await stop(consumer)
        await asyncio.sleep(OUTAGE_S)  # cancelled tasks wind down
        left = [task for task in asyncio.all_tasks() if task is not asyncio.current_task()]
        assert left == []  # no fetch task left retrying a broker that is gone

    asyncio.run(stop_after_outage(stop_client))
    broker = restartable_broker()
    # What the library does on its own, so that this test shows the case it guards.
    with pytest.raises(asyncio.CancelledError):
        asyncio.run(stop_after_outage(AIOKafkaConsumer.stop))


def test_a_cancellation_of_the_caller_still_goes_through(broker: EmbeddedBroker) -> None:
    async def cancelled_while_stopping() -> None:
        consumer = await _fetching_consumer(broker.bootstrap, f"stop-{uuid4().hex[:8]}")
        task = asyncio.current_task()
        assert task is not None
        # Requested once stop_client has begun: at its first wait, which aiokafka's stop()
        # spends on its fetch task under a `suppress(CancelledError)` of its own.
        asyncio.get_running_loop().call_soon(task.cancel)
        await stop_client(consumer)

    with pytest.raises(asyncio.CancelledError):
        asyncio.run(cancelled_while_stopping())


def test_the_relay_survives_an_outage_that_fails_its_topic_check_mid_probe(
    settings_factory: Any, restartable_broker: Callable[[], EmbeddedBroker]
) -> None:
    """The relay's path on a broker restart: its log-end probe is assigned and fetching,
    the broker goes away, the next topic check cannot connect and closes the probe. It must
    raise the broker's error (the relay backs off and retries), not a `CancelledError`
    (which ended the relay process)."""
    broker = restartable_broker()
    settings = settings_factory(
        kafka_bootstrap=broker.bootstrap, topic_prefix=f"t{uuid4().hex[:8]}."
    )
    topic = f"probe-{uuid4().hex[:8]}"

    async def outage() -> None:
        relay_broker = RelayBroker(settings, topic, [topic])
        producer = relay_broker.new_producer()
        await producer.start()
        try:
            sent = await producer.send_and_wait(topic, b"x", key=b"k", partition=0)
        finally:
            await producer.stop()
        try:
            assert not await relay_broker.log_lost(topic, {0: sent.offset})
            broker.stop()
            await asyncio.sleep(OUTAGE_S)
            with pytest.raises(KafkaError):
                await relay_broker.ensure_topics()
        finally:
            await relay_broker.close()

    asyncio.run(outage())
