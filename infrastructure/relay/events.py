"""The relay (`vigil relay`): tails the event store's notification log and publishes
every event, in notification-id order, to `vigil.ledger.events`, key = aggregate id.

At least once, never skipping: a batch's position is recorded in PostgreSQL only after
the broker acknowledged every event of it (`acks=all`), so a crash in between publishes
the batch again. Reading `notification_id > position` cannot pass over a gap that fills
later: the recorder's table lock makes commit order equal id order.

The test broker keeps topics in memory only. When the relay sees its topic gone (or
recreated with another partition count) or an acknowledged offset go backwards, it
recreates the topics, starts a new epoch and republishes from the lowest position any
projection still needs. Every message carries `relay_epoch`, so a consumer that sees
it rise on a partition seeks back to the partition's beginning.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import signal
import time
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Final, cast

import orjson
import psycopg
import structlog
from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError
from aiokafka.producer.message_accumulator import BatchBuilder
from aiokafka.structs import RecordMetadata
from eventsourcing.persistence import InterfaceError, Notification, OperationalError
from eventsourcing.postgres import PostgresApplicationRecorder
from eventsourcing.utils import resolve_topic
from psycopg import sql

from application.ledger import Ledger
from domain.chained import ChainedAggregate
from domain.integrity import relay_mac
from infrastructure.audit.checkpoints import Checkpointer, HashFeed, HashSpan
from infrastructure.eventstore.envelopes import stored_envelope
from infrastructure.eventstore.ledger import open_ledger
from infrastructure.health import start_metrics_and_health
from infrastructure.kafka.clients import CachedPartitioner, stop_client
from infrastructure.kafka.topics import EPOCH_HEADER, alerts_topic, ledger_events_topic
from infrastructure.limits import PRODUCER_REQUEST_BYTES_MAX
from infrastructure.postgres.connect import connect_async
from infrastructure.relay import metrics
from infrastructure.relay.broker import RelayBroker, TopicsNotReady
from infrastructure.relay.outbox import AlertsOutboxRelay
from infrastructure.relay.state import RelayState, RelayStore, Undecodable
from infrastructure.runtime import run_async
from infrastructure.settings import Settings

log = structlog.get_logger("vigil.relay")

# What the broker, or the network to it, throws at us: back off and retry the batch.
BROKER_ERRORS: tuple[type[BaseException], ...] = (
    KafkaError,
    TopicsNotReady,
    OSError,
    TimeoutError,
)
# The largest event message (key and value) the relay publishes: a produce request may
# carry PRODUCER_REQUEST_BYTES_MAX, with room left for the record's headers and framing.
# A bigger one (no event the APIs accept comes near) is quarantined, never retried.
MESSAGE_BYTES_MAX: Final = PRODUCER_REQUEST_BYTES_MAX - 16 * 1024
# The event store or the relay's session went away (and with it the relay's lock).
STORE_ERRORS: tuple[type[BaseException], ...] = (psycopg.Error, OperationalError, InterfaceError)


@dataclass(frozen=True)
class RelayLimits:
    """The relay's bounds, from the `VIGIL_RELAY_*` settings (tests override a few)."""

    batch_events_max: int  # read, sent and recorded together
    poll_interval_s: float  # the wait when a NOTIFY was missed
    # The least time between the starts of two reads: woken by a NOTIFY sooner than that
    # after its last read, the relay lets events gather until then. Under load, bigger
    # batches to the broker and the projections for at most this much more lag; an idle
    # relay reads at once.
    gather_s: float
    health_interval_s: float  # how often to check the broker still has our log
    backoff_s_min: float
    backoff_s_max: float  # a broker or store outage is retried at least this often
    lock_retry_s: float  # a second relay polls for the lock this often

    @classmethod
    def from_settings(cls, settings: Settings, **overrides: Any) -> RelayLimits:
        """The settings' bounds, with `overrides` (field name: value) in their place."""
        limits = cls(
            batch_events_max=settings.relay_batch_events_max,
            poll_interval_s=settings.relay_poll_interval_s,
            gather_s=settings.relay_gather_s,
            health_interval_s=settings.relay_health_interval_s,
            backoff_s_min=settings.relay_backoff_s_min,
            backoff_s_max=settings.relay_backoff_s_max,
            lock_retry_s=settings.relay_lock_retry_s,
        )
        return replace(limits, **overrides)


@dataclass(frozen=True)
class Outgoing:
    """One event ready for the producer."""

    notification_id: int
    key: bytes
    value: bytes
    event_type: bytes
    correlation_id: bytes
    event_hash: str


