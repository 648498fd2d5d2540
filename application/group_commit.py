"""Group commit across requests: concurrent callers' commands are gathered for a short,
bounded window and committed together in one event-store transaction.

Callers hand their submissions over and wait: request threads with `execute`, coroutines
on an event loop with `submit` (no thread per waiting request). The judging thread takes
the first waiting request, gathers more until `window_s` has passed or `max_commands`
are in hand, and judges them in arrival order (each command still atomic on its own,
refusals failing alone); the writing thread saves the group and hands each caller its
own outcomes. The two overlap: the next group is judged (on top of the one in flight)
while the previous one is written, and is judged again, from the store, if that write
fails (`Ledger.decide_ahead`, `Ledger.write_decided`). A request's commands are never
split across groups.

Under concurrent load each group costs the store a commit and every stage downstream a
round, whatever its size, so groups are paced: while requests keep arriving together (the
last group held more than one), a group gathers until at least `interval_s` has passed
since the previous one closed. A lone caller, or one that waits for each reply before
sending the next, never waits more than `window_s`: pacing only ever delays requests that
would otherwise have shared nothing but a commit's cost.

If the group cannot be committed at all (the store is down, or it kept losing races),
every caller in it gets that error: nothing of theirs was written.
"""

from __future__ import annotations

import asyncio
import contextlib
import queue
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass

from application.commands import Outcome, Submission
from application.ledger import DecidedGroup, Ledger
from domain.errors import Unavailable

# A caller waits at most this long for its group; then it is told to retry (503).
CALLER_WAIT_S_MAX = 30.0
# A group at least this big is judged while the one before it is still being written;
# a smaller one goes on gathering until the writer is free. Judging ahead pays off for
# batches (a client's batch of 100 waiting for the writer made every command gathered
# behind it wait out the write and then the judging in turn); for a few single commands
# it would only split them into more transactions, each costing the store a commit and
# every stage downstream a round.
JUDGE_AHEAD_COMMANDS_MIN = 100


class _WriterIdle:
    """Put on the request queue when the writer has nothing left: wakes the gathering."""


WRITER_IDLE = _WriterIdle()


@dataclass
class _Request:
    submissions: Sequence[Submission]
    # Set once the request is settled, for a thread that waits (`execute`).
    done: threading.Event | None = None
    outcomes: list[Outcome] | None = None
    error: BaseException | None = None
    # Resolved on its event loop once the request is settled, for a coroutine (`submit`).
    settled: asyncio.Future[None] | None = None

    def result(self) -> list[Outcome]:
        if self.error is not None:
            raise self.error
        assert self.outcomes is not None
        return self.outcomes


def _finish(requests: Sequence[_Request]) -> None:
    """Tell every caller of these settled requests: threads at once, coroutines with one
    wake-up of their event loop for the lot (each wake-up is a system call, and hands the
    interpreter lock over twice, on the busiest threads of the process)."""
    by_loop: dict[asyncio.AbstractEventLoop, list[asyncio.Future[None]]] = {}
    for request in requests:
        if request.done is not None:
            request.done.set()
        if request.settled is not None:
            by_loop.setdefault(request.settled.get_loop(), []).append(request.settled)
    for loop, futures in by_loop.items():
        # RuntimeError: the event loop has closed, so nobody is waiting any more.
        with contextlib.suppress(RuntimeError):
            loop.call_soon_threadsafe(_settle, futures)


def _settle(futures: list[asyncio.Future[None]]) -> None:
    for settled in futures:
        # Already done: its caller stopped waiting (cancelled, or timed out).
        if not settled.done():
            settled.set_result(None)


