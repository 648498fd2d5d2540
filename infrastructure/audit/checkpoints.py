"""Signed checkpoints over the whole event store (the API contract), written by `vigil relay`.

A checkpoint says: the events up to `notification_id`, in notification order, fold to
`rolling_hash`, and this key said so at `time`:

    rolling_0 = "0" * 64
    rolling_n = sha256((rolling_{n-1} + hash_n).encode("ascii")).hexdigest()

where `hash_n` is the n-th stored event's `hash` (64 lowercase hex digits), and the
signature is Ed25519 over `canonical({"notification_id", "rolling_hash", "time"})`
(sorted keys, no spaces, `time` as `YYYY-MM-DDTHH:MM:SS.ffffffZ`). Each checkpoint is
stored in `public.audit_checkpoints` and then appended (fsync) to the checkpoint file,
outside the database, so a tail deleted together with its checkpoint rows is still caught.

Every `checkpoint_interval_s`, if events came after the last checkpoint, the checkpointer
folds them (page by page) and signs a new one. One instance per database (an advisory
lock); it resumes from the last stored checkpoint and first appends to the file any
checkpoint a crash left out of it. Reading `notification_id > position` cannot pass over
a gap that fills later: the recorder's table lock makes commit order equal id order.

In the relay process the relay hands over the hashes of the events it has just read (a
`HashFeed`), so the checkpointer folds those without reading and decoding every event a
second time; whatever the feed does not hold (a restart, a rewind, more than it keeps)
it reads from the store as before.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import os
import threading
from bisect import bisect_right
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final

import psycopg
import structlog
from eventsourcing.persistence import StoredEvent
from eventsourcing.utils import resolve_topic
from prometheus_client import Gauge

from application.ledger import Ledger
from domain.chained import ChainedAggregate
from domain.integrity import canonical, format_timestamp
from infrastructure.audit.signing import Signer
from infrastructure.eventstore.envelopes import stored_fields
from infrastructure.eventstore.ledger import open_ledger
from infrastructure.eventstore.schema import EVENTS_TABLE, append_only_statements
from infrastructure.postgres.connect import connect
from infrastructure.postgres.locks import CHECKPOINT_LOCK_ID, migration_lock
from infrastructure.settings import Settings

log = structlog.get_logger("vigil.checkpoints")

ROLLING_GENESIS: Final = "0" * 64
CHECKPOINT_FILE: Final = "checkpoints.jsonl"
CHECKPOINT_FIELDS: Final = ("notification_id", "rolling_hash", "time", "key_id", "signature")

POSITION: Final = Gauge(
    "vigil_checkpoint_position", "Notification id of the last signed checkpoint."
)

DDL: Final = """
CREATE TABLE IF NOT EXISTS public.audit_checkpoints (
    notification_id bigint PRIMARY KEY CHECK (notification_id > 0),
    rolling_hash text NOT NULL,
    time timestamptz NOT NULL,
    key_id text NOT NULL,
    signature text NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now()
)
"""
CHECKPOINTS_TABLE: Final = "audit_checkpoints"
CHECKPOINT_COLUMNS: Final = "notification_id, rolling_hash, time, key_id, signature"
EVENTS_PAGE: Final = (
    f"SELECT notification_id, originator_id, originator_version, topic, state "
    f"FROM {EVENTS_TABLE} WHERE notification_id > %s ORDER BY notification_id LIMIT %s"
)


def fold(rolling_hash: str, event_hash: str) -> str:
    """The rolling hash after one more event."""
    return hashlib.sha256((rolling_hash + event_hash).encode("ascii")).hexdigest()


def checkpoint_payload(notification_id: int, rolling_hash: str, time: str) -> bytes:
    """The exact bytes a checkpoint's signature covers."""
    return canonical(
        {"notification_id": notification_id, "rolling_hash": rolling_hash, "time": time}
    )


@dataclass(frozen=True, slots=True)
class Checkpoint:
    notification_id: int
    rolling_hash: str
    time: str
    key_id: str
    signature: str

    def payload(self) -> bytes:
        return checkpoint_payload(self.notification_id, self.rolling_hash, self.time)

    def line(self) -> bytes:
        """The checkpoint file's line: canonical JSON of all five fields, newline-ended."""
        return canonical(asdict(self)) + b"\n"

    @classmethod
    def from_json(cls, data: object) -> Checkpoint:
        if not isinstance(data, dict) or set(data) != set(CHECKPOINT_FIELDS):
            raise ValueError(f"a checkpoint has exactly the fields {', '.join(CHECKPOINT_FIELDS)}")
        notification_id = data["notification_id"]
        if not isinstance(notification_id, int) or notification_id <= 0:
            raise ValueError("notification_id must be a positive integer")
        texts = [data[name] for name in CHECKPOINT_FIELDS[1:]]
        if not all(isinstance(text, str) for text in texts):
            raise ValueError("rolling_hash, time, key_id and signature must be strings")
        return cls(notification_id, *texts)

    @classmethod
    def from_row(cls, row: tuple[Any, ...]) -> Checkpoint:
        notification_id, rolling_hash, time, key_id, signature = row[:5]
        return cls(int(notification_id), rolling_hash, format_timestamp(time), key_id, signature)


