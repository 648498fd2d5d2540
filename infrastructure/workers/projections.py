"""Projection workers: one Kafka consumer per process reads `vigil.ledger.events`; each
fetched batch is decoded once and handed to every projection of the process. Each
projection applies batches at its own pace, on its own PostgreSQL connection, each batch
in one transaction with its tracking rows (exactly once by notification id). The balances
and alerts set the pace: the next fetch waits for them (and for any projection a whole
fetch behind), never for a slower read model, which applies the batches queued
meanwhile together. Offsets are committed up to the newest batch every projection has
applied.

Kafka offsets are never the dedupe key: committed offsets are only a head start. A
partition whose `relay_epoch` header changes (the broker lost its log and the relay
republished) is sought back to its beginning; tracking makes the replays harmless.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import time
from collections.abc import Mapping, Sequence
from contextlib import AsyncExitStack
from typing import Any

import orjson
import psycopg
import redis.asyncio as aioredis
import structlog
from aiokafka import AIOKafkaConsumer, ConsumerRecord, TopicPartition
from aiokafka.errors import IllegalStateError
from prometheus_client import Counter, Gauge, Histogram

from infrastructure.eventstore import canonical
from infrastructure.eventstore.schema import EVENTS_TABLE
from infrastructure.health import start_metrics_and_health
from infrastructure.kafka.authenticity import Unauthenticated, check_event_message
from infrastructure.kafka.clients import new_consumer, stop_client
from infrastructure.kafka.consumer import EpochGuard, fetch, header, run_with_restarts
from infrastructure.kafka.topics import ledger_events_topic
from infrastructure.logging import describe
from infrastructure.monitoring.alerts import (
    WatchlistSteps,
    apply_alerts_batch,
    complete_event_index,
    register_config,
)
from infrastructure.monitoring.rules_config import config_hash, load_rules
from infrastructure.monitoring.windows import WindowCache
from infrastructure.postgres.connect import SESSION_OPTIONS, connect, connect_async
from infrastructure.postgres.locks import migration_lock_async
from infrastructure.readmodels.balances_cache import cache_entries
from infrastructure.readmodels.refused import RefusedMessage, record_refused
from infrastructure.readmodels.schema import ALL_PROJECTIONS, SCHEMA, ensure_read_models
from infrastructure.readmodels.tracking import BatchResult, apply_batch
from infrastructure.runtime import run_async
from infrastructure.settings import Settings
from infrastructure.workers.lanes import CommitLedger, Lane
from projections.envelope import Envelope

log = structlog.get_logger("vigil.workers")

EVENTS_APPLIED = Counter(
    "vigil_projection_events_applied_total", "Events applied, by projection.", ["projection"]
)
EVENTS_DUPLICATE = Counter(
    "vigil_projection_events_duplicate_total",
    "Events skipped because the projection had them already.",
    ["projection"],
)
APPLY_SECONDS = Histogram(
    "vigil_projection_apply_seconds",
    "Time to apply one fetched batch, by projection.",
    ["projection"],
    buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0),
)
MESSAGES_UNDECODABLE = Counter(
    "vigil_projection_messages_undecodable_total",
    "Messages on the ledger events topic that are not an event envelope (skipped).",
)
POSITION = Gauge("vigil_projection_position", "High-water mark, by projection.", ["projection"])
LAG_EVENTS = Gauge(
    "vigil_projection_lag_events", "Store head minus the projection's mark.", ["projection"]
)


ALERTS = "alerts"
assert ALL_PROJECTIONS[-1] == ALERTS
# The projections that set a workers process's pace: it fetches again once they have
# applied what it fetched last. The others follow at their own pace, a batch or more
# behind when they are slower, and then apply what queued for them together.
REAL_TIME = frozenset({"balances", ALERTS})

OBSERVE_INTERVAL_S = 1.0
SEVERITY_NAMES = ("critical", "high", "medium", "low")
OPEN_CASES = Gauge("vigil_cases_open", "Cases not yet closed, by severity.", ["severity"])
ALERTS_RAISED = Counter(
    "vigil_alerts_raised_total", "Alerts raised, by rule and severity.", ["rule", "severity"]
)
RULE_EVALUATION_SECONDS = Histogram(
    "vigil_rule_evaluation_seconds",
    "Rule evaluation time per event (a scored batch's time over its events).",
    buckets=(0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.05),
)


class AlertsApplier:
    """The alerts projection's configuration (stored, versioned) and its batch apply."""

    def __init__(self, settings: Settings) -> None:
        self.config, self.source = load_rules(settings.rules_config)
        self.version = 0
        self.windows = WindowCache()
        self.watchlist: WatchlistSteps | None = None

    async def prepare(self, conn: psycopg.AsyncConnection[Any]) -> None:
        digest = config_hash(self.config)
        self.version = await register_config(conn, self.config.describe(), digest, self.source)
        log.info("rules_config_loaded", version=self.version, sha256=digest)
        if await complete_event_index(conn):
            self.watchlist = WatchlistSteps()
        else:
            # Still right, only slower: each batch probes the store for its counterparties.
            log.warning(
                "watchlist_by_probe",
                hint="the event index is absent or behind the store: run `vigil audit reindex`",
            )

    async def apply(
        self, conn: psycopg.AsyncConnection[Any], events: list[Envelope]
    ) -> BatchResult:
        assert self.version > 0, "prepare() first"
        started = time.perf_counter()
        result, hits = await apply_alerts_batch(
            conn, events, self.config, self.version, cache=self.windows, watchlist=self.watchlist
        )
        if events:
            per_event_s = (time.perf_counter() - started) / len(events)
            for _ in events:
                RULE_EVALUATION_SECONDS.observe(per_event_s)
        for hit in hits:
            ALERTS_RAISED.labels(hit.rule, hit.severity).inc()
            log.info(
                "alert_raised",
                rule=hit.rule,
                severity=hit.severity,
                account_id=hit.account_id,
                notification_id=hit.notification_id,
            )
        return result