@dataclass(frozen=True)
class ReadBatch:
    events: list[Outgoing]
    head: int  # the store's highest notification id when the batch was read
    read_at: float  # time.monotonic()
    # Stored events that could not be decoded: quarantined, never published.
    undecodable: list[Undecodable] = field(default_factory=list)

    @property
    def last_id(self) -> int | None:
        """The highest notification id the batch covers, published or set aside."""
        ids = [e.notification_id for e in self.events[-1:]]
        ids += [u.notification_id for u in self.undecodable[-1:]]
        return max(ids) if ids else None


class CannotDecode(Exception):
    """No event of a batch could be decoded: a configuration error, never quarantined."""


class BrokerLostLog(Exception):
    """The broker acknowledged at an offset below one it acknowledged before."""


class Relay:
    """Publishes the ledger's events until `stop` is set. Usable in-process by tests:
    run `run_until(stop)` in a loop of their own; cancelling it is a crash."""

    def __init__(
        self,
        settings: Settings,
        limits: RelayLimits | None = None,
        feed: HashFeed | None = None,
    ) -> None:
        self.settings = settings
        self.limits = limits or RelayLimits.from_settings(settings)
        # The checkpointer of the same process folds the hashes of the events we read.
        self._feed = feed
        self.topic = ledger_events_topic(settings)
        self.state = RelayState(position=0, epoch=0)
        self.batches_published = 0
        self._mac_keys = settings.audit_mac_keys_resolved()
        self._wakeup = asyncio.Event()
        self._last_read_at = -float("inf")
        self._producer: AIOKafkaProducer | None = None
        self._ledger: Ledger | None = None
        self._store: RelayStore | None = None
        self._broker: RelayBroker | None = None
        self._partitioner = CachedPartitioner()

    async def run_until(self, stop: asyncio.Event) -> None:
        self._wakeup = asyncio.Event()  # bound to the running loop, not the constructor's
        self._ledger = await asyncio.to_thread(open_ledger, self.settings)
        tasks = [
            asyncio.create_task(self._listen(stop), name="relay-listen"),
            asyncio.create_task(self._wake_on(stop), name="relay-stop"),
        ]
        try:
            await self._run_sessions(stop)
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            await asyncio.to_thread(self._ledger.close)

    async def _run_sessions(self, stop: asyncio.Event) -> None:
        backoff_s = self.limits.backoff_s_min
        while not stop.is_set():
            try:
                await self._session(stop)
            except STORE_ERRORS as error:
                # The session held our lock: it is gone, so take it again before publishing.
                log.warning("relay_store_failed", error=_describe(error), backoff_s=backoff_s)
                await _sleep_or_stop(stop, backoff_s)
                backoff_s = min(backoff_s * 2, self.limits.backoff_s_max)

    async def _session(self, stop: asyncio.Event) -> None:
        self._broker = RelayBroker(
            self.settings, self.topic, [self.topic, alerts_topic(self.settings)]
        )
        self._store = await RelayStore.connect(self.settings, self.topic)
        try:
            if not await self._store.acquire_lock(stop, self.limits.lock_retry_s):
                return
            await self._store.migrate()
            self.state = await self._store.load()
            self._observe_state()
            log.info(
                "relay_started",
                topic=self.topic,
                position=self.state.position,
                epoch=self.state.epoch,
                partitions=self.settings.topic_partitions,
            )
            await self._publish_until(stop)
        finally:
            await self._close_producer()
            await self._broker.close()
            await self._store.close()

    async def _publish_until(self, stop: asyncio.Event) -> None:
        backoff_s = self.limits.backoff_s_min
        health_due = 0.0  # check the broker before the first send
        while not stop.is_set():
            # Cleared before reading: a NOTIFY that lands during the read wakes the next wait.
            self._wakeup.clear()
            try:
                if time.monotonic() >= health_due:
                    await self._check_broker()
                    health_due = time.monotonic() + self.limits.health_interval_s
                published = await self._publish_next()
            except BROKER_ERRORS as error:
                metrics.SEND_FAILURES.labels(self.topic).inc()
                log.warning(
                    "relay_send_failed",
                    error=_describe(error),
                    position=self.state.position,
                    backoff_s=backoff_s,
                )
                await self._close_producer()
                health_due = 0.0  # the broker may have restarted: check before resending
                await _sleep_or_stop(stop, backoff_s)
                backoff_s = min(backoff_s * 2, self.limits.backoff_s_max)
                continue
            backoff_s = self.limits.backoff_s_min
            if published < self.limits.batch_events_max:
                idle_s = min(self.limits.poll_interval_s, max(0.0, health_due - time.monotonic()))
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wakeup.wait(), timeout=idle_s)
                    gather_s = self._last_read_at + self.limits.gather_s - time.monotonic()
                    if gather_s > 0:
                        await _sleep_or_stop(stop, gather_s)

    # Publishing ------------------------------------------------------------------------

    async def _publish_next(self) -> int:
        """Read, send and record one batch; the number of events published."""
        self._last_read_at = time.monotonic()
        batch = await asyncio.to_thread(self._read_batch, self.state.position)
        acknowledged: dict[int, int] = {}
        if batch.events:
            producer = await self._producer_started()
            try:
                acknowledged = await self._send(producer, batch.events)
            except BrokerLostLog:
                await self._rewind("offsets_went_backwards")
                return self.limits.batch_events_max  # go again at once, from the new position
        if batch.last_id is not None:
            await self._record(batch, acknowledged)
        metrics.LAG_EVENTS.labels(self.topic).set(max(0, batch.head - self.state.position))
        return len(batch.events) + len(batch.undecodable)

    def _read_batch(self, position: int) -> ReadBatch:
        # In a worker thread: the library's recorder is synchronous, and decoding a
        # thousand events should not stall the producer's I/O on the loop.
        assert self._ledger is not None
        read_at = time.monotonic()
        notifications = self._ledger.recorder.select_notifications(
            position, self.limits.batch_events_max, inclusive_of_start=False
        )
        head = self._ledger.recorder.max_notification_id() or 0
        events: list[Outgoing] = []
        undecodable: list[Undecodable] = []
        for notification in notifications:
            try:
                events.append(self._encode(notification))
            except Exception as error:
                # Not this event's reader's fault to stop on: set it aside, loudly.
                undecodable.append(Undecodable.of(notification, error))
        if undecodable and not events and len(undecodable) > 1:
            # Not one event decodes: the relay's settings are wrong (another cipher key),
            # not the events. Quarantining them all would bury the log; stop instead.
            raise CannotDecode(
                f"none of the {len(undecodable)} events from notification id "
                f"{undecodable[0].notification_id} decodes ({undecodable[0].error}); "
                "check that VIGIL_CIPHER_KEY is the one the writers use"
            )
        assert all(a.notification_id < b.notification_id for a, b in itertools.pairwise(events))
        assert not events or events[0].notification_id > position
        if self._feed is not None and events and not undecodable:
            self._offer(position, notifications, events)
        return ReadBatch(events, max(head, position), read_at, undecodable)

    def _offer(
        self, position: int, notifications: Sequence[Notification], events: list[Outgoing]
    ) -> None:
        """Hand the checkpointer the hashes of every event after `position` we just read,
        when it would fold each of them as read from the store: a chained event with its
        hash (one it cannot fold stops it, and it should stop on the store's copy)."""
        assert self._feed is not None
        for notification, event in zip(notifications, events, strict=True):
            if not isinstance(event.event_hash, str) or not issubclass(
                resolve_topic(notification.topic), ChainedAggregate.Event
            ):
                return
        ids = [event.notification_id for event in events]
        self._feed.offer(HashSpan(position, ids, [event.event_hash for event in events]))

    def _encode(self, notification: Notification) -> Outgoing:
        assert self._ledger is not None
        # The envelope names the aggregate type itself and refuses a type it does not
        # know (or bytes it cannot decrypt): such an event is quarantined, not skipped.
        body = stored_envelope(self._ledger, notification.id, notification)
        # Consumers refuse a message without it: the event's place in the log, sealed.
        # Sealed with the key that sealed the event (its mac_kid).
        key = self._mac_keys.get(body["mac_kid"])
        if key is None:
            raise ValueError(f"the MAC key {body['mac_kid']!r} of this event is not configured")
        body["relay_mac"] = relay_mac(key, notification.id, body["hash"])
        outgoing = Outgoing(
            notification_id=notification.id,
            key=str(body["aggregate_id"]).encode(),
            value=orjson.dumps(body),
            event_type=str(body["event_type"]).encode(),
            correlation_id=(body["correlation_id"] or "").encode(),
            event_hash=body["hash"],
        )
        size = len(outgoing.key) + len(outgoing.value)
        if size > MESSAGE_BYTES_MAX:
            # No broker request could carry it: quarantined like an event that does not
            # decode, rather than a batch that fails at every retry and stops the relay.
            raise ValueError(
                f"its message would be {size:,} bytes, over the {MESSAGE_BYTES_MAX:,} a "
                "request to the broker may carry"
            )
        return outgoing

    async def _send(self, producer: AIOKafkaProducer, events: list[Outgoing]) -> dict[int, int]:
        """Send all, each partition's events as record batches of our own making; await
        all; the highest acknowledged offset per partition.

        The partition is the producer's own choice for the key (the same partitioner);
        a partition's batches are queued in order, one after another, so its events keep
        notification order. A batch costs the producer one future and one acknowledgement
        where `send()` costs one of each per event (14 -> 6 µs of CPU per event)."""
        epoch = str(self.state.epoch).encode()
        partitions = sorted(await producer.partitions_for(self.topic))
        by_partition: dict[int, list[Outgoing]] = {}
        for event in events:
            partition = self._partitioner(event.key, partitions, partitions)
            by_partition.setdefault(partition, []).append(event)
        sends = [
            self._send_partition(producer, partition, outgoing, epoch)
            for partition, outgoing in by_partition.items()
        ]
        results = await asyncio.gather(*sends, return_exceptions=True)
        failed = [r for r in results if isinstance(r, BaseException)]
        if failed:
            raise failed[0]
        acknowledged: dict[int, int] = {}
        for partition, offsets in zip(by_partition, results, strict=True):
            first, last = cast(tuple[int, int], offsets)
            if first <= self.state.offsets.get(partition, -1):
                raise BrokerLostLog(f"partition {partition} at {first}")
            acknowledged[partition] = last
        return acknowledged

    async def _send_partition(
        self, producer: AIOKafkaProducer, partition: int, events: list[Outgoing], epoch: bytes
    ) -> tuple[int, int]:
        """One partition's events, in order, in as many batches as they fill; the offsets
        the broker gave the first and the last."""
        sent: list[tuple[asyncio.Future[RecordMetadata], int]] = []
        batch, count = producer.create_batch(), 0
        try:
            for event in events:
                headers = [
                    ("notification_id", str(event.notification_id).encode()),
                    ("event_type", event.event_type),
                    ("correlation_id", event.correlation_id),
                    (EPOCH_HEADER, epoch),
                ]
                appended = batch.append(
                    timestamp=None, key=event.key, value=event.value, headers=headers
                )
                if appended is None:  # full: send it, start the next (a first record fits)
                    sent.append((await self._send_batch(producer, batch, partition), count))
                    batch, count = producer.create_batch(), 0
                    appended = batch.append(
                        timestamp=None, key=event.key, value=event.value, headers=headers
                    )
                    assert appended is not None, "an empty batch takes any record"
                count += 1
            sent.append((await self._send_batch(producer, batch, partition), count))
        except BROKER_ERRORS:
            # Settle what was already handed over, so no future is left unretrieved.
            await asyncio.gather(*(future for future, _ in sent), return_exceptions=True)
            raise
        results = await asyncio.gather(*(future for future, _ in sent), return_exceptions=True)
        failed = [r for r in results if isinstance(r, BaseException)]
        if failed:
            raise failed[0]
        acknowledged = cast(list[RecordMetadata], results)
        return acknowledged[0].offset, acknowledged[-1].offset + sent[-1][1] - 1

    async def _send_batch(
        self, producer: AIOKafkaProducer, batch: BatchBuilder, partition: int
    ) -> asyncio.Future[RecordMetadata]:
        future = await producer.send_batch(batch, self.topic, partition=partition)
        return cast(asyncio.Future[RecordMetadata], future)

    async def _record(self, batch: ReadBatch, acknowledged: dict[int, int]) -> None:
        assert self._store is not None
        position = batch.last_id
        assert position is not None
        assert position > self.state.position
        state = RelayState(position, self.state.epoch, {**self.state.offsets, **acknowledged})
        await self._store.record(state, acknowledged, batch.undecodable)
        self.state = state
        self.batches_published += 1
        metrics.EVENTS_PUBLISHED.labels(self.topic).inc(len(batch.events))
        metrics.PUBLISH_LATENCY_SECONDS.labels(self.topic).observe(time.monotonic() - batch.read_at)
        self._observe_state()
        log.debug("relay_published", count=len(batch.events), position=position)

    async def _producer_started(self) -> AIOKafkaProducer:
        if self._producer is None:
            assert self._broker is not None
            producer = self._broker.new_producer()
            try:
                await producer.start()
            except BaseException:
                await stop_client(producer)
                raise
            self._producer = producer
        return self._producer

    async def _close_producer(self) -> None:
        producer, self._producer = self._producer, None
        if producer is not None:
            await stop_client(producer)

    # The broker's log ------------------------------------------------------------------

    async def _check_broker(self) -> None:
        assert self._broker is not None
        # A lost log shows as a missing (or wrongly sized) topic here, or as a send
        # acknowledged at an offset we already had (`_send`). Not as the end offsets a
        # probe reads: tansu reports the start of a partition's last batch there, which
        # looked like a lost log after every batch and rewound the relay every few seconds.
        # Whoever (re)created the topic (the alerts relay makes ours too), a log that no
        # longer holds what it acknowledged is lost: the probe reads each partition's end.
        recreated = await self._broker.ensure_topics()
        if recreated and self.state.position > 0:
            await self._rewind("topic_recreated")
        elif await self._broker.log_lost(self.topic, self.state.offsets):
            await self._rewind("log_end_before_acknowledged")

    async def _rewind(self, reason: str) -> None:
        """New epoch, from the lowest position a projection still needs."""
        assert self._broker is not None
        assert self._store is not None
        # A new producer: the old one's metadata (partition count) may be stale.
        await self._close_producer()
        await self._broker.ensure_topics()
        needed = await self._store.projections_position_min()
        # Never past our own position: events above it were never acknowledged.
        target = min(self.state.position, needed if needed is not None else 0)
        epoch = self.state.epoch + 1
        await self._store.rewind(target, epoch)
        log.warning(
            "relay_rewound",
            reason=reason,
            from_position=self.state.position,
            to_position=target,
            epoch=epoch,
        )
        self.state = RelayState(position=target, epoch=epoch)
        metrics.REWINDS.labels(self.topic).inc()
        self._observe_state()

    def _observe_state(self) -> None:
        metrics.POSITION.labels(self.topic).set(self.state.position)
        metrics.EPOCH.labels(self.topic).set(self.state.epoch)

    # Waking up -------------------------------------------------------------------------

    async def _listen(self, stop: asyncio.Event) -> None:
        """Set the wake-up on every NOTIFY of the events table; reconnect on failure."""
        assert self._ledger is not None
        recorder = cast(PostgresApplicationRecorder, self._ledger.recorder)
        listen = sql.SQL("LISTEN {}").format(sql.Identifier(recorder.channel_name))
        backoff_s = self.limits.backoff_s_min
        while not stop.is_set():
            try:
                async with await connect_async(
                    self.settings, "relay-listen", autocommit=True
                ) as conn:
                    await conn.execute(listen)
                    self._wakeup.set()  # anything committed while we were not listening
                    backoff_s = self.limits.backoff_s_min
                    async for _ in conn.notifies():
                        self._wakeup.set()
            except psycopg.Error as error:
                # The fallback poll covers the gap; only latency suffers meanwhile.
                log.warning("relay_listen_failed", error=_describe(error), backoff_s=backoff_s)
                await _sleep_or_stop(stop, backoff_s)
                backoff_s = min(backoff_s * 2, self.limits.backoff_s_max)

    async def _wake_on(self, stop: asyncio.Event) -> None:
        await stop.wait()
        self._wakeup.set()


async def _sleep_or_stop(stop: asyncio.Event, seconds: float) -> None:
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), timeout=seconds)


def _describe(error: BaseException) -> str:
    return f"{type(error).__name__}: {error}"


def run_relay(settings: Settings, metrics_port: int = 0) -> int:
    """`vigil relay`: publish until SIGINT or SIGTERM (exit 0), or a fatal error (exit 1).
    Logging is the caller's to configure. `metrics_port` 0 serves no /metrics."""
    server = None
    if metrics_port:
        server, _ = start_metrics_and_health(settings, metrics_port, "relay")
    try:
        return run_async(_serve(settings))
    finally:
        if server is not None:
            server.shutdown()


async def _serve(settings: Settings) -> int:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    feed = HashFeed()
    try:
        await asyncio.gather(
            Relay(settings, feed=feed).run_until(stop),
            AlertsOutboxRelay(settings).run_until(stop),
            Checkpointer(settings, feed=feed).run_until(stop),
        )
    except Exception:
        log.exception("relay_crashed")
        return 1
    log.info("relay_stopped")
    return 0
