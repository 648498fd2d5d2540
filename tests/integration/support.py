"""Helpers the integration tests share: a controllable clock, running commands, and the
store's events as the relay would publish them."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg

from application.commands import ReplyRecord, Submission
from application.envelope import IndexRow, envelope
from application.ledger import Ledger
from domain.integrity import Actor
from infrastructure.settings import Settings
from projections.envelope import Envelope

TELLER = Actor("alice", "teller")
SETTLE_S = 30.0
T0 = datetime(2026, 6, 1, 9, 0, tzinfo=UTC)


class Clock:
    """Each command one minute after the last; `jump` skips ahead (dormancy)."""

    def __init__(self, start: datetime = T0, step: timedelta = timedelta(minutes=1)) -> None:
        self.now = start
        self.step = step

    def __call__(self) -> datetime:
        self.now += self.step
        return self.now

    def jump(self, delta: timedelta) -> None:
        self.now += delta


class HookedSaver:
    """The ledger's real saver, counting its writes (one transaction each) and running
    `before(n)` ahead of the n-th: the test decides what happens while a group is on its
    way to the store (a rival's write, a failure, a wait)."""

    def __init__(self, ledger: Ledger, before: Callable[[int], object] | None = None) -> None:
        self.saver = ledger.saver
        self.before = before
        self.writes = 0
        ledger.saver = self

    def save_group(
        self, events: Sequence[Any], index_rows: Sequence[IndexRow], replies: Sequence[ReplyRecord]
    ) -> None:
        self.writes += 1
        if self.before is not None:
            self.before(self.writes)
        self.saver.save_group(events, index_rows, replies)


def run(ledger: Ledger, *commands: Any, actor: Actor = TELLER) -> None:
    """Each command in a group of its own; every one must succeed."""
    for command in commands:
        [outcome] = ledger.execute([Submission(command, actor, "corr-test")])
        assert outcome.error is None, outcome.error


def run_group(ledger: Ledger, *commands: Any, actor: Actor = TELLER) -> None:
    """All the commands in one group (one transaction); every one must succeed."""
    for outcome in ledger.execute([Submission(c, actor, "corr-test") for c in commands]):
        assert outcome.error is None, outcome.error


def stored_envelopes(ledger: Ledger) -> list[Envelope]:
    """Every stored event, in notification order, as the projections receive it."""
    out = []
    for notification in ledger.recorder.select_notifications(start=None, limit=100_000):
        event: Any = ledger.mapper.to_domain_event(notification)
        out.append(Envelope.from_json(envelope(notification.id, event)))
    return out


def rows(settings: Settings, sql: str, *params: Any) -> list[tuple[Any, ...]]:
    with psycopg.connect(settings.resolved_database_url()) as conn:
        return conn.execute(sql, params).fetchall()  # type: ignore[arg-type]


class Running:
    """`run(stop)` of a relay or consumer on an event loop of its own thread: `stop()` (and
    leaving the block) is its own shutdown, as on SIGTERM; `kill()` cancels it, a crash
    where nothing after the cancellation runs but the cleanup. What it raised, the
    cancellation included, is kept in `error` for the test to look at."""

    def __init__(self, run: Callable[[asyncio.Event], Any]) -> None:
        self._run = run
        self.error: BaseException | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._task: asyncio.Task[Any] | None = None
        self._ready = threading.Event()
        self._thread = threading.Thread(target=lambda: asyncio.run(self._main()), daemon=True)

    async def _main(self) -> None:
        self._loop, self._stop = asyncio.get_running_loop(), asyncio.Event()
        self._task = asyncio.current_task()
        self._ready.set()
        try:
            await self._run(self._stop)
        except BaseException as error:  # the test looks at it
            self.error = error

    def __enter__(self) -> Running:
        self._thread.start()
        assert self._ready.wait(5)
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self) -> None:
        if self._thread.is_alive():
            assert self._loop is not None
            assert self._stop is not None
            self._loop.call_soon_threadsafe(self._stop.set)
        self.join()

    def kill(self) -> None:
        if self._thread.is_alive():
            assert self._loop is not None
            assert self._task is not None
            self._loop.call_soon_threadsafe(self._task.cancel)
        self.join()

    def join(self) -> None:
        self._thread.join(SETTLE_S)
        assert not self._thread.is_alive(), "it did not stop"
