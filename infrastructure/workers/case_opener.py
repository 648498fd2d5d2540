"""The case opener: consumes `vigil.alerts` and opens each alert's case on the command
side (the API contract, "Alerts and cases"), as the system actor.

Opening is idempotent by case id (derived from the alert id), so a redelivered or
republished alert changes nothing; offsets are committed only after the cases of a
fetched batch are saved, so a crash redelivers rather than skips. A message it cannot
handle (not JSON, not an alert, an alert the command side refuses) would fail the same way
on every delivery: it is quarantined (case_opener_store.py), logged and counted, and the
consumer goes on past it. Only the store being unavailable (`Unavailable`, a lost
connection) makes the consumer start over from the committed offsets: nothing is skipped.
"""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Mapping
from typing import Any

import orjson
import psycopg
import structlog
from aiokafka import ConsumerRecord
from prometheus_client import Counter

from application.compliance import AlertSummary, Compliance, Routed
from domain.errors import DomainError, Unavailable, ValidationFailed
from infrastructure.eventstore.ledger import open_ledger
from infrastructure.health import start_metrics_and_health
from infrastructure.kafka.authenticity import check_alert_message
from infrastructure.kafka.clients import new_consumer, stop_client
from infrastructure.kafka.consumer import (
    EpochGuard,
    fetch,
    header,
    run_with_restarts,
)
from infrastructure.kafka.topics import alerts_topic
from infrastructure.monitoring.rules_config import screening_of
from infrastructure.postgres.connect import connect_async
from infrastructure.runtime import run_async
from infrastructure.settings import Settings
from infrastructure.workers.case_opener_store import (
    Quarantined,
    prepare_quarantine_table,
    record_quarantined,
)
from infrastructure.workers.hold_sweeper import run_hold_sweeper

log = structlog.get_logger("vigil.case_opener")


