"""Read-your-writes: wait, bounded, until a projection has caught up with a version.

One LISTEN connection per process hears the projections' NOTIFYs (the accounts a batch
changed, `change_notices.py`) and wakes the requests waiting on those accounts. A short
re-check poll covers a notification missed while that connection was down, so a lost
NOTIFY costs at most one poll interval, never a wrong answer.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Iterator
from typing import Final, TypeVar
from uuid import UUID

import structlog
from psycopg import sql

from domain.errors import DomainError
from infrastructure.postgres.connect import connect_async
from infrastructure.readmodels.change_notices import noticed_accounts
from infrastructure.readmodels.schema import ACCOUNTS_CHANNEL, TRANSACTIONS_CHANNEL
from infrastructure.settings import Settings

# The channels the projections NOTIFY after each commit, with their payloads.
CHANNELS: Final = (ACCOUNTS_CHANNEL, TRANSACTIONS_CHANNEL)

# The API contract: `min_version` waits up to 2 s, then 503 `projection_lagging`.
FRESHNESS_WAIT_S: Final = 2.0
# Re-check the read model this often even without a NOTIFY.
RECHECK_INTERVAL_S: Final = 0.1
# Past this many requests waiting at once, answer `projection_lagging` at once instead of
# queueing more: waiting requests hold sockets and memory.
WAITERS_MAX: Final = 10_000
# The listener sends a query this often when idle, so a silently dead connection shows.
LISTENER_HEARTBEAT_S: Final = 5.0
LISTENER_RECONNECT_S: Final = 1.0

T = TypeVar("T")

log = structlog.get_logger("vigil.query.freshness")


class ProjectionLagging(DomainError):
    """The read model has not reached the version asked for within the wait."""

    code = "projection_lagging"
    title = "Projection lagging"
    retry_after_s = 1


class ChangeWaiters:
    """Requests waiting for a change of one account on one channel, woken by NOTIFY."""

    def __init__(self, waiters_max: int = WAITERS_MAX) -> None:
        self._events: dict[tuple[str, str], set[asyncio.Event]] = {}
        self._count = 0
        self._waiters_max = waiters_max

    @contextlib.contextmanager
    def watch(self, channel: str, account_id: UUID) -> Iterator[asyncio.Event]:
        if self._count >= self._waiters_max:
            raise ProjectionLagging("too many requests are waiting for projections; retry")
        key = (channel, str(account_id))
        event = asyncio.Event()
        self._events.setdefault(key, set()).add(event)
        self._count += 1
        try:
            yield event
        finally:
            self._count -= 1
            events = self._events.get(key)
            if events is not None:
                events.discard(event)
                if not events:
                    del self._events[key]

    def notify(self, channel: str, payload: str) -> None:
        """Wake the requests waiting on the accounts the payload names. Most often none is
        waiting: then the payload is not even read."""
        if not self._events:
            return
        for account_id in noticed_accounts(payload):
            for event in self._events.get((channel, account_id), ()):
                event.set()

    def wake_all(self) -> None:
        """After a reconnect: notifications may have been missed, so everyone re-checks."""
        for events in self._events.values():
            for event in events:
                event.set()


def freshness_deadline() -> float:
    """The loop time by which a `min_version` request must have its answer."""
    return asyncio.get_running_loop().time() + FRESHNESS_WAIT_S


async def wait_for_projection(
    waiters: ChangeWaiters,
    channel: str,
    account_id: UUID,
    probe: Callable[[], Awaitable[T | None]],
    *,
    deadline: float,
) -> T:
    """`probe()` until it returns a value, woken by NOTIFY or the re-check poll.

    The event is cleared before each probe, so a NOTIFY landing during the probe's query
    makes the next wait return at once instead of being lost.
    """
    loop = asyncio.get_running_loop()
    with waiters.watch(channel, account_id) as changed:
        while True:
            changed.clear()
            found = await probe()
            if found is not None:
                return found
            remaining_s = deadline - loop.time()
            if remaining_s <= 0:
                raise ProjectionLagging(
                    f"the read model of account {account_id} has not caught up yet; retry"
                )
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(changed.wait(), min(remaining_s, RECHECK_INTERVAL_S))


class NotificationListener:
    """The process's one LISTEN connection; reconnects on its own, forever, until stopped."""

    def __init__(self, settings: Settings, waiters: ChangeWaiters) -> None:
        self._settings = settings
        self._waiters = waiters
        self._task: asyncio.Task[None] | None = None
        self.connected = False

    def start(self) -> None:
        assert self._task is None, "started twice"
        self._task = asyncio.create_task(self._run(), name="readmodel-listener")

    async def stop(self) -> None:
        if self._task is None:
            return
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task
        self._task = None

    async def is_connected(self) -> bool:
        return self.connected

    async def _run(self) -> None:
        while True:
            try:
                await self._listen()
            except Exception as error:
                # Whatever broke, keep listening: this task dying would leave every
                # `min_version` wait on the poll. The type only: driver messages can
                # carry connection strings.
                log.warning("readmodel_listener_lost", error=type(error).__name__)
            finally:
                self.connected = False
            await asyncio.sleep(LISTENER_RECONNECT_S)

    async def _listen(self) -> None:
        async with await connect_async(self._settings, "query-listen", autocommit=True) as conn:
            for channel in CHANNELS:
                await conn.execute(sql.SQL("LISTEN {}").format(sql.Identifier(channel)))
            self.connected = True
            self._waiters.wake_all()
            log.info("readmodel_listener_connected", channels=list(CHANNELS))
            while True:
                async for notify in conn.notifies(timeout=LISTENER_HEARTBEAT_S):
                    self._waiters.notify(notify.channel, notify.payload)
                await conn.execute("SELECT 1")