def checkpoint_file(settings: Settings) -> Path:
    return settings.checkpoint_file or settings.var_dir / CHECKPOINT_FILE


def migrate(conn: psycopg.Connection[Any]) -> None:
    """Create the checkpoints table, append-only like the events (for `vigil migrate`
    and services that migrate on start)."""
    with migration_lock(conn):
        conn.execute(DDL)
        for statement in append_only_statements("public", [CHECKPOINTS_TABLE]):
            conn.execute(statement)


def stored_checkpoints(
    conn: psycopg.Connection[Any], page_size: int, after: int = 0
) -> Iterator[tuple[Checkpoint, datetime]]:
    """The table's checkpoints above `after`, in notification order, with `created_at`."""
    while True:
        rows = conn.execute(
            f"SELECT {CHECKPOINT_COLUMNS}, created_at FROM public.audit_checkpoints "
            "WHERE notification_id > %s ORDER BY notification_id LIMIT %s",
            (after, page_size),
        ).fetchall()
        for row in rows:
            yield Checkpoint.from_row(row), row[5]
        if len(rows) < page_size:
            return
        after = int(rows[-1][0])


def file_lines(path: Path, end_offset: int) -> Iterator[tuple[int, bytes]]:
    """(line number, bytes) of the file's complete lines before `end_offset`; a last
    line without its newline is still being written and is left out."""
    if not path.exists():
        return
    with path.open("rb") as lines:
        read = 0
        for number, line in enumerate(lines, start=1):
            read += len(line)
            if read > end_offset or not line.endswith(b"\n"):
                return
            yield number, line


def stored_events_page(
    conn: psycopg.Connection[Any], after: int, limit: int
) -> list[tuple[int, StoredEvent]]:
    rows = conn.execute(EVENTS_PAGE, (after, limit)).fetchall()
    return [
        (int(nid), StoredEvent(originator_id, int(version), topic, bytes(state)))
        for nid, originator_id, version, topic, state in rows
    ]


def decoded_hash(ledger: Ledger, stored: StoredEvent) -> str:
    """The event's own hash, read from its stored state (decrypted): building the whole
    event to read one field was most of the checkpointer's time."""
    if not issubclass(resolve_topic(stored.topic), ChainedAggregate.Event):
        raise TypeError(f"not a chained event: {stored.topic}")
    event_hash = stored_fields(ledger, stored).get("hash")
    if not isinstance(event_hash, str):
        raise TypeError(f"a chained event without its hash: {stored.topic}")
    return event_hash


@dataclass(frozen=True, slots=True)
class HashSpan:
    """Every stored event with a notification id in (`after`, `ids[-1]`], in id order,
    with its hash."""

    after: int
    ids: Sequence[int]
    hashes: Sequence[str]


class HashFeed:
    """The hashes of the events the relay has read, for the checkpointer to fold: the
    relay offers each batch it read (all the store's events after its position, up to a
    limit); the checkpointer takes the ones right after its own position. Thread-safe (both
    work in worker threads) and bounded: past `events_max` held, the oldest spans go and
    the checkpointer reads those events from the store. Spans of a relay that rewound
    overlap earlier ones; any span that covers the position will do, as each holds every
    event of its range."""

    def __init__(self, events_max: int = 200_000) -> None:
        self.events_max = events_max
        self._spans: list[HashSpan] = []
        self._events = 0
        self._lock = threading.Lock()

    @property
    def events(self) -> int:
        return self._events

    def offer(self, span: HashSpan) -> None:
        assert span.ids, "a span holds events"
        assert len(span.ids) == len(span.hashes), "a hash for each event"
        assert span.after < span.ids[0], "a span starts after its position"
        with self._lock:
            self._spans.append(span)
            self._events += len(span.ids)
            while self._events > self.events_max:
                self._events -= len(self._spans.pop(0).ids)

    def take(self, position: int, limit: int) -> list[tuple[int, str]]:
        """Up to `limit` (notification id, hash) pairs of the events right after
        `position`, in order; empty when no span covers it. Spans wholly at or below
        `position` are let go."""
        with self._lock:
            kept = [span for span in self._spans if span.ids[-1] > position]
            self._events -= sum(len(s.ids) for s in self._spans) - sum(len(s.ids) for s in kept)
            self._spans = kept
            for span in kept:
                if span.after <= position:
                    start = bisect_right(span.ids, position)
                    end = start + limit
                    return list(zip(span.ids[start:end], span.hashes[start:end], strict=True))
        return []


