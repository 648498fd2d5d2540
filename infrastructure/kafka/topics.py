"""Kafka topic names (the API contract): `VIGIL_TOPIC_PREFIX` is prepended as is."""

from __future__ import annotations

from infrastructure.settings import Settings

LEDGER_EVENTS = "vigil.ledger.events"
ALERTS = "vigil.alerts"
# Every message the relay sends carries its epoch: a consumer that sees it go up knows
# the broker lost its log and the relay republished, and reads the partition again.
EPOCH_HEADER = "relay_epoch"


def ledger_events_topic(settings: Settings) -> str:
    return settings.topic_prefix + LEDGER_EVENTS


def alerts_topic(settings: Settings) -> str:
    return settings.topic_prefix + ALERTS
