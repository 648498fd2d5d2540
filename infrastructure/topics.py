"""Kafka topic names (CONTRACT.md): `VIGIL_TOPIC_PREFIX` is prepended as is."""

from __future__ import annotations

from infrastructure.settings import Settings

LEDGER_EVENTS = "vigil.ledger.events"
ALERTS = "vigil.alerts"


def ledger_events_topic(settings: Settings) -> str:
    return settings.topic_prefix + LEDGER_EVENTS


def alerts_topic(settings: Settings) -> str:
    return settings.topic_prefix + ALERTS
