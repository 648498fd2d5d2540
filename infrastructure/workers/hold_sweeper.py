"""The hold sweep: expires pending holds past their `expires_at`, as `system:holds`.

Runs in the case opener process, every `HOLD_SWEEP_INTERVAL_S`. It learns which accounts
placed holds from the event index (`HoldPlaced` rows, in notification order, from those
of the last 31 days at start: no hold lasts longer than 30), loads each such account
once to learn when its next hold falls due, and loads it again only then. The account
decides: an `ExpireHold` of a hold already captured, voided or expired changes nothing,
so several sweeps running at once (several case openers) expire each hold once, the
store's optimistic concurrency settling which of them writes.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any
from uuid import UUID

import psycopg
import structlog
from eventsourcing.persistence import PersistenceError
from prometheus_client import Counter
from psycopg.sql import SQL, Identifier

from application.commands import ExpireHold, Submission
from application.ledger import Ledger
from domain.account import PendingHold
from domain.errors import AccountNotFound, DomainError
from domain.integrity import SYSTEM_ROLE, Actor
from infrastructure.eventstore.schema import INDEX_TABLE, store_names
from infrastructure.postgres.connect import connect
from infrastructure.settings import Settings

log = structlog.get_logger("vigil.hold_sweeper")

HOLDS_ACTOR = Actor("system:holds", SYSTEM_ROLE)
# Holds last at most 30 days; a day more covers clocks that disagree.
LOOKBACK = timedelta(days=31)
DISCOVER_ROWS_MAX = 5_000

HOLDS_EXPIRED = Counter(
    "vigil_holds_expired_total", "Pending holds the sweep expired (each hold once)."
)


def utc_now() -> datetime:
    return datetime.now(UTC)


class HoldSweeper:
    """One sweep's state: the index position read up to, and when each account with
    pending holds is next due. `sweep_once` is synchronous (a thread runs it)."""

    def __init__(self, ledger: Ledger, clock: Callable[[], datetime] = utc_now) -> None:
        self.ledger = ledger
        self.clock = clock
        self.position: int | None = None
        self._due: list[tuple[datetime, UUID]] = []
        self._scheduled: dict[UUID, datetime] = {}
        self.expired = 0
        schema, _ = store_names(ledger)
        self._index = Identifier(schema, INDEX_TABLE)

    def sweep_once(self, conn: psycopg.Connection[Any]) -> int:
        """Learn of new holds, expire those due; the number expired now."""
        self._discover(conn)
        now = self.clock()
        expired = 0
        while self._due and self._due[0][0] <= now:
            at, account_id = heapq.heappop(self._due)
            if self._scheduled.get(account_id) != at:
                continue  # rescheduled since
            del self._scheduled[account_id]
            try:
                expired += self._expire_due(account_id, now)
            except BaseException:
                # The store went away mid-sweep: keep the account due, or its holds would
                # wait for the next restart of this process.
                self._schedule(account_id, now + timedelta(seconds=1))
                raise
        self.expired += expired
        return expired

    @property
    def accounts_watched(self) -> int:
        return len(self._scheduled)

    def _discover(self, conn: psycopg.Connection[Any]) -> None:
        if self.position is None:
            self.position = self._start_position(conn)
        while True:
            rows = conn.execute(
                SQL(
                    "SELECT notification_id, aggregate_id FROM {} WHERE event_type = "
                    "'HoldPlaced' AND notification_id > %s ORDER BY notification_id LIMIT %s"
                ).format(self._index),
                (self.position, DISCOVER_ROWS_MAX),
            ).fetchall()
            now = self.clock()
            for notification_id, account_id in rows:
                self.position = notification_id
                self._schedule(account_id, now)  # loaded at once, to learn its expiries
            if len(rows) < DISCOVER_ROWS_MAX:
                return

    def _start_position(self, conn: psycopg.Connection[Any]) -> int:
        since = self.clock() - LOOKBACK
        row = conn.execute(
            SQL(
                "SELECT (SELECT min(notification_id) FROM {index} WHERE occurred_at >= %s), "
                "(SELECT coalesce(max(notification_id), 0) FROM {index})"
            ).format(index=self._index),
            (since,),
        ).fetchone()
        assert row is not None
        first, head = row
        return head if first is None else int(first) - 1

    def _schedule(self, account_id: UUID, at: datetime) -> None:
        known = self._scheduled.get(account_id)
        if known is not None and known <= at:
            return
        self._scheduled[account_id] = at
        heapq.heappush(self._due, (at, account_id))

    def _expire_due(self, account_id: UUID, now: datetime) -> int:
        try:
            account = self.ledger.get_account(account_id)
            due = account.due_holds(now)
            expired = 0
            if due:
                outcomes = self.ledger.execute(
                    [
                        Submission(
                            ExpireHold(UUID(hold.hold_id), account_id, _case_of(hold)),
                            HOLDS_ACTOR,
                            correlation_id=f"hold-expiry:{hold.hold_id}",
                        )
                        for hold in due
                    ]
                )
                for hold, outcome in zip(due, outcomes, strict=True):
                    if outcome.error is not None:
                        raise outcome.error
                    assert outcome.body is not None
                    if outcome.body.get("changed"):
                        expired += 1
                        HOLDS_EXPIRED.inc()
                        log.info("hold_expired", hold_id=hold.hold_id, account_id=str(account_id))
                account = self.ledger.get_account(account_id)
        except AccountNotFound:
            return 0
        except DomainError as error:
            # The store was unavailable, or the account kept changing: try again soon.
            log.warning("hold_sweep_failed", account_id=str(account_id), error=error.detail)
            self._schedule(account_id, now + timedelta(seconds=1))
            return 0
        following = account.next_expiry()
        if following is not None:
            self._schedule(account_id, following)
        return expired


def _case_of(hold: PendingHold) -> UUID | None:
    """The case of a hold screening made: its expiry closes it."""
    return None if hold.review is None else UUID(hold.review["case_id"])


def discard_dead_connections(ledger: Ledger) -> None:
    """Drop the ledger's pooled connections that died with the server (a restart): else
    each would fail one more sweep before the pool let it go."""
    datastore = getattr(ledger.recorder, "datastore", None)
    pool = getattr(datastore, "pool", None)
    if pool is not None:
        with contextlib.suppress(Exception):  # the server may still be away: next time
            pool.check()


async def run_hold_sweeper(
    settings: Settings, ledger: Ledger, stop: asyncio.Event, sweeper: HoldSweeper | None = None
) -> None:
    """Sweep every `HOLD_SWEEP_INTERVAL_S` until `stop`; a failed sweep (the database
    away) is logged and tried again at the next interval, on a new connection."""
    sweeper = sweeper or HoldSweeper(ledger)
    conn: psycopg.Connection[Any] | None = None
    log.info("hold_sweeper_started", interval_s=settings.hold_sweep_interval_s)
    try:
        while not stop.is_set():
            try:
                if conn is None or conn.closed:
                    conn = await asyncio.to_thread(
                        connect, settings, "hold-sweeper", autocommit=True
                    )
                await asyncio.to_thread(sweeper.sweep_once, conn)
            except (psycopg.Error, OSError, PersistenceError) as error:
                # The ledger's own reads fail as the library's PersistenceError (an
                # OperationalError when the server went away): the same outage.
                log.warning("hold_sweep_unavailable", error=f"{type(error).__name__}: {error}")
                if conn is not None:
                    conn.close()
                conn = None
                if isinstance(error, PersistenceError):
                    await asyncio.to_thread(discard_dead_connections, ledger)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), settings.hold_sweep_interval_s)
    finally:
        if conn is not None:
            conn.close()
