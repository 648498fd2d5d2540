"""The case opener: consumes `vigil.alerts` and opens each alert's case on the command
side (CONTRACT.md, "Alerts and cases"), as the system actor.

Opening is idempotent by case id (derived from the alert id), so a redelivered or
republished alert changes nothing; offsets are committed only after the cases of a
fetched batch are saved, so a crash redelivers rather than skips. A message that is not
an alert is logged and skipped: retrying it would never succeed.
"""

from __future__ import annotations

import asyncio
import signal

import orjson
import structlog
from aiokafka import ConsumerRecord
from prometheus_client import Counter, start_http_server

from application.compliance import Compliance
from domain.errors import Unavailable, ValidationFailed
from infrastructure.consumer import (
    EpochGuard,
    fetch,
    header,
    new_consumer,
    run_with_restarts,
)
from infrastructure.settings import Settings
from infrastructure.store import open_ledger
from infrastructure.topics import alerts_topic

log = structlog.get_logger("vigil.case_opener")

FETCH_RECORDS_MAX = 500
# tansu answers a fetch only when its wait runs out: keep it short, for latency.

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
        self.epochs = EpochGuard("case-opener")
        self.opened = 0
        self.handled = 0

    async def run(self, stop: asyncio.Event) -> None:
        await run_with_restarts(stop, self._consume, "case-opener")

    async def _consume(self, stop: asyncio.Event) -> None:
        consumer = new_consumer(
            self.settings,
            alerts_topic(self.settings),
            group_id(self.settings),
            "vigil-case-opener",
            FETCH_RECORDS_MAX,
        )
        await consumer.start()
        try:
            log.info("case_opener_started", topic=alerts_topic(self.settings))
            while not stop.is_set():
                records = await fetch(consumer, self.epochs, FETCH_RECORDS_MAX)
                for record in records:
                    await self._handle(record)
                if records:
                    await consumer.commit()
        finally:
            await consumer.stop()

    async def _handle(self, record: ConsumerRecord) -> None:
        self.handled += 1
        try:
            alert = orjson.loads(record.value)
            if not isinstance(alert, dict):
                raise ValidationFailed("an alert message is a JSON object")
            correlation_id = header(record, "correlation_id") or f"alert:{alert.get('alert_id')}"
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
