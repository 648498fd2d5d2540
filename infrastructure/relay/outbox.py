"""Publishes the alerts outbox (`readmodel.alerts_outbox`, written by the alerts
projection in the same transaction as the alerts) to `vigil.alerts`, key = account id.

Like the ledger relay: `acks=all`, the position (the last outbox id sent) recorded only
after the broker acknowledged, so a crash republishes and never skips; consumers dedupe
by `alert_id` (a case's id is derived from it). If the broker lost its log (offsets went
backwards), the whole outbox is published again. Runs in the `vigil relay` process.

The outbox does not grow for ever: once a minute the relay deletes alerts it has published
that the case opener has routed (the cases read model holds the case they opened or joined,
or the suppression that held them back: the command side recorded it in the event store)
and that are older than `VIGIL_OUTBOX_RETENTION_H` (a week by default, Kafka's own default
retention). So a broker that lost its log is sent every alert not yet routed, whatever its
age, and the routed ones of the last week; an alert the case opener could not route
(quarantined) stays until it is.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import Any, Final

import orjson
import psycopg
import structlog
from aiokafka import AIOKafkaProducer
from aiokafka.structs import RecordMetadata

from infrastructure.kafka.authenticity import seal_alert
from infrastructure.kafka.clients import stop_client
from infrastructure.kafka.topics import EPOCH_HEADER, alerts_topic, ledger_events_topic
from infrastructure.logging import describe
from infrastructure.postgres.connect import connect_async
from infrastructure.postgres.locks import migrating
from infrastructure.readmodels.schema import OUTBOX_CHANNEL, SCHEMA, ensure_read_models
from infrastructure.relay.broker import RelayBroker
from infrastructure.relay.metrics import OUTBOX_TRIMMED
from infrastructure.relay.state import RelayState, RelayStore
from infrastructure.settings import Settings

log = structlog.get_logger("vigil.outbox_relay")

TRIM_EVERY_S: Final = 60.0
# Rows one statement deletes: a backlog is trimmed in short transactions, a statement per
# turn of the publishing loop, so publishing never waits for more than one.
TRIM_ROWS_MAX: Final = 5_000
# Published (at or below the relay's position), past the retention, and routed: a case
# opened by it or joined by it, or a suppression that held it back. The joined test is the
# one `case_history_joined_alert_idx` serves. The rows are found through
# `alerts_outbox_created_idx` (only those past the retention) and deleted by id: as
# `id IN (...)` the planner read the whole outbox (600,000 rows: 107 ms against 20).
TRIM_SQL: Final = f"""
DELETE FROM {SCHEMA}.alerts_outbox WHERE id = ANY(ARRAY(
    SELECT o.id FROM {SCHEMA}.alerts_outbox o
    WHERE o.id <= %(position)s
      AND o.created_at < now() - make_interval(secs => %(retention_s)s)
      AND (
        EXISTS (SELECT 1 FROM {SCHEMA}.cases c WHERE c.alert_id = o.alert_id)
        OR EXISTS (SELECT 1 FROM {SCHEMA}.suppressed_alerts s WHERE s.alert_id = o.alert_id)
        OR EXISTS (
            SELECT 1 FROM {SCHEMA}.case_history h
            WHERE h.event_type = 'CaseAlertJoined' AND h.details->>'alert_id' = o.alert_id::text
        )
      )
    ORDER BY o.created_at
    LIMIT %(limit)s
))
"""


async def trim_outbox(conn: psycopg.AsyncConnection[Any], position: int, retention_s: float) -> int:
    """Delete up to `TRIM_ROWS_MAX` rows the outbox no longer needs (see the module's
    text); how many. One statement: a backlog is trimmed between sends, never instead."""
    cursor = await conn.execute(
        TRIM_SQL, {"position": position, "retention_s": retention_s, "limit": TRIM_ROWS_MAX}
    )
    return cursor.rowcount


class AlertsOutboxRelay:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.topic = alerts_topic(settings)
        self.state = RelayState(position=0, epoch=0)
        self.published = 0
        self._mac_key = settings.audit_mac_key_resolved()
        self._mac_kid = settings.audit_mac_kid

    async def run_until(self, stop: asyncio.Event) -> None:
        backoff_s = self.settings.relay_backoff_s_min
        backoff_s_max = self.settings.relay_backoff_s_max
        while not stop.is_set():
            try:
                await self._session(stop)
                backoff_s = self.settings.relay_backoff_s_min
            except psycopg.errors.UndefinedTable:
                # Production (no DDL at start) before `vigil migrate`: nothing to publish yet.
                log.info("outbox_relay_waiting_for_read_models")
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), timeout=backoff_s_max)
            except Exception as error:  # broker or database away: retry from the record
                log.warning("outbox_relay_failed", error=f"{type(error).__name__}: {error}")
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), timeout=backoff_s)
                backoff_s = min(backoff_s * 2, backoff_s_max)

    async def _session(self, stop: asyncio.Event) -> None:
        store = await RelayStore.connect(self.settings, self.topic)
        broker = RelayBroker(
            self.settings, ledger_events_topic(self.settings),
            [ledger_events_topic(self.settings), self.topic],
        )  # fmt: skip
        producer = broker.new_producer()
        listener = await connect_async(self.settings, "outbox-listen", autocommit=True)
        try:
            if not await store.acquire_lock(stop, retry_s=self.settings.relay_lock_retry_s):
                return
            await store.migrate()
            if self.settings.migrate_on_start:
                # The relay may start before the workers that otherwise make the outbox.
                await asyncio.to_thread(_ensure_read_models, self.settings)
            self.state = await store.load()
            await listener.execute(f"LISTEN {OUTBOX_CHANNEL}")
            await broker.ensure_topics()  # never let a send auto-create it wrongly sized
            await producer.start()
            log.info("outbox_relay_started", topic=self.topic, position=self.state.position)
            health_due = time.monotonic() + self.settings.relay_health_interval_s
            trim_due = time.monotonic()
            while not stop.is_set():
                if time.monotonic() >= trim_due:
                    more = await self._trim(store) == TRIM_ROWS_MAX  # a backlog: go on soon
                    trim_due = time.monotonic() + (0.0 if more else TRIM_EVERY_S)
                if time.monotonic() >= health_due:
                    # A broker restarted empty has no topic: made again first (as the
                    # ledger relay does), or the sends below went to a topic that is not
                    # there (tansu acknowledges them, and nobody can read them). Then a
                    # lost log whichever partitions the next sends land on (see
                    # RelayBroker.log_lost); the sends' offsets tell only for their own.
                    await broker.ensure_topics()
                    if await broker.log_lost(self.topic, self.state.offsets):
                        await self._republish_all(store)
                    health_due = time.monotonic() + self.settings.relay_health_interval_s
                batch_max = self.settings.outbox_batch_events_max
                if await self._publish_next(store, producer) < batch_max:
                    await _wait_for_notify(listener, stop, self.settings.outbox_poll_interval_s)
        finally:
            await stop_client(producer)
            await broker.close()
            await listener.close()
            await store.close()

    async def _publish_next(self, store: RelayStore, producer: AIOKafkaProducer) -> int:
        cursor = await store.conn.execute(
            f"SELECT id, account_id, alert_id, payload FROM {SCHEMA}.alerts_outbox "
            "WHERE id > %s ORDER BY id LIMIT %s",
            (self.state.position, self.settings.outbox_batch_events_max),
        )
        rows = await cursor.fetchall()
        if not rows:
            return 0
        futures = [
            await producer.send(
                self.topic,
                key=str(account_id).encode(),
                value=orjson.dumps(seal_alert(payload, self._mac_key, self._mac_kid)),
                headers=[
                    ("alert_id", str(alert).encode()),
                    (EPOCH_HEADER, str(self.state.epoch).encode()),
                ],
            )
            for _, account_id, alert, payload in rows
        ]
        results: list[RecordMetadata] = list(await asyncio.gather(*futures))
        acknowledged: dict[int, int] = {}
        for metadata in results:
            if metadata.offset <= self.state.offsets.get(metadata.partition, -1):
                await self._republish_all(store)
                return self.settings.outbox_batch_events_max
            acknowledged[metadata.partition] = max(
                metadata.offset, acknowledged.get(metadata.partition, -1)
            )
        state = RelayState(
            int(rows[-1][0]), self.state.epoch, {**self.state.offsets, **acknowledged}
        )
        await store.record(state, acknowledged)
        self.state = state
        self.published += len(rows)
        return len(rows)

    async def _trim(self, store: RelayStore) -> int:
        """Trim the outbox; a failure (a statement timeout, say) is logged and publishing
        goes on: a bigger outbox is no reason to stop sending alerts."""
        retention_s = self.settings.outbox_retention_h * 3600
        try:
            trimmed = await trim_outbox(store.conn, self.state.position, retention_s)
        except psycopg.Error as error:
            if store.conn.closed:
                raise  # the session is gone: start over, as for any other lost connection
            log.warning("outbox_trim_failed", error=describe(error))
            return 0
        if trimmed:
            OUTBOX_TRIMMED.inc(trimmed)
            log.info("outbox_trimmed", alerts=trimmed, retention_h=self.settings.outbox_retention_h)
        return trimmed

    async def _republish_all(self, store: RelayStore) -> None:
        # The broker lost its log: every alert the outbox still holds (all but those routed
        # past the retention) again; the case opener is idempotent.
        epoch = self.state.epoch + 1
        await store.rewind(0, epoch)
        log.warning("outbox_relay_rewound", topic=self.topic, epoch=epoch)
        self.state = RelayState(position=0, epoch=epoch)


def _ensure_read_models(settings: Settings) -> None:
    with migrating(settings) as conn:
        ensure_read_models(conn)


async def _wait_for_notify(
    conn: psycopg.AsyncConnection[Any], stop: asyncio.Event, timeout_s: float
) -> None:
    async def first_notify() -> None:
        async for _ in conn.notifies(timeout=timeout_s, stop_after=1):
            return

    waiter = asyncio.create_task(first_notify())
    stopper = asyncio.create_task(stop.wait())
    try:
        await asyncio.wait({waiter, stopper}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in (waiter, stopper):
            task.cancel()
        await asyncio.gather(waiter, stopper, return_exceptions=True)
