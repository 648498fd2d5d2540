"""The relay's own state in PostgreSQL: how far it has published to a topic, in which
epoch, and the last offset the broker acknowledged per partition.

The offsets are how the relay notices a broker that lost its log (the test broker keeps
topics in memory only): an acknowledged offset can never go backwards on a live log.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any
from uuid import UUID

import psycopg
import structlog
from eventsourcing.persistence import Notification

from infrastructure.logging import describe
from infrastructure.postgres.connect import SESSION_OPTIONS, connect_async
from infrastructure.postgres.locks import RELAY_LOCK_CLASS, migration_lock_async
from infrastructure.readmodels.quarantine import (
    MOVEMENT_EVENTS,
    RELAY,
    QuarantinedMovement,
    announce,
    raise_quarantine_alert,
)
from infrastructure.readmodels.schema import RELAY_QUARANTINE_DDL
from infrastructure.readmodels.schema import SCHEMA as READMODEL_SCHEMA
from infrastructure.settings import Settings

log = structlog.get_logger("vigil.relay")

EPOCH_FIRST = 1
ACCOUNT_TOPIC = "domain.account:"

DDL = """
CREATE TABLE IF NOT EXISTS public.relay_state (
    topic text PRIMARY KEY,
    position bigint NOT NULL CHECK (position >= 0),
    epoch bigint NOT NULL CHECK (epoch >= 1),
    updated_at timestamptz NOT NULL DEFAULT now()
);
CREATE TABLE IF NOT EXISTS public.relay_partition_offsets (
    topic text NOT NULL,
    partition integer NOT NULL CHECK (partition >= 0),
    last_offset bigint NOT NULL CHECK (last_offset >= 0),
    PRIMARY KEY (topic, partition)
);
-- Rewritten after every batch: room on each page for the next version of each row (an
-- update that stays on its page), and vacuumed after a fixed number of dead rows.
ALTER TABLE public.relay_state SET (fillfactor = 10, autovacuum_vacuum_threshold = 1000,
    autovacuum_vacuum_scale_factor = 0);
ALTER TABLE public.relay_partition_offsets SET (fillfactor = 10,
    autovacuum_vacuum_threshold = 1000, autovacuum_vacuum_scale_factor = 0);
