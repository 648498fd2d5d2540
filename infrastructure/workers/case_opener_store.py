"""The case opener's quarantine: alert messages it cannot handle, kept for a person.

A message that is not an alert, or an alert the command side refuses, would fail the same
way on every delivery; the case opener records it here (once per topic, partition and
offset, however often it is delivered) and goes on past it. `resolved_at` is for whoever
deals with a row; `case_opener_quarantine_count` counts the rows nobody has.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import psycopg

from infrastructure.postgres.locks import migration_lock_async
from infrastructure.settings import Settings

QUARANTINE_TABLE = "case_opener_quarantine"
# A message is kept whole up to this size (alerts are about 1 KiB); a bigger one is cut,
# so one huge message cannot bloat the table.
VALUE_BYTES_MAX = 64 * 1024
ERROR_CHARS_MAX = 2_000
ID_CHARS_MAX = 200  # alert and account ids are UUIDs; a malformed one is kept, cut short

DDL = f"""
CREATE TABLE IF NOT EXISTS public.{QUARANTINE_TABLE} (
    id bigserial PRIMARY KEY,
    topic text NOT NULL,
    partition integer NOT NULL,
    kafka_offset bigint NOT NULL,
    alert_id text NULL,
    account_id text NULL,
    error text NOT NULL,
    value text NOT NULL,
    quarantined_at timestamptz NOT NULL DEFAULT now(),
    resolved_at timestamptz NULL,
    UNIQUE (topic, partition, kafka_offset)
);
"""

INSERT = f"""
INSERT INTO public.{QUARANTINE_TABLE}
    (topic, partition, kafka_offset, alert_id, account_id, error, value)
VALUES (%(topic)s, %(partition)s, %(kafka_offset)s, %(alert_id)s, %(account_id)s,
    %(error)s, %(value)s)
ON CONFLICT (topic, partition, kafka_offset) DO NOTHING
"""


def _text(value: str, chars_max: int) -> str:
    # PostgreSQL text cannot hold NUL: a message carrying one must still be recorded.
    return value[:chars_max].replace("\x00", "\ufffd")


@dataclass(frozen=True)
class Quarantined:
    """One message the case opener could not handle, as the table keeps it."""

    topic: str
    partition: int
    kafka_offset: int
    alert_id: str | None
    account_id: str | None
    error: str
    value: bytes | None  # the raw message (None: a record without a value)

    def params(self) -> dict[str, Any]:
        raw = (self.value or b"")[:VALUE_BYTES_MAX]
        return {
            "topic": self.topic,
            "partition": self.partition,
            "kafka_offset": self.kafka_offset,
            "alert_id": None if self.alert_id is None else _text(self.alert_id, ID_CHARS_MAX),
            "account_id": (
                None if self.account_id is None else _text(self.account_id, ID_CHARS_MAX)
            ),
            "error": _text(self.error, ERROR_CHARS_MAX),
            "value": _text(raw.decode("utf-8", errors="replace"), VALUE_BYTES_MAX),
        }


def ensure_quarantine_table(conn: psycopg.Connection[Any]) -> None:
    """Create the table if missing (idempotent); the caller holds the migration lock."""
    conn.execute(DDL)


async def prepare_quarantine_table(conn: psycopg.AsyncConnection[Any], settings: Settings) -> None:
    """At the case opener's start: the table, under the lock every migrating process takes,
    unless `vigil migrate` made it (`migrate_on_start` off)."""
    if not settings.migrate_on_start:
        return
    async with migration_lock_async(conn):
        await conn.execute(DDL)


async def record_quarantined(conn: psycopg.AsyncConnection[Any], row: Quarantined) -> bool:
    """Record it (autocommit); False if this offset was recorded before (a redelivery)."""
    cursor = await conn.execute(INSERT, row.params())
    return cursor.rowcount == 1


async def case_opener_quarantine_count(conn: psycopg.AsyncConnection[Any]) -> int:
    """Quarantined messages nobody has resolved yet."""
    cursor = await conn.execute(
        f"SELECT count(*) FROM public.{QUARANTINE_TABLE} WHERE resolved_at IS NULL"
    )
    row = await cursor.fetchone()
    assert row is not None, "count(*) returns a row"
    return int(row[0])
