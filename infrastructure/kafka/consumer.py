"""What every Kafka consumer of Vigil shares: the same explicit client options, a restart
loop with bounded backoff, and the lost-log rules (by design: a partition whose
`relay_epoch` goes up was republished after the broker lost its log, so it is read again
from its beginning; so is one whose log has stayed ended before our position, which only
a lost log does; consumers dedupe, so the replays are harmless)."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable, Iterable

import structlog
from aiokafka import AIOKafkaConsumer, ConsumerRecord, TopicPartition
from aiokafka.errors import IllegalStateError
from prometheus_client import Gauge

from infrastructure.kafka.clients import FETCH_TIMEOUT_MS
from infrastructure.kafka.topics import EPOCH_HEADER
from infrastructure.settings import ConfigurationError

log = structlog.get_logger("vigil.consumer")

# 0 until the process's consumer has joined its group (a few seconds after it starts):
# `vigil up` calls the workers and the case opener ready only once it is above 0.
PARTITIONS_ASSIGNED_GAUGE = "vigil_consumer_partitions_assigned"
PARTITIONS_ASSIGNED = Gauge(
    PARTITIONS_ASSIGNED_GAUGE, "Partitions of its topic this process's consumer holds."
)
RETRY_BACKOFF_S_MIN = 0.1
RETRY_BACKOFF_S_MAX = 5.0
# How often the partitions a fetch brought nothing for are checked for a log that ends
# before our position (a lost log is rare; a second's delay in noticing it costs nothing).
LOG_END_CHECK_INTERVAL_S = 1.0
# How long a partition's log must have ended before our position before we read it again
# from its beginning. A lost log stays behind; a Kafka partition's new leader may report a
# high watermark below what its predecessor served for a moment, and reading a whole
# partition again for that would cost far more than these seconds of waiting.
LOG_END_BEHIND_S = 10.0


async def run_with_restarts(
    stop: asyncio.Event, consume: Callable[[asyncio.Event], Awaitable[None]], name: str
) -> None:
    """`consume(stop)` until `stop` is set, starting it over after any failure (the broker
    or the database went away; what was not committed is read again)."""
    backoff_s = RETRY_BACKOFF_S_MIN
    while not stop.is_set():
        try:
            await consume(stop)
        except ConfigurationError:
            raise  # wrong settings do not fix themselves
        except Exception as error:
            log.warning(
                "consumer_restarting", consumer=name, error=f"{type(error).__name__}: {error}"
            )
            await sleep_or_stop(stop, backoff_s)
            backoff_s = min(backoff_s * 2, RETRY_BACKOFF_S_MAX)
        else:
            backoff_s = RETRY_BACKOFF_S_MIN


async def sleep_or_stop(stop: asyncio.Event, seconds: float) -> None:
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), timeout=seconds)


async def fetch(
    consumer: AIOKafkaConsumer, epochs: EpochGuard, records_max: int
) -> list[ConsumerRecord]:
    """One round of fetching: the records that pass the epoch rule, in partition order
    (and, at most once a second, the lost-log check of the partitions that brought none)."""
    fetched = await consumer.getmany(timeout_ms=FETCH_TIMEOUT_MS, max_records=records_max)
    assigned = consumer.assignment()
    PARTITIONS_ASSIGNED.set(len(assigned))
    await epochs.rewind_past_log_end(consumer, assigned - fetched.keys())
    return await epochs.records(consumer, fetched)


class EpochGuard:
    """Follows each partition's relay epoch and log end; seeks a partition back to its
    beginning when the epoch goes up or the log has ended before our position for
    LOG_END_BEHIND_S."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.epochs: dict[TopicPartition, int] = {}
        self._log_ends_checked_at = -float("inf")
        self._behind_since: dict[TopicPartition, float] = {}  # log end before our position

    async def rewind_past_log_end(
        self, consumer: AIOKafkaConsumer, idle: Iterable[TopicPartition]
    ) -> None:
        """Seek back the `idle` partitions whose log has ended before our position for
        LOG_END_BEHIND_S. A live log does not stay so; one the broker lost and began
        again does, and the test broker then answers a fetch from our old position with
        no records and no error (Kafka would say the offset is out of range and we would
        start over from the earliest), so until the new log grew past our position we
        would wait there, seeing nothing, and the epoch rule would never get to see the
        republished records."""
        now = time.monotonic()
        if now - self._log_ends_checked_at < LOG_END_CHECK_INTERVAL_S:
            return
        self._log_ends_checked_at = now
        behind: dict[TopicPartition, float] = {}
        for partition in idle:
            end = consumer.highwater(partition)  # from the last fetch reply it got
            if end is None:
                continue
            try:
                position = await consumer.position(partition)
            except IllegalStateError:  # no longer ours: a rebalance came in between
                continue
            if end >= position:
                continue
            since = behind[partition] = self._behind_since.get(partition, now)
            if now - since >= LOG_END_BEHIND_S:
                del behind[partition]
                await self._rewind(
                    consumer, partition, "log_end_before_position", log_end=end, position=position
                )
        self._behind_since = behind

    async def _rewind(
        self, consumer: AIOKafkaConsumer, partition: TopicPartition, reason: str, **fields: int
    ) -> None:
        """Read `partition` again from its beginning (consumers dedupe what comes again)."""
        log.warning(
            "consumer_partition_rewound",
            consumer=self.name,
            partition=partition.partition,
            reason=reason,
            **fields,
        )
        await consumer.seek_to_beginning(partition)

    async def records(
        self, consumer: AIOKafkaConsumer, fetched: dict[TopicPartition, list[ConsumerRecord]]
    ) -> list[ConsumerRecord]:
        records: list[ConsumerRecord] = []
        for partition, batch in fetched.items():
            epoch = epoch_of(batch[0]) if batch else None
            if epoch is not None and self.epochs.get(partition, epoch) < epoch:
                # Our offset means nothing in the republished log: read it again.
                self.epochs[partition] = epoch
                await self._rewind(consumer, partition, "epoch_up", epoch=epoch)
                continue
            for record in batch:
                record_epoch = epoch_of(record)
                if record_epoch is not None:
                    self.epochs[partition] = max(self.epochs.get(partition, 0), record_epoch)
                records.append(record)
        return records


def header(record: ConsumerRecord, name: str) -> str | None:
    for key, value in record.headers or ():
        if key == name and value:
            return bytes(value).decode(errors="replace")
    return None


def epoch_of(record: ConsumerRecord) -> int | None:
    value = header(record, EPOCH_HEADER)
    return None if value is None else int(value)