@dataclass(frozen=True)
class CheckpointLimits:
    page_events: int = 5_000  # read and decoded together
    events_max: int = 100_000  # per checkpoint: a long backlog is signed in steps
    lock_retry_s: float = 1.0
    backoff_s_min: float = 0.1
    backoff_s_max: float = 5.0


class CheckpointWriter:
    """Synchronous: one autocommit session holding the checkpointer's lock. Tests drive
    it directly; `Checkpointer` runs it in a worker thread."""

    def __init__(
        self,
        settings: Settings,
        ledger: Ledger,
        signer: Signer,
        limits: CheckpointLimits | None = None,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
        feed: HashFeed | None = None,
    ) -> None:
        self.settings = settings
        self.feed = feed
        self.fed_events = 0  # folded from the feed, not read from the store
        self.ledger = ledger
        self.signer = signer
        self.limits = limits or CheckpointLimits()
        self.clock = clock
        self.path = checkpoint_file(settings)
        self.conn = connect(settings, "checkpointer", autocommit=True)
        self.position = 0
        self.rolling_hash = ROLLING_GENESIS
        self.blocked_at: int | None = None  # an event that cannot be decoded stops us here
        self.backlog = False  # the last `write_next` stopped at `events_max`

    def close(self) -> None:
        with contextlib.suppress(psycopg.Error):
            self.conn.close()  # releases the lock

    def try_lock(self) -> bool:
        row = self.conn.execute("SELECT pg_try_advisory_lock(%s)", (CHECKPOINT_LOCK_ID,)).fetchone()
        return bool(row and row[0])

    def resume(self) -> bool:
        """Continue from the last stored checkpoint and bring the file up to the table.
        False (and nothing signed) if the file is ahead of the table (rows were removed)
        or its last line is not a checkpoint. One checkpoint file per database."""
        if self.settings.migrate_on_start:
            migrate(self.conn)
        row = self.conn.execute(
            f"SELECT {CHECKPOINT_COLUMNS} FROM public.audit_checkpoints "
            "ORDER BY notification_id DESC LIMIT 1"
        ).fetchone()
        last = None if row is None else Checkpoint.from_row(row)
        self.position = 0 if last is None else last.notification_id
        self.rolling_hash = ROLLING_GENESIS if last is None else last.rolling_hash
        try:
            filed = _last_line_checkpoint(self.path)
        except ValueError as error:
            # Not a line we wrote: someone changed the file. Sign nothing until they look.
            log.error("checkpoint_file_unreadable", file=str(self.path), error=str(error))
            return False
        filed_position = 0 if filed is None else filed.notification_id
        if filed_position > self.position:
            log.error(
                "checkpoint_table_behind_file",
                table_position=self.position,
                file_position=filed_position,
                file=str(self.path),
            )
            return False
        appended = 0
        chunk: list[bytes] = []
        for checkpoint, _ in stored_checkpoints(self.conn, self.limits.page_events, filed_position):
            chunk.append(checkpoint.line())
            if len(chunk) >= self.limits.page_events:
                self._append(b"".join(chunk))
                appended, chunk = appended + len(chunk), []
        if chunk:
            self._append(b"".join(chunk))
            appended += len(chunk)
        if appended:
            log.warning("checkpoint_file_caught_up", lines=appended, file=str(self.path))
        POSITION.set(self.position)
        log.info("checkpointer_resumed", position=self.position, file=str(self.path))
        return True

    def write_next(self) -> Checkpoint | None:
        """Fold the events after the last checkpoint (at most `events_max`) and sign them;
        None when there is nothing new. `backlog` says whether more are waiting."""
        position, rolling_hash = self.position, self.rolling_hash
        self.backlog = False
        while True:
            # Notification ids, not events: gaps only make a step smaller.
            room = self.limits.events_max - (position - self.position)
            if room <= 0:
                self.backlog = True
                break
            page_size = min(self.limits.page_events, room)
            fed = self.feed.take(position, page_size) if self.feed is not None else []
            if fed:
                for _, event_hash in fed:
                    rolling_hash = fold(rolling_hash, event_hash)
                position = fed[-1][0]
                self.fed_events += len(fed)
                continue
            page = stored_events_page(self.conn, position, page_size)
            for notification_id, stored in page:
                try:
                    event_hash = decoded_hash(self.ledger, stored)
                except Exception as error:  # any decoding failure blocks
                    self._blocked(notification_id, error)
                    return self._sign(position, rolling_hash)
                rolling_hash = fold(rolling_hash, event_hash)
                position = notification_id
            if len(page) < page_size:
                break
        return self._sign(position, rolling_hash)

    def _sign(self, position: int, rolling_hash: str) -> Checkpoint | None:
        if position == self.position:
            return None
        time = format_timestamp(self.clock())
        key_id, signature = self.signer.sign(checkpoint_payload(position, rolling_hash, time))
        checkpoint = Checkpoint(position, rolling_hash, time, key_id, signature)
        # The table first: a crash before the file is caught up by `resume`.
        self.conn.execute(
            f"INSERT INTO public.audit_checkpoints ({CHECKPOINT_COLUMNS}) "
            "VALUES (%s, %s, %s, %s, %s)",
            (position, rolling_hash, datetime.fromisoformat(time), key_id, signature),
        )
        self._append(checkpoint.line())
        self.position, self.rolling_hash = position, rolling_hash
        POSITION.set(position)
        log.debug("checkpoint_signed", notification_id=position, key_id=key_id)
        return checkpoint

    def _blocked(self, notification_id: int, error: Exception) -> None:
        if self.blocked_at != notification_id:
            # `vigil audit verify` reports the event; signing past it would vouch for it.
            log.error(
                "checkpoint_blocked_by_undecodable_event",
                notification_id=notification_id,
                error=f"{type(error).__name__}: {error}",
            )
        self.blocked_at = notification_id

    def _append(self, lines: bytes) -> None:
        created = not self.path.exists()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            written = os.write(fd, lines)
            assert written == len(lines), "a short write to the checkpoint file"
            os.fsync(fd)
        finally:
            os.close(fd)
        if created:
            _fsync_directory(self.path.parent)


