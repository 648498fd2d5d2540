"""Messages a consumer refused because Vigil did not publish them (their hash, `mac` or
`relay_mac` do not hold): recorded for people, counted, never applied.

Unlike a quarantined event, a refused message takes no tracking row: the notification id
it claims is not its own to use up, and the genuine event with that id is applied when it
comes (before or after). Nor does it raise an account's alert: what it says of its account
is not to be believed. Operators see it in `vigil quarantine list`, in `/health/ready`
(degraded) and in `vigil_messages_refused_total`, which the Prometheus rules alert on.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Final

import structlog
from prometheus_client import Counter
from psycopg import AsyncConnection

log = structlog.get_logger("vigil.refused")

REASON_CHARS_MAX: Final = 300

MESSAGES_REFUSED = Counter(
    "vigil_messages_refused_total",
    "Messages refused as not published by Vigil (hash, mac or relay_mac wrong), by consumer.",
    ["consumer"],
)

REFUSED_MESSAGES_DDL: Final = """
CREATE TABLE IF NOT EXISTS public.refused_messages (
    id bigserial PRIMARY KEY,
    consumer text NOT NULL,
    topic text NOT NULL,
    kafka_partition integer NOT NULL,
    kafka_offset bigint NOT NULL,
    notification_id bigint,
    reason text NOT NULL,
    refused_at timestamptz NOT NULL DEFAULT now(),
    resolved_at timestamptz
);
"""


@dataclass(frozen=True, slots=True)
class RefusedMessage:
    topic: str
    partition: int
    offset: int
    notification_id: int | None  # as the message claims it
    reason: str


async def record_refused(
    conn: AsyncConnection[Any], consumer: str, refused: Sequence[RefusedMessage]
) -> None:
    """Record the refusals in one transaction of their own, count and log them."""
    if not refused:
        return
    async with conn.transaction(), conn.cursor() as cursor:
        await cursor.executemany(
            "INSERT INTO public.refused_messages (consumer, topic, kafka_partition, "
            "kafka_offset, notification_id, reason) VALUES (%s, %s, %s, %s, %s, %s)",
            [
                (
                    consumer,
                    message.topic,
                    message.partition,
                    message.offset,
                    message.notification_id,
                    message.reason[:REASON_CHARS_MAX],
                )
                for message in refused
            ],
        )
    for message in refused:
        MESSAGES_REFUSED.labels(consumer).inc()
        log.error(
            "message_refused",
            consumer=consumer,
            topic=message.topic,
            partition=message.partition,
            offset=message.offset,
            notification_id=message.notification_id,
            reason=message.reason[:REASON_CHARS_MAX],
        )