def group_id(settings: Settings, projections: Sequence[str]) -> str:
    """`vigil project NAME` keeps the group of its one projection; a process running
    several has one group for the set, named in the order given. Committed offsets are only
    a head start: a new group (say, another set of projections) reads the topic from
    `earliest` once, and tracking skips what each projection has already."""
    if len(projections) == 1:
        return f"{settings.topic_prefix}vigil.projection.{projections[0]}"
    return f"{settings.topic_prefix}vigil.projections.{'+'.join(projections)}"


async def migrate_read_models(settings: Settings) -> None:
    if not settings.migrate_on_start:
        return  # `vigil migrate` made them, as the owning role
    async with (
        await connect_async(settings, "migrate", autocommit=True) as conn,
        migration_lock_async(conn),
    ):
        await asyncio.to_thread(_ensure_sync, settings)


def _ensure_sync(settings: Settings) -> None:
    with connect(settings, "migrate", autocommit=True) as conn:
        ensure_read_models(conn)


class Projection:
    """One projection of the process: applies each batch on its own connection, in its own
    transaction, and keeps its metrics."""

    def __init__(self, name: str, settings: Settings) -> None:
        assert name in ALL_PROJECTIONS, name
        self.name = name
        self.settings = settings
        # Rules are validated here, at start: a bad file stops the worker at once.
        self.alerts = AlertsApplier(settings) if name == ALERTS else None

    async def prepare(self, conn: psycopg.AsyncConnection[Any]) -> None:
        if self.alerts is not None:
            await self.alerts.prepare(conn)

    async def apply(
        self, conn: psycopg.AsyncConnection[Any], cache: aioredis.Redis, events: list[Envelope]
    ) -> None:
        started = time.perf_counter()
        try:
            if self.alerts is not None:
                result = await self.alerts.apply(conn, events)
            else:
                result = await apply_batch(conn, self.name, events)
        except Exception as error:
            # Every projection of the process restarts with it: say which one failed.
            log.warning("projection_apply_failed", projection=self.name, error=repr(error))
            raise
        APPLY_SECONDS.labels(self.name).observe(time.perf_counter() - started)
        EVENTS_APPLIED.labels(self.name).inc(result.applied)
        EVENTS_DUPLICATE.labels(self.name).inc(result.duplicates)
        POSITION.labels(self.name).set(result.position)
        if log.is_enabled_for(logging.DEBUG):  # thousands of events a second otherwise
            for event in events:
                log.debug(
                    "event_projected",
                    projection=self.name,
                    notification_id=event.notification_id,
                    correlation_id=event.correlation_id,
                    account_id=str(event.aggregate_id),
                )
        if result.cached:  # the balances projection's rows, committed
            await cache_entries(cache, self.settings.redis_key_prefix, [*result.cached.values()])