def _last_line_checkpoint(path: Path) -> Checkpoint | None:
    """The file's last complete line; a torn last line (a crash mid-write, never
    fsynced) is cut off first, and `resume` appends it again from the table."""
    if not path.exists():
        return None
    with path.open("r+b") as file:
        size = file.seek(0, os.SEEK_END)
        end = size
        tail = b""
        while end > 0 and tail.count(b"\n") < 2:
            start = max(0, end - 4_096)
            file.seek(start)
            tail = file.read(end - start) + tail
            end = start
        if tail and not tail.endswith(b"\n"):
            keep = end + tail.rfind(b"\n") + 1
            log.warning("checkpoint_file_torn_line_cut", file=str(path), bytes=size - keep)
            file.truncate(keep)
            tail = tail[: keep - end]
    lines = tail.splitlines()
    if not lines:
        return None
    return Checkpoint.from_json(json.loads(lines[-1]))


def _fsync_directory(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class Checkpointer:
    """Runs `CheckpointWriter` every `checkpoint_interval_s` until `stop` is set, in the
    relay process; store outages are retried with a backoff, as the relay does."""

    def __init__(
        self,
        settings: Settings,
        limits: CheckpointLimits | None = None,
        feed: HashFeed | None = None,
    ) -> None:
        self.settings = settings
        self.limits = limits or CheckpointLimits(page_events=settings.verify_page_events)
        self.feed = feed
        self.written = 0

    async def run_until(self, stop: asyncio.Event) -> None:
        signer = Signer.from_settings(self.settings)  # a missing key stops the relay at once
        ledger = await asyncio.to_thread(open_ledger, self.settings)
        backoff_s = self.limits.backoff_s_min
        try:
            while not stop.is_set():
                try:
                    await self._session(stop, ledger, signer)
                    backoff_s = self.limits.backoff_s_min
                except (psycopg.Error, OSError) as error:
                    log.warning("checkpointer_failed", error=f"{type(error).__name__}: {error}")
                    await _sleep_or_stop(stop, backoff_s)
                    backoff_s = min(backoff_s * 2, self.limits.backoff_s_max)
        finally:
            await asyncio.to_thread(ledger.close)

    async def _session(self, stop: asyncio.Event, ledger: Ledger, signer: Signer) -> None:
        writer = await asyncio.to_thread(
            CheckpointWriter, self.settings, ledger, signer, self.limits, feed=self.feed
        )
        try:
            while not await asyncio.to_thread(writer.try_lock):
                if await _sleep_or_stop(stop, self.limits.lock_retry_s):
                    return
            while not await asyncio.to_thread(writer.resume):
                # Someone removed checkpoint rows: sign nothing until an operator looks.
                if await _sleep_or_stop(stop, self.limits.backoff_s_max):
                    return
            while not stop.is_set():
                checkpoint = await asyncio.to_thread(writer.write_next)
                self.written += checkpoint is not None
                if not writer.backlog:
                    await _sleep_or_stop(stop, self.settings.checkpoint_interval_s)
        finally:
            await asyncio.to_thread(writer.close)


async def _sleep_or_stop(stop: asyncio.Event, seconds: float) -> bool:
    """Wait `seconds` or until `stop`; whether `stop` is set."""
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), timeout=seconds)
    return stop.is_set()
