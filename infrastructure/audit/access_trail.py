"""The access trail: every read of customer data and every refusal, appended to the
audit-access log in batches, off the request's path.

A request adds one record to a bounded queue (no I/O); a task of the API process appends
what gathered every `FLUSH_INTERVAL_S`, up to `BATCH_RECORDS_MAX` rows in one INSERT, so a
busy API pays one round trip per batch, not per request. Records still queued when the
process stops are flushed first. A queue at its bound (PostgreSQL down for long) drops the
record, counts `vigil_access_trail_dropped_total` and logs it: reads go on, the operator is
told. Audit reads themselves (`/v1/audit/...`) are recorded synchronously before they are
served, as before; this trail adds account, statement, alert, case, watchlist and export
reads and the 401/403 refusals of both APIs.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Final

import structlog
from prometheus_client import Counter

from infrastructure.audit.access_log import AccessLog, AccessRecord
from infrastructure.settings import Settings

log = structlog.get_logger("vigil.access_trail")

QUEUE_RECORDS_MAX: Final = 100_000
BATCH_RECORDS_MAX: Final = 1_000
FLUSH_INTERVAL_S: Final = 0.2
assert BATCH_RECORDS_MAX <= QUEUE_RECORDS_MAX

DROPPED = Counter(
    "vigil_access_trail_dropped_total",
    "Access-log records dropped because the queue was full (PostgreSQL not taking them).",
)
APPENDED = Counter("vigil_access_trail_appended_total", "Access-log records appended.")


class AccessTrail:
    def __init__(self, access_log: AccessLog) -> None:
        self.access_log = access_log
        self._queue: asyncio.Queue[AccessRecord] = asyncio.Queue(QUEUE_RECORDS_MAX)
        self._task: asyncio.Task[None] | None = None

    @classmethod
    async def open(cls, settings: Settings) -> AccessTrail:
        """A trail on a writer pool of its own, already flushing."""
        trail = cls(await AccessLog.open(settings))
        trail.start()
        return trail

    async def close(self) -> None:
        """Flush what is queued, then close the pool."""
        await self.stop()
        await self.access_log.close()

    def add(self, record: AccessRecord) -> None:
        try:
            self._queue.put_nowait(record)
        except asyncio.QueueFull:
            DROPPED.inc()
            log.error("access_trail_dropped", action=record.action, subject=record.subject)

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="access-trail")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        with contextlib.suppress(Exception):
            while not self._queue.empty():
                await self.flush()

    async def flush(self) -> int:
        batch: list[AccessRecord] = []
        while not self._queue.empty() and len(batch) < BATCH_RECORDS_MAX:
            batch.append(self._queue.get_nowait())
        if batch:
            try:
                await self.access_log.record_many(batch)
            except Exception:
                for record in batch:  # kept for the next round, within the bound
                    self.add(record)
                raise
            APPENDED.inc(len(batch))
        return len(batch)

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(FLUSH_INTERVAL_S)
            try:
                while await self.flush() == BATCH_RECORDS_MAX:
                    pass
            except Exception as error:
                log.warning("access_trail_flush_failed", error=type(error).__name__)