class ProjectionConsumer:
    """The process's one consumer: fetch a batch, decode it once, have every projection
    apply it, commit offsets, repeat."""

    def __init__(self, settings: Settings, projections: Sequence[str]) -> None:
        assert projections, "at least one projection"
        assert len(set(projections)) == len(projections), projections
        self.settings = settings
        self.projections = [Projection(name, settings) for name in projections]
        self.name = "projection-" + "+".join(projections)
        self.group = group_id(settings, projections)
        self.epochs = EpochGuard(self.name)
        self._observed_until = 0.0
        self.mac_keys = settings.audit_mac_keys_resolved()
        # Each message's hash is recomputed: with orjson's canonical bytes (checked equal to
        # the definition's), 9 µs a message instead of 14.
        canonical.install()

    async def run(self, stop: asyncio.Event) -> None:
        await run_with_restarts(stop, self._consume, self.name)

    async def _consume(self, stop: asyncio.Event) -> None:
        consumer = new_consumer(
            self.settings,
            ledger_events_topic(self.settings),
            self.group,
            f"vigil-{self.name}",
            self.settings.projections_fetch_records_max,
        )
        await consumer.start()
        try:
            async with AsyncExitStack() as stack:
                cache = await stack.enter_async_context(
                    aioredis.Redis.from_url(
                        self.settings.resolved_redis_url(),
                        socket_timeout=self.settings.redis_timeout_s,
                    )
                )
                # One connection for each projection's lane, and one for the fetching.
                conns = [
                    await stack.enter_async_context(await self._connect())
                    for _ in range(len(self.projections) + 1)
                ]
                for projection, conn in zip(self.projections, conns[1:], strict=True):
                    await projection.prepare(conn)
                log.info(
                    "projection_worker_started",
                    projections=[projection.name for projection in self.projections],
                    group=self.group,
                )
                await self._fetch_and_apply(stop, consumer, conns, cache)
        finally:
            await stop_client(consumer)

    async def _connect(self) -> psycopg.AsyncConnection[Any]:
        return await connect_async(
            self.settings, "projections", autocommit=True, options=SESSION_OPTIONS
        )

    async def _fetch_and_apply(
        self,
        stop: asyncio.Event,
        consumer: AIOKafkaConsumer,
        conns: list[psycopg.AsyncConnection[Any]],
        cache: aioredis.Redis,
    ) -> None:
        """Fetch and hand each batch to every projection's lane; commit offsets up to the
        newest batch every lane has applied. The first failure anywhere cancels the rest
        and is raised as itself, so the consume loop restarts; what the lanes committed
        comes again and is skipped by tracking."""
        control, lane_conns = conns[0], conns[1:]
        progress = asyncio.Event()
        events_max = self.settings.projections_fetch_records_max
        follow_s = self.settings.read_models_apply_interval_s
        lanes = [
            Lane(
                projection,
                conn,
                cache,
                events_max,
                progress,
                interval_s=0.0 if projection.name in REAL_TIME else follow_s,
            )
            for projection, conn in zip(self.projections, lane_conns, strict=True)
        ]
        ledger = CommitLedger()
        try:
            async with asyncio.TaskGroup() as group:
                for lane in lanes:
                    group.create_task(lane.run(), name=lane.projection.name)
                await self._feed(stop, consumer, control, lanes, ledger)
                for lane in lanes:
                    lane.close()
        except ExceptionGroup as failed:
            raise failed.exceptions[0] from None
        await _commit_offsets(consumer, ledger.ready(min(lane.done for lane in lanes)))

    async def _feed(
        self,
        stop: asyncio.Event,
        consumer: AIOKafkaConsumer,
        control: psycopg.AsyncConnection[Any],
        lanes: list[Lane],
        ledger: CommitLedger,
    ) -> None:
        room = self.settings.projections_fetch_records_max
        progress = lanes[0].progress
        pace = [lane for lane in lanes if lane.projection.name in REAL_TIME] or lanes
        while not stop.is_set():
            await _commit_offsets(consumer, ledger.ready(min(lane.done for lane in lanes)))
            # The next fetch waits for the real-time projections to apply the last one,
            # so each of their batches holds what came meanwhile (as many transactions as
            # they need, not one per fetch); and for any lane a whole fetch behind.
            if any(lane.done < ledger.last for lane in pace) or any(
                lane.pending_events >= room for lane in lanes
            ):
                progress.clear()
                await progress.wait()
                continue
            records = await fetch(
                consumer, self.epochs, self.settings.projections_fetch_records_max
            )
            if records:
                events, refused = _authentic(records, self.mac_keys)
                # Before the batch: a refusal is on record even if applying then fails.
                await record_refused(control, self.name, refused)
                # Its offsets are committed only once every lane has applied it: a
                # failure reads it again.
                sequence = ledger.add(await _consumed_positions(consumer))
                for lane in lanes:
                    lane.put(sequence, events)
            await self._observe_lag(control)

    async def _observe_lag(self, conn: psycopg.AsyncConnection[Any]) -> None:
        # Gauges, not a hot path: at most once per interval, however fast batches come.
        if time.monotonic() < self._observed_until:
            return
        self._observed_until = time.monotonic() + OBSERVE_INTERVAL_S
        names = [projection.name for projection in self.projections]
        if "cases" in names:
            await _observe_open_cases(conn)
        cursor = await conn.execute(
            "SELECT name, coalesce(p.position, 0), "
            f"(SELECT coalesce(max(notification_id), 0) FROM {EVENTS_TABLE}) "
            "FROM unnest(%s::text[]) AS name "
            f"LEFT JOIN {SCHEMA}.projection_positions p ON p.projection = name",
            (names,),
        )
        for name, position, head in await cursor.fetchall():
            LAG_EVENTS.labels(name).set(max(0, int(head) - int(position)))