CASES_OPENED = Counter(
    "vigil_cases_opened_total",
    "Cases opened from alerts, by rule and severity.",
    ["rule", "severity"],
)
ALERTS_CONSUMED = Counter(
    "vigil_case_opener_alerts_total",
    "Alert messages handled, by outcome (`opened`, `joined` an open case of its rule and "
    "account, `existing`, `suppressed`, `quarantined`).",
    ["outcome"],
)
QUARANTINED = Counter(
    "vigil_case_opener_quarantined",
    "Alert messages recorded in the quarantine table (each offset once, redeliveries not).",
)
# What a message the case opener cannot handle raises: the same on every delivery.
# `Unavailable` is a DomainError too, but it passes (the store is down): it is not here.
UNHANDLEABLE = (DomainError, KeyError, TypeError, ValueError)  # ValueError: JSON errors too


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
        self.mac_keys = settings.audit_mac_keys_resolved()

    async def run(self, stop: asyncio.Event) -> None:
        await run_with_restarts(stop, self._consume, "case-opener")

    async def _consume(self, stop: asyncio.Event) -> None:
        # A connection of its own for the quarantine; lost, it restarts the consumer.
        conn = await connect_async(self.settings, "case-opener", autocommit=True)
        try:
            await prepare_quarantine_table(conn, self.settings)
            consumer = new_consumer(
                self.settings,
                alerts_topic(self.settings),
                group_id(self.settings),
                "vigil-case-opener",
                self.settings.case_opener_fetch_records_max,
            )
            await consumer.start()
            try:
                log.info("case_opener_started", topic=alerts_topic(self.settings))
                while not stop.is_set():
                    records = await fetch(
                        consumer, self.epochs, self.settings.case_opener_fetch_records_max
                    )
                    await self._handle_all(records, conn)
                    if records:
                        await consumer.commit()
            finally:
                await stop_client(consumer)
        finally:
            await conn.close()

    async def _handle_all(
        self, records: list[ConsumerRecord], conn: psycopg.AsyncConnection[Any]
    ) -> None:
        """A fetch's alerts: their cases opened together (one read, one transaction); a
        message that is not an alert is quarantined on its own. If the batch fails in a way
        one message could cause (the command side refuses a case), each is handled on its
        own, so only that one is quarantined."""
        parsed: list[tuple[ConsumerRecord, AlertSummary, str]] = []
        for record in records:
            try:
                parsed.append((record, *_alert(record, self.mac_keys)))
            except UNHANDLEABLE as error:
                self.handled += 1
                await self._quarantine(record, _loaded(record), error, conn)
        if not parsed:
            return
        try:
            opened = await asyncio.to_thread(
                self.compliance.open_cases, [(summary, cid) for _, summary, cid in parsed]
            )
        except Unavailable:
            raise  # not saved: the consumer restarts from the last committed offset
        except UNHANDLEABLE:
            for record, _, _ in parsed:
                await self._handle(record, conn)
            return
        for (_, summary, correlation_id), routed in zip(parsed, opened, strict=True):
            self.handled += 1
            self._routed(summary, routed, correlation_id)

    async def _handle(self, record: ConsumerRecord, conn: psycopg.AsyncConnection[Any]) -> None:
        self.handled += 1
        try:
            summary, correlation_id = _alert(record, self.mac_keys)
            [routed] = await asyncio.to_thread(
                self.compliance.open_cases, [(summary, correlation_id)]
            )
        except Unavailable:
            raise  # not saved: the consumer restarts from the last committed offset
        except UNHANDLEABLE as error:
            await self._quarantine(record, _loaded(record), error, conn)
            return
        self._routed(summary, routed, correlation_id)

    def _routed(self, summary: AlertSummary, routed: Routed, correlation_id: str) -> None:
        ALERTS_CONSUMED.labels(routed.outcome).inc()
        case = routed.case
        if routed.outcome == "opened" and case is not None:
            self.opened += 1
            CASES_OPENED.labels(case.rule, case.severity).inc()
        log.info(
            f"alert_{routed.outcome}",
            case_id=None if case is None else str(case.id),
            alert_id=str(summary.alert_id),
            account_id=str(summary.account_id),
            rule=summary.rule,
            severity=summary.severity,
            correlation_id=correlation_id,
        )

    async def _quarantine(
        self,
        record: ConsumerRecord,
        alert: Any,
        error: Exception,
        conn: psycopg.AsyncConnection[Any],
    ) -> None:
        fields = alert if isinstance(alert, dict) else {}
        key = bytes(record.key).decode(errors="replace") if record.key else None
        row = Quarantined(
            topic=record.topic,
            partition=record.partition,
            kafka_offset=record.offset,
            alert_id=_optional_text(fields.get("alert_id")),
            account_id=_optional_text(fields.get("account_id")) or key,  # key: account id
            error=f"{type(error).__name__}: {error}",
            value=record.value,
        )
        recorded = await record_quarantined(conn, row)
        ALERTS_CONSUMED.labels("quarantined").inc()
        if recorded:
            QUARANTINED.inc()
        log.error(
            "alert_quarantined",
            partition=record.partition,
            offset=record.offset,
            alert_id=row.alert_id,
            account_id=row.account_id,
            error=row.error,
            already_recorded=not recorded,
        )


def _loaded(record: ConsumerRecord) -> Any:
    """The message's JSON, or None if it is not JSON (for the quarantine's fields)."""
    try:
        return orjson.loads(record.value)
    except orjson.JSONDecodeError:
        return None


def _alert(record: ConsumerRecord, keys: Mapping[str, bytes]) -> tuple[AlertSummary, str]:
    """The alert a message carries and its correlation id; raises for anything else."""
    alert = orjson.loads(record.value)
    if not isinstance(alert, dict):
        raise ValidationFailed("an alert message is a JSON object")
    # Only what the alerts relay published opens a case: set aside (quarantined) otherwise.
    check_alert_message(alert, keys)
    correlation_id = header(record, "correlation_id") or f"alert:{alert.get('alert_id')}"
    return AlertSummary.from_message(alert), correlation_id


def _optional_text(value: object) -> str | None:
    return None if value is None else str(value)


def run_case_opener(settings: Settings, metrics_port: int) -> int:
    """`vigil case-opener`: run until SIGINT or SIGTERM."""
    if metrics_port:
        start_metrics_and_health(settings, metrics_port, "case-opener")
    return run_async(_serve(settings))


async def _serve(settings: Settings) -> int:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    # Its hold sweep expires review holds and closes their cases: the screening in force.
    ledger = await asyncio.to_thread(open_ledger, settings, None, screening_of(settings))
    try:
        log.info("case_opener_starting", group=group_id(settings))
        # The same process sweeps expired holds (as `system:holds`).
        await asyncio.gather(
            CaseOpener(settings, Compliance(ledger)).run(stop),
            run_hold_sweeper(settings, ledger, stop),
        )
    finally:
        ledger.close()
    log.info("case_opener_stopped")
    return 0