"""


@dataclass(frozen=True)
class Undecodable:
    """A stored event the relay could not turn into its envelope (say, written with
    another cipher key): what the store tells of it without decoding it."""

    notification_id: int
    topic: str
    originator_id: UUID
    originator_version: int
    error: str

    @classmethod
    def of(cls, stored: Notification, error: BaseException) -> Undecodable:
        return cls(
            stored.id,
            stored.topic,
            UUID(str(stored.originator_id)),
            stored.originator_version,
            describe(error),
        )

    @property
    def event_type(self) -> str:
        return self.topic.rsplit(".", 1)[-1]

    @property
    def is_movement(self) -> bool:
        return self.topic.startswith(ACCOUNT_TOPIC) and self.event_type in MOVEMENT_EVENTS


@dataclass
class RelayState:
    position: int
    epoch: int
    offsets: dict[int, int] = field(default_factory=dict)


class RelayStore:
    """One autocommit session: it holds the relay's advisory lock for its whole life."""

    def __init__(
        self, conn: psycopg.AsyncConnection[Any], topic: str, *, migrate_on_start: bool = True
    ) -> None:
        self.conn = conn
        self.topic = topic
        self.migrate_on_start = migrate_on_start

    @classmethod
    async def connect(cls, settings: Settings, topic: str) -> RelayStore:
        conn = await connect_async(settings, "relay", autocommit=True, options=SESSION_OPTIONS)
        return cls(conn, topic, migrate_on_start=settings.migrate_on_start)

    async def close(self) -> None:
        # Closing the session releases the advisory lock with it.
        with contextlib.suppress(psycopg.Error):
            await self.conn.close()

    async def acquire_lock(self, stop: asyncio.Event, retry_s: float) -> bool:
        """Wait for the topic's relay lock; False if `stop` was set first."""
        waiting_logged = False
        while not stop.is_set():
            cursor = await self.conn.execute(
                "SELECT pg_try_advisory_lock(%s, hashtext(%s))", (RELAY_LOCK_CLASS, self.topic)
            )
            row = await cursor.fetchone()
            if row is not None and row[0]:
                return True
            if not waiting_logged:
                log.info("relay_waiting_for_lock", topic=self.topic)
                waiting_logged = True
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=retry_s)
        return False

    async def migrate(self) -> None:
        if not self.migrate_on_start:
            return  # `vigil migrate` made the tables, as the owning role
        async with migration_lock_async(self.conn):
            await self.conn.execute(DDL)
            await self.conn.execute(RELAY_QUARANTINE_DDL)

    async def load(self) -> RelayState:
        """The recorded state; a topic never published to starts at 0 in the first epoch."""
        await self.conn.execute(
            "INSERT INTO public.relay_state (topic, position, epoch) VALUES (%s, 0, %s) "
            "ON CONFLICT (topic) DO NOTHING",
            (self.topic, EPOCH_FIRST),
        )
        cursor = await self.conn.execute(
            "SELECT position, epoch FROM public.relay_state WHERE topic = %s", (self.topic,)
        )
        row = await cursor.fetchone()
        assert row is not None, "relay_state row was just ensured"
        cursor = await self.conn.execute(
            "SELECT partition, last_offset FROM public.relay_partition_offsets WHERE topic = %s",
            (self.topic,),
        )
        offsets = {int(p): int(o) for p, o in await cursor.fetchall()}
        return RelayState(position=int(row[0]), epoch=int(row[1]), offsets=offsets)

    async def record(
        self,
        state: RelayState,
        acknowledged: dict[int, int],
        undecodable: Sequence[Undecodable] = (),
    ) -> None:
        """Record what the broker acknowledged: position and offsets in one transaction,
        with the batch's events that could not be decoded, quarantined."""
        async with self.conn.transaction():
            for event in undecodable:
                await self._quarantine(event)
            cursor = await self.conn.execute(
                "UPDATE public.relay_state SET position = %s, updated_at = now() "
                "WHERE topic = %s AND epoch = %s",
                (state.position, self.topic, state.epoch),
            )
            # One relay per topic (the advisory lock): nobody else moves the epoch.
            assert cursor.rowcount == 1, "relay_state changed under the relay's lock"
            async with self.conn.cursor() as offsets_cursor:
                await offsets_cursor.executemany(
                    "INSERT INTO public.relay_partition_offsets (topic, partition, last_offset) "
                    "VALUES (%s, %s, %s) ON CONFLICT (topic, partition) "
                    "DO UPDATE SET last_offset = EXCLUDED.last_offset",
                    [(self.topic, p, o) for p, o in sorted(acknowledged.items())],
                )

    async def _quarantine(self, event: Undecodable) -> None:
        cursor = await self.conn.execute(
            "INSERT INTO public.relay_quarantine (notification_id, topic, originator_id, "
            "originator_version, error) VALUES (%s, %s, %s, %s, %s) "
            "ON CONFLICT DO NOTHING RETURNING 1",
            (
                event.notification_id,
                event.topic,
                event.originator_id,
                event.originator_version,
                event.error,
            ),
        )
        if await cursor.fetchone() is None:
            return  # quarantined before this batch was published again
        announce(
            RELAY,
            event.notification_id,
            topic=event.topic,
            aggregate_id=str(event.originator_id),
            version=event.originator_version,
            error=event.error,
        )
        if not await self._read_models_present():
            log.error("quarantine_alert_not_raised", reason="no read models yet")
            return
        # A projection whose mark stopped at this id would wait for it forever.
        await self.conn.execute(
            f"UPDATE {READMODEL_SCHEMA}.projection_positions SET blocked_at = NULL "
            "WHERE blocked_at = %s",
            (event.notification_id,),
        )
        if event.is_movement:
            await self.conn.execute(f"SET LOCAL search_path TO {READMODEL_SCHEMA}, public")
            movement = QuarantinedMovement(
                account_id=event.originator_id,
                notification_id=event.notification_id,
                event_type=event.event_type,
                version=event.originator_version,
                transaction_id=None,
                occurred_at=None,
                chain_head=None,
            )
            await raise_quarantine_alert(self.conn, movement, "the relay", event.error)

    async def _read_models_present(self) -> bool:
        cursor = await self.conn.execute(
            "SELECT to_regclass(%s) IS NOT NULL AND to_regclass(%s) IS NOT NULL",
            (f"{READMODEL_SCHEMA}.projection_positions", f"{READMODEL_SCHEMA}.alerts"),
        )
        row = await cursor.fetchone()
        return bool(row and row[0])

    async def rewind(self, position: int, epoch: int) -> None:
        """A new epoch from `position`: the old offsets belong to a log that is gone."""
        async with self.conn.transaction():
            await self.conn.execute(
                "UPDATE public.relay_state SET position = %s, epoch = %s, updated_at = now() "
                "WHERE topic = %s",
                (position, epoch, self.topic),
            )
            await self.conn.execute(
                "DELETE FROM public.relay_partition_offsets WHERE topic = %s", (self.topic,)
            )

    async def projections_position_min(self) -> int | None:
        """The lowest projection position (all ids at or below it applied), None if none."""
        table = f"{READMODEL_SCHEMA}.projection_positions"
        cursor = await self.conn.execute("SELECT to_regclass(%s) IS NOT NULL", (table,))
        row = await cursor.fetchone()
        if row is None or not row[0]:
            return None
        cursor = await self.conn.execute(f"SELECT min(position) FROM {table}")
        row = await cursor.fetchone()
        return None if row is None or row[0] is None else int(row[0])
