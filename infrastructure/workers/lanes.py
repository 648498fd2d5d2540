"""A workers process's lanes: each projection applies the fetched batches at its own pace
(`Lane`), and the consumer commits offsets only up to the newest batch every lane has
applied (`CommitLedger`). Used by `projections.py`."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import deque
from typing import Any, Protocol

import psycopg
import redis.asyncio as aioredis
from aiokafka import TopicPartition
from prometheus_client import Gauge

from projections.envelope import Envelope

PENDING_EVENTS = Gauge(
    "vigil_projection_pending_events",
    "Events fetched and not yet applied, by projection (each keeps its own pace).",
    ["projection"],
)
# A lane with an interval (a read model that does not set the pace) waits it out only after
# a batch of at least this many events: under load (a fetch holds hundreds at 1,000
# transfers a second), not in a quiet hour, when a batch's round of statements costs little
# and read-your-writes should not wait.
PACED_AFTER_EVENTS = 50


class Applier(Protocol):
    """What a lane drives: one projection's batch apply (`projections.Projection`)."""

    name: str

    async def apply(
        self, conn: psycopg.AsyncConnection[Any], cache: aioredis.Redis, events: list[Envelope]
    ) -> None: ...


class Lane:
    """One projection's own pace. It applies the fetched batches in order as soon as it is
    free, and the batches that queued while it was busy together (up to `events_max`
    events), so a projection that falls behind catches up in fewer, larger transactions,
    and never holds up a faster one: the alerts and balances stay real time while a slower
    read model takes a moment longer.

    With `interval_s`, a batch of `PACED_AFTER_EVENTS` or more starts the next at least that
    much later: under load the lane applies what queued meanwhile together, one transaction
    where there would be several (each costs the worker and PostgreSQL a round of
    statements whatever it holds). After a smaller batch, a lane `events_max` behind, and a
    closing lane do not wait."""

    def __init__(
        self,
        projection: Applier,
        conn: psycopg.AsyncConnection[Any],
        cache: aioredis.Redis,
        events_max: int,
        progress: asyncio.Event,
        interval_s: float = 0.0,
    ) -> None:
        assert interval_s >= 0, interval_s
        self.projection = projection
        self.conn = conn
        self.cache = cache
        self.events_max = events_max
        self.interval_s = interval_s
        self.progress = progress  # set whenever a batch has been applied
        self.done = 0  # the newest batch applied
        self.pending_events = 0
        self._queue: deque[tuple[int, list[Envelope]]] = deque()
        self._wake = asyncio.Event()
        self._closed = False
        self._next_s = 0.0  # monotonic time before which the next batch does not start
        self._pending_gauge = PENDING_EVENTS.labels(projection.name)

    def put(self, sequence: int, events: list[Envelope]) -> None:
        self._queue.append((sequence, events))
        self.pending_events += len(events)
        self._wake.set()
        self._pending_gauge.set(self.pending_events)

    def close(self) -> None:
        """Apply what is queued, then stop."""
        self._closed = True
        self._wake.set()

    async def run(self) -> None:
        while self._queue or not self._closed:
            if not self._queue:
                self._wake.clear()
                await self._wake.wait()
                continue
            rest_s = self._next_s - time.monotonic()
            if rest_s > 0 and not self._closed and self.pending_events < self.events_max:
                # Woken early by each batch put (to see whether the lane is now a whole
                # batch behind) and by close().
                self._wake.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), rest_s)
                continue
            started_s = time.monotonic()
            sequence, events = self._take()
            if events:
                await self.projection.apply(self.conn, self.cache, events)
            # Paced only under load: after a small batch the next goes at once, so a
            # read-your-writes request in a quiet hour never waits for the interval.
            if len(events) >= PACED_AFTER_EVENTS:
                self._next_s = started_s + self.interval_s
            self.done = sequence
            self.progress.set()

    def _take(self) -> tuple[int, list[Envelope]]:
        """The first queued batch, with those after it that fit within events_max."""
        sequence, events = self._queue.popleft()
        if self._queue and len(events) + len(self._queue[0][1]) <= self.events_max:
            events = list(events)  # the batch itself is every lane's: extend a copy
            while self._queue and len(events) + len(self._queue[0][1]) <= self.events_max:
                sequence, more = self._queue.popleft()
                events.extend(more)
        self.pending_events -= len(events)
        self._pending_gauge.set(self.pending_events)
        return sequence, events


class CommitLedger:
    """The consumer's positions after each fetched batch, kept until every lane has
    applied the batch; committing them then means a restart reads again only what some
    lane had not applied (committed offsets are only a head start: tracking dedupes)."""

    def __init__(self) -> None:
        self._last = 0
        self._positions: deque[tuple[int, dict[TopicPartition, int]]] = deque()

    @property
    def last(self) -> int:
        """The newest batch added (0: none yet)."""
        return self._last

    def add(self, positions: dict[TopicPartition, int]) -> int:
        self._last += 1
        self._positions.append((self._last, positions))
        return self._last

    def ready(self, done: int) -> dict[TopicPartition, int] | None:
        """The positions after the newest batch up to `done`, once; None if none is new."""
        ready = None
        while self._positions and self._positions[0][0] <= done:
            ready = self._positions.popleft()[1]
        return ready