class GroupCommitter:
    def __init__(
        self,
        ledger: Ledger,
        *,
        window_s: float,
        max_commands: int,
        judge_ahead_min: int = JUDGE_AHEAD_COMMANDS_MIN,
        interval_s: float = 0.0,
    ) -> None:
        assert window_s >= 0
        assert interval_s >= 0
        assert max_commands > 0
        assert judge_ahead_min > 0
        self.judge_ahead_min = judge_ahead_min
        self.ledger = ledger
        self.window_s = window_s
        self.interval_s = interval_s
        self.max_commands = max_commands
        self.groups_judged = 0
        self.groups_committed = 0
        self.commands_committed = 0
        self._queue: queue.SimpleQueue[_Request | _WriterIdle | None] = queue.SimpleQueue()
        # Groups judged and waiting for the writer: one at most, besides the one it writes.
        self._decided: queue.Queue[tuple[list[_Request], DecidedGroup] | None] = queue.Queue(1)
        self._in_flight = 0
        self._in_flight_changed = threading.Condition()
        self._closed = False
        # A request that would have taken a group past the cap starts the next one.
        self._carried: _Request | None = None
        # When the last group closed, and whether it held more than one request (pacing).
        self._last_closed = -float("inf")
        self._concurrent = False
        self._thread = threading.Thread(target=self._run, name="group-judge", daemon=True)
        self._writer = threading.Thread(target=self._write, name="group-write", daemon=True)
        self._writer.start()
        self._thread.start()

    def execute(self, submissions: Sequence[Submission]) -> list[Outcome]:
        """The outcomes of these commands, in order, once their group is committed."""
        if not submissions:
            return []
        done = threading.Event()
        request = self._enqueue(_Request(submissions, done=done))
        if not done.wait(CALLER_WAIT_S_MAX):
            raise Unavailable(f"no commit within {CALLER_WAIT_S_MAX:.0f} s; retry")
        return request.result()

    async def submit(self, submissions: Sequence[Submission]) -> list[Outcome]:
        """`execute` for coroutines: the event loop goes on serving while this waits."""
        if not submissions:
            return []
        loop = asyncio.get_running_loop()
        # A future and a timeout, not an Event under wait_for: that ran the wait as a task
        # of its own for every request.
        settled: asyncio.Future[None] = loop.create_future()
        request = self._enqueue(_Request(submissions, settled=settled))
        try:
            async with asyncio.timeout(CALLER_WAIT_S_MAX):
                await settled
        except TimeoutError:
            raise Unavailable(f"no commit within {CALLER_WAIT_S_MAX:.0f} s; retry") from None
        return request.result()

    def _enqueue(self, request: _Request) -> _Request:
        if self._closed:
            raise Unavailable("the command service is stopping; retry")
        self._queue.put(request)
        return request

    def close(self) -> None:
        self._closed = True
        self._queue.put(None)
        self._thread.join(timeout=CALLER_WAIT_S_MAX)
        self._writer.join(timeout=CALLER_WAIT_S_MAX)

    def _run(self) -> None:
        try:
            while True:
                first, self._carried = self._carried or self._queue.get(), None
                if first is None:
                    return
                if isinstance(first, _WriterIdle):
                    continue
                group = self._gather(first)
                self._judge(group)
                if group[-1] is None:
                    return
        finally:
            self._decided.put(None)

    def _judge(self, group: list[_Request | None]) -> None:
        requests = [r for r in group if r is not None]
        submissions = [s for r in requests for s in r.submissions]
        try:
            decided = self.ledger.decide_ahead(submissions, drained=self._drained)
        except BaseException as error:  # every caller must hear back, whatever happened
            self._fail(requests, error)
            return
        with self._in_flight_changed:
            self._in_flight += 1
            self.groups_judged += 1
        self._decided.put((requests, decided))

    def _drained(self) -> None:
        """Wait until every group judged has been written."""
        with self._in_flight_changed:
            self._in_flight_changed.wait_for(lambda: self._in_flight == 0)

    def _write(self) -> None:
        while (item := self._decided.get()) is not None:
            requests, decided = item
            try:
                self._commit(requests, decided)
            finally:
                with self._in_flight_changed:
                    self._in_flight -= 1
                    self._in_flight_changed.notify_all()
                    if not self._in_flight:
                        self._queue.put(WRITER_IDLE)

    def _gather(self, first: _Request) -> list[_Request | None]:
        """The first request and whatever else arrives within the window, up to the cap;
        and after the window, whatever arrives until the writer is free, unless the group
        is already big enough to be judged ahead (`judge_ahead_min` commands). While
        requests arrive together, the group also gathers until `interval_s` after the
        previous group closed. Within the window the thread sleeps and then takes what
        queued up, rather than waking for each request as it arrives: each wake-up is a
        hand-over of the interpreter lock on a busy process, and a lone caller waits out
        the window either way."""
        group: list[_Request | None] = [first]
        count = len(first.submissions)
        deadline = time.monotonic() + self.window_s
        if self._concurrent:
            deadline = max(deadline, self._last_closed + self.interval_s)
        while count < self.max_commands:
            remaining_s = deadline - time.monotonic()
            if remaining_s > 0:
                # Gathering: let requests queue up without waking this thread for each.
                time.sleep(remaining_s)
                remaining_s = 0
            if remaining_s <= 0 and count < self.judge_ahead_min and self._writing():
                remaining_s = CALLER_WAIT_S_MAX  # woken by a request or by WRITER_IDLE
            try:
                if remaining_s > 0:
                    request = self._queue.get(timeout=remaining_s)
                else:
                    request = self._queue.get_nowait()
            except queue.Empty:
                break
            if isinstance(request, _WriterIdle):
                continue
            if request is not None and count + len(request.submissions) > self.max_commands:
                self._carried = request
                break
            group.append(request)
            if request is None:
                break
            count += len(request.submissions)
        self._concurrent = len(group) > 1
        self._last_closed = time.monotonic()
        return group

    def _writing(self) -> bool:
        with self._in_flight_changed:
            return self._in_flight > 0

    def _commit(self, requests: list[_Request], decided: DecidedGroup) -> None:
        submissions = decided.submissions
        try:
            outcomes = self.ledger.write_decided(decided)
        except BaseException as error:  # every caller must hear back, whatever happened
            self._fail(requests, error)
            return
        assert len(outcomes) == len(submissions), "one outcome per command"
        self.groups_committed += 1
        self.commands_committed += len(submissions)
        start = 0
        for request in requests:
            end = start + len(request.submissions)
            request.outcomes = outcomes[start:end]
            start = end
        _finish(requests)

    @staticmethod
    def _fail(requests: list[_Request], error: BaseException) -> None:
        for request in requests:
            request.error = error
        _finish(requests)
