"""Vigil's consumer loop (the workers' and the case opener's) against a real tansu broker
that restarts empty: the new log's records reach the consumer whatever position it held
in the old one.

The test broker answers a fetch from beyond a partition's end with no records and no
error, where Kafka would say the offset is out of range. A consumer that read 40 records
before the restart, and kept its position (its group membership outlived the restart, or
it re-joined with offsets committed meanwhile), would wait at offset 40 of the new log,
seeing nothing, until the new log grew past it. The consumer here has no group, so
nothing but the loop's own check can bring it back."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any
from uuid import uuid4

import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition

from infrastructure.kafka.clients import new_producer
from infrastructure.kafka.consumer import EpochGuard, fetch
from infrastructure.kafka.topics import EPOCH_HEADER
from infrastructure.ops.embedded import EmbeddedBroker
from infrastructure.settings import Settings

pytestmark = pytest.mark.integration

OLD_RECORDS = 40
NEW_RECORDS = 5
WAIT_S = 30.0  # the consumer waits LOG_END_BEHIND_S (10 s) before it reads again


async def produce(settings: Settings, topic: str, values: list[bytes], epoch: int) -> None:
    """To partition 0; the topic is created by the first request naming it."""
    producer = new_producer(settings, "test-producer")
    await producer.start()
    try:
        headers = [(EPOCH_HEADER, str(epoch).encode())]
        for value in values:
            await producer.send_and_wait(topic, value, key=b"k", partition=0, headers=headers)
    finally:
        await producer.stop()


async def read(consumer: AIOKafkaConsumer, guard: EpochGuard, wanted: set[bytes]) -> set[bytes]:
    """What `fetch` brings until `wanted` all came or WAIT_S passed."""
    seen: set[bytes] = set()
    deadline = time.monotonic() + WAIT_S
    while not wanted <= seen and time.monotonic() < deadline:
        records = await fetch(consumer, guard, 100)
        seen.update(record.value for record in records if record.value is not None)
    return seen


async def scenario(
    settings: Settings, restart: Callable[[], None], new_epoch: int
) -> tuple[set[bytes], int]:
    """The new log's values the consumer read, and its position at the end."""
    topic = f"t{uuid4().hex[:8]}.events"
    old = [b"old-%d" % i for i in range(OLD_RECORDS)]
    new = [b"new-%d" % i for i in range(NEW_RECORDS)]
    await produce(settings, topic, old, epoch=1)
    consumer = AIOKafkaConsumer(
        bootstrap_servers=settings.resolved_kafka_bootstrap(),
        group_id=None,
        auto_offset_reset="earliest",  # as the workers' consumers
        enable_auto_commit=False,
    )
    await consumer.start()
    partition = TopicPartition(topic, 0)
    try:
        consumer.assign([partition])
        guard = EpochGuard("test")
        assert await read(consumer, guard, set(old)) == set(old)
        assert await consumer.position(partition) == OLD_RECORDS
        restart()  # blocking the loop, from the main thread (the broker outlives no thread)
        await produce(settings, topic, new, epoch=new_epoch)  # the relay's republication
        return await read(consumer, guard, set(new)), await consumer.position(partition)
    finally:
        await consumer.stop()


@pytest.mark.parametrize("new_epoch", [1, 2], ids=["same-epoch", "epoch-up"])
def test_a_consumer_ahead_of_a_new_empty_log_reads_it_from_its_beginning(
    settings_factory: Any, restartable_broker: Callable[[], EmbeddedBroker], new_epoch: int
) -> None:
    first = restartable_broker()
    settings: Settings = settings_factory(kafka_bootstrap=first.bootstrap)

    def restart() -> None:
        first.stop()
        restartable_broker()  # the same port, nothing in it

    seen, position = asyncio.run(scenario(settings, restart, new_epoch))
    assert seen == {b"new-%d" % i for i in range(NEW_RECORDS)}
    assert position == NEW_RECORDS
