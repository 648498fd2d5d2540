"""The case opener: consumes `vigil.alerts` and opens each alert's case on the command
side (CONTRACT.md, "Alerts and cases"), as the system actor.

Opening is idempotent by case id (derived from the alert id), so a redelivered or
republished alert changes nothing; offsets are committed only after the cases of a
fetched batch are saved, so a crash redelivers rather than skips. A message that is not
an alert is logged and skipped: retrying it would never succeed.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal

import orjson
import structlog
from aiokafka import AIOKafkaConsumer, ConsumerRecord, TopicPartition
from prometheus_client import Counter, start_http_server

from application.compliance import Compliance
from domain.errors import Unavailable, ValidationFailed
from infrastructure.settings import ConfigurationError, Settings
from infrastructure.store import open_ledger
from infrastructure.topics import EPOCH_HEADER, alerts_topic

log = structlog.get_logger("vigil.case_opener")

FETCH_TIMEOUT_MS = 500
FETCH_RECORDS_MAX = 500
# tansu answers a fetch only when its wait runs out: keep it short, for latency.
FETCH_WAIT_MS = 20
RETRY_BACKOFF_S_MAX = 5.0

CASES_OPENED = Counter(
    "vigil_cases_opened_total",
    "Cases opened from alerts, by rule and severity.",
    ["rule", "severity"],
)
ALERTS_CONSUMED = Counter(
    "vigil_case_opener_alerts_total",
    "Alert messages handled, by outcome (`opened`, `existing`, `rejected`).",
    ["outcome"],
)


def group_id(settings: Settings) -> str:
    return f"{settings.topic_prefix}vigil.case-opener"


class CaseOpener:
    """One consumer of the alerts topic. `run(stop)` until `stop` is set; restarts its
    consumer (from the committed offsets) after any failure, with a bounded backoff."""

    def __init__(self, settings: Settings, compliance: Compliance) -> None:
        self.settings = settings
        self.compliance = compliance
        self.epochs: dict[TopicPartition, int] = {}
        self.opened = 0
        self.handled = 0

    async def run(self, stop: asyncio.Event) -> None:
        backoff_s = 0.1
        while not stop.is_set():
            try:
                await self._consume(stop)
            except ConfigurationError:
                raise
            except Exception as error:
                log.warning("case_opener_restarting", error=f"{type(error).__name__}: {error}")
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), timeout=backoff_s)
                backoff_s = min(backoff_s * 2, RETRY_BACKOFF_S_MAX)
            else:
                backoff_s = 0.1

    async def _consume(self, stop: asyncio.Event) -> None:
        consumer = AIOKafkaConsumer(
            alerts_topic(self.settings),
            bootstrap_servers=self.settings.resolved_kafka_bootstrap(),
            group_id=group_id(self.settings),
            client_id="vigil-case-opener",
            auto_offset_reset="earliest",
            enable_auto_commit=False,
            max_poll_records=FETCH_RECORDS_MAX,
            fetch_max_wait_ms=FETCH_WAIT_MS,
            request_timeout_ms=30_000,
            session_timeout_ms=10_000,
            heartbeat_interval_ms=3_000,
            metadata_max_age_ms=5_000,
        )
        await consumer.start()
        try:
            log.info("case_opener_started", topic=alerts_topic(self.settings))
            while not stop.is_set():
                fetched = await consumer.getmany(
                    timeout_ms=FETCH_TIMEOUT_MS, max_records=FETCH_RECORDS_MAX
                )
                records = await self._records_to_handle(consumer, fetched)
                for record in records:
                    await self._handle(record)
                if records:
                    await consumer.commit()
        finally:
            await consumer.stop()

    async def _records_to_handle(
        self, consumer: AIOKafkaConsumer, fetched: dict[TopicPartition, list[ConsumerRecord]]
    ) -> list[ConsumerRecord]:
        records: list[ConsumerRecord] = []
        for partition, batch in fetched.items():
            epoch = _epoch(batch[0]) if batch else None
            if epoch is not None and self.epochs.get(partition, epoch) < epoch:
                # The broker lost its log and it was republished: start the partition over.
                self.epochs[partition] = epoch
                await consumer.seek_to_beginning(partition)
                continue
            for record in batch:
                record_epoch = _epoch(record)
                if record_epoch is not None:
                    self.epochs[partition] = max(self.epochs.get(partition, 0), record_epoch)
                records.append(record)
        return records

    async def _handle(self, record: ConsumerRecord) -> None:
        self.handled += 1
        try:
            alert = orjson.loads(record.value)
            if not isinstance(alert, dict):
                raise ValidationFailed("an alert message is a JSON object")
            correlation_id = _header(record, "correlation_id") or f"alert:{alert.get('alert_id')}"
            case, created = await asyncio.to_thread(
                self.compliance.open_case, alert, correlation_id
            )
        except (orjson.JSONDecodeError, ValidationFailed) as error:
            ALERTS_CONSUMED.labels("rejected").inc()
            log.error(
                "alert_rejected",
                partition=record.partition,
                offset=record.offset,
                error=f"{type(error).__name__}: {error}",
            )
            return
        except Unavailable:
            raise  # not saved: the consumer restarts from the last committed offset
        outcome = "opened" if created else "existing"
        ALERTS_CONSUMED.labels(outcome).inc()
        if created:
            self.opened += 1
            CASES_OPENED.labels(case.rule, case.severity).inc()
        log.info(
            "case_opened" if created else "case_already_open",
            case_id=str(case.id),
            alert_id=case.alert_id,
            account_id=case.account_id,
            rule=case.rule,
            severity=case.severity,
            correlation_id=correlation_id,
        )


def _header(record: ConsumerRecord, name: str) -> str | None:
    for key, value in record.headers or ():
        if key == name and value:
            return bytes(value).decode(errors="replace")
    return None


def _epoch(record: ConsumerRecord) -> int | None:
    value = _header(record, EPOCH_HEADER)
    return None if value is None else int(value)


def run_case_opener(settings: Settings, metrics_port: int) -> int:
    """`vigil case-opener`: run until SIGINT or SIGTERM."""
    if metrics_port:
        start_http_server(metrics_port, addr=settings.host)
    return asyncio.run(_serve(settings))


async def _serve(settings: Settings) -> int:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    ledger = await asyncio.to_thread(open_ledger, settings)
    try:
        log.info("case_opener_starting", group=group_id(settings))
        await CaseOpener(settings, Compliance(ledger)).run(stop)
    finally:
        ledger.close()
    log.info("case_opener_stopped")
    return 0