def _authentic(
    records: Sequence[ConsumerRecord], keys: Mapping[str, bytes]
) -> tuple[list[Envelope], list[RefusedMessage]]:
    """The batch's envelopes that Vigil published, and the messages it refuses."""
    events: list[Envelope] = []
    refused: list[RefusedMessage] = []
    for record in records:
        decoded = _decoded(record, keys)
        if isinstance(decoded, Envelope):
            events.append(decoded)
        elif decoded is not None:
            refused.append(decoded)
    return events, refused


def _decoded(record: ConsumerRecord, keys: Mapping[str, bytes]) -> Envelope | RefusedMessage | None:
    """The record's envelope, if Vigil published it (its hash, `mac` and `relay_mac`
    hold); a refusal if it is an envelope that does not authenticate; None for a message
    that is not one (the relay publishes only what it decoded from the store, so this is
    a corrupt or foreign message): it is counted and logged, never applied, and never
    stops the batch."""
    try:
        value = orjson.loads(record.value)
        envelope = Envelope.from_json(value)
    except Exception as error:
        MESSAGES_UNDECODABLE.inc()
        log.error(
            "projection_message_undecodable",
            partition=record.partition,
            offset=record.offset,
            notification_id=header(record, "notification_id"),
            error=describe(error),
        )
        return None
    try:
        check_event_message(value, keys)
    except (ValueError, TypeError) as error:
        return RefusedMessage(
            topic=record.topic,
            partition=record.partition,
            offset=record.offset,
            notification_id=envelope.notification_id,
            reason=str(error) if isinstance(error, Unauthenticated) else describe(error),
        )
    return envelope


async def _observe_open_cases(conn: psycopg.AsyncConnection[Any]) -> None:
    cursor = await conn.execute(
        f"SELECT severity, count(*) FROM {SCHEMA}.cases WHERE status <> 'closed' GROUP BY severity"
    )
    counts = {str(severity): int(n) for severity, n in await cursor.fetchall()}
    for severity in SEVERITY_NAMES:
        OPEN_CASES.labels(severity).set(counts.get(severity, 0))


async def _consumed_positions(consumer: AIOKafkaConsumer) -> dict[TopicPartition, int]:
    """Where the consumer stands in each partition it holds (what a plain `commit()`
    would commit now)."""
    positions = {}
    for partition in consumer.assignment():
        try:
            positions[partition] = await consumer.position(partition)
        except IllegalStateError:  # no longer ours: a rebalance came in between
            continue
    return positions


async def _commit_offsets(
    consumer: AIOKafkaConsumer, positions: dict[TopicPartition, int] | None
) -> None:
    if not positions:
        return
    assigned = consumer.assignment()
    # A partition a rebalance took away is another consumer's to commit now.
    offsets = {partition: at for partition, at in positions.items() if partition in assigned}
    if not offsets:
        return
    try:
        await consumer.commit(offsets)
    except Exception as error:
        log.info("projection_offset_commit_failed", error=type(error).__name__)


async def run_projections(
    settings: Settings, projections: Sequence[str], stop: asyncio.Event
) -> None:
    await migrate_read_models(settings)
    await ProjectionConsumer(settings, projections).run(stop)


def serve_workers(settings: Settings, projections: Sequence[str], metrics_port: int) -> int:
    """`vigil workers` / `vigil project NAME`: run until SIGINT or SIGTERM."""
    if metrics_port:
        start_metrics_and_health(settings, metrics_port, "workers")
    return run_async(_serve(settings, projections))


async def _serve(settings: Settings, projections: Sequence[str]) -> int:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    log.info("projection_workers_starting", projections=list(projections))
    await run_projections(settings, projections, stop)
    log.info("projection_workers_stopped")
    return 0
