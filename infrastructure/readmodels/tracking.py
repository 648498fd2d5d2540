"""Applies projection rows and tracking in PostgreSQL: one transaction per fetched batch.

Exactly once by tracking (by design): each projection records every notification id it
receives (one row each, `ON CONFLICT DO NOTHING`), applies only the ids that were new,
and keeps a contiguous high-water mark, compacting the rows at or below it.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field
from enum import Enum
from typing import Any, Final, TypeVar
from uuid import UUID

import structlog
from psycopg import AsyncConnection

from infrastructure.eventstore.schema import EVENTS_TABLE
from infrastructure.postgres.arrays import execute_typed
from infrastructure.readmodels.balances_cache import CacheEntry, newest_entries
from infrastructure.readmodels.change_notices import notice_payloads
from infrastructure.readmodels.quarantine import (
    apply_isolating,
    next_version,
    quarantined_versions,
    record_quarantine,
)
from infrastructure.readmodels.schema import NOTIFY_CHANNELS, SCHEMA
from infrastructure.readmodels.writes import write_batch
from projections.batch import fold
from projections.envelope import Envelope
from projections.ledger import PROJECTORS

R = TypeVar("R")
S = TypeVar("S")
D = TypeVar("D", bound="Decided")

# How many stored ids one step of the mark's walk reads at most; the walk goes on step by
# step until it stops at an id not yet applied, or at the store's end. The first step reads
# about as many as the batch could let the mark pass (MARK_SCAN_FIRST more than it
# received) and each further step twice as many as the one before, up to MARK_SCAN_MAX:
# a short walk reads few rows, and a long one (a catch-up with tens of thousands of ids
# tracked above the mark) takes a few round trips, not one per 10,000 ids.
MARK_SCAN_FIRST = 1_000
MARK_SCAN_MAX = 160_000
log = structlog.get_logger("vigil.projections")


@dataclass
class BatchResult:
    applied: int = 0
    duplicates: int = 0
    deferred: int = 0
    position: int = 0
    touched_versions: dict[UUID, int] = field(default_factory=dict)
    # The balances cache's entries of the account rows written, by account.
    cached: dict[str, CacheEntry] = field(default_factory=dict)

    @staticmethod
    def merged(parts: list[BatchResult]) -> BatchResult:
        """The parts of a batch applied one after the other, as one result."""
        whole = BatchResult()
        for part in parts:
            whole.applied += part.applied
            whole.duplicates += part.duplicates
            whole.deferred += part.deferred
            whole.position = max(whole.position, part.position)
            for account_id, version in part.touched_versions.items():
                previous = whole.touched_versions.get(account_id, 0)
                whole.touched_versions[account_id] = max(previous, version)
        whole.cached = newest_entries(*([*part.cached.values()] for part in parts))
        return whole


async def apply_batch(
    conn: AsyncConnection[Any],
    projection: str,
    events: Sequence[Envelope],
    schema: str = SCHEMA,
) -> BatchResult:
    """Apply the new events of a batch and advance the mark, all in one transaction, with
    a fixed number of statements whatever the batch's size (`projections/batch.py`). An
    event whose content the projection cannot apply is quarantined (`quarantine.py`) and
    the rest of the batch applied around it."""
    project = PROJECTORS[projection]

    async def load(batch: Sequence[Envelope]) -> dict[UUID, int] | None:
        return await _projected_versions(conn, projection, batch)

    def decide(
        batch: Sequence[Envelope],
        versions: dict[UUID, int] | None,
        fresh: set[int],
        skipped: Mapping[UUID, set[int]],
    ) -> Sorted:
        return _sort(batch, fresh, versions, skipped)

    async def write(sorted_out: Sorted) -> None:
        rows = [row for event in sorted_out.to_project for row in project(event)]
        entries = await write_batch(conn, fold(rows))
        sorted_out.result.cached = {entry[0]: entry for entry in entries}
        channel = NOTIFY_CHANNELS.get(projection)
        touched = sorted_out.result.touched_versions
        if channel and touched:
            await execute_typed(
                conn,
                "SELECT pg_notify(%s, payload) FROM unnest(%b::text[]) AS payload",
                (channel, notice_payloads(touched)),
            )

    async def once(batch: Sequence[Envelope]) -> BatchResult:
        decided = await apply_tracked(conn, projection, batch, schema, load, decide, write)
        return decided.result

    return await apply_or_set_aside(conn, projection, events, schema, once, BatchResult.merged)


async def apply_or_set_aside(
    conn: AsyncConnection[Any],
    projection: str,
    events: Sequence[Envelope],
    schema: str,
    once: Callable[[Sequence[Envelope]], Awaitable[R]],
    merge: Callable[[list[R]], R],
) -> R:
    """`once(events)`, or, if an event's content makes it fail, the events around the
    ones that fail alone, which are quarantined and tracked as done (`quarantine.py`)."""

    async def set_aside(event: Envelope, error: BaseException) -> None:
        await quarantine_event(conn, projection, event, error, schema)

    return await apply_isolating(projection, events, once, set_aside, merge)


async def quarantine_event(
    conn: AsyncConnection[Any],
    projection: str,
    event: Envelope,
    error: BaseException,
    schema: str = SCHEMA,
) -> None:
    """Record the event as quarantined and track it as done, in one transaction."""
    async with conn.transaction():
        await use_schema(conn, schema)
        position, fresh = await start_batch(conn, projection, [event])
        if event.notification_id in fresh:
            await record_quarantine(conn, projection, event, error)
            await finish_batch(conn, projection, position, {event.notification_id}, 0)


@dataclass
class Decided:
    """A batch's new events sorted out by a projection (pure; nothing written yet)."""

    result: BatchResult = field(default_factory=BatchResult)
    received: set[int] = field(default_factory=set)  # the ids to track as done
    # Early events (a version is missing before them), with the version they wait behind.
    deferred: list[tuple[Envelope, int]] = field(default_factory=list)


async def apply_tracked(
    conn: AsyncConnection[Any],
    projection: str,
    events: Sequence[Envelope],
    schema: str,
    load: Callable[[Sequence[Envelope]], Awaitable[S]],
    decide: Callable[[Sequence[Envelope], S, set[int], Mapping[UUID, set[int]]], D],
    write: Callable[[D], Awaitable[None]],
) -> D:
    """One batch of one projection, exactly once, in one transaction: lock the position,
    find the new ids, `load` what the projection needs, `decide` (pure) which events to
    apply, `write` the rows, then track the ids received and move the mark. Every
    projection applies its batches through here."""
    async with conn.transaction():
        await use_schema(conn, schema)
        position, fresh = await start_batch(conn, projection, events)
        state = await load(events)
        decided = decide(events, state, fresh, {})
        if decided.deferred:
            # Rare: an account's next version may be one set aside; step over those.
            accounts = list({event.aggregate_id for event, _ in decided.deferred})
            skipped = await quarantined_versions(conn, projection, accounts)
            if skipped:
                decided = decide(events, state, fresh, skipped)
        # Early events (a partially failed relay batch, retried) are not tracked, so the
        # mark stays below them and their redelivery, after their predecessors, applies
        # them in order.
        decided.result.deferred = _log_deferred(projection, decided.deferred)
        await write(decided)
        decided.result.position = await finish_batch(
            conn, projection, position, decided.received, decided.result.applied
        )
    return decided


@dataclass
class Sorted(Decided):
    """A batch's events sorted out against tracking and the projected versions."""

    to_project: list[Envelope] = field(default_factory=list)


def _sort(
    events: Sequence[Envelope],
    fresh: set[int],
    projected: dict[UUID, int] | None,
    skipped: Mapping[UUID, set[int]],
) -> Sorted:
    """Pure: which events to project, which to track, which to defer. `fresh` and
    `projected` are not changed (a second sort, with `skipped` known, starts over)."""
    fresh = set(fresh)
    versions = None if projected is None else dict(projected)
    out = Sorted()
    result = out.result
    for event in events:
        if event.notification_id not in fresh:
            result.duplicates += 1
            continue
        fresh.discard(event.notification_id)  # a batch may hold one id twice
        order = Order.NEXT if versions is None else _order_of(event, versions, skipped)
        if order is Order.EARLY:
            assert versions is not None
            out.deferred.append((event, versions.get(event.aggregate_id, 0)))
            continue
        out.received.add(event.notification_id)
        if order is Order.NEXT:
            out.to_project.append(event)
        result.applied += 1
        if event.is_account_event:
            previous = result.touched_versions.get(event.aggregate_id, 0)
            result.touched_versions[event.aggregate_id] = max(previous, event.version)
    return out


async def use_schema(conn: AsyncConnection[Any], schema: str) -> None:
    """Projection SQL names its tables unqualified: this transaction writes to `schema`
    (the live read models, or a shadow that `vigil replay` builds beside them)."""
    assert schema.isidentifier(), schema
    await conn.execute(f"SET LOCAL search_path TO {schema}, public")


async def _projected_versions(
    conn: AsyncConnection[Any], projection: str, events: Sequence[Envelope]
) -> dict[UUID, int] | None:
    """The accounts' projected versions, for the one projection that needs strict order."""
    if projection != "balances":
        return None  # statements and KPIs come out the same in any order
    ids = list({e.aggregate_id for e in events if e.is_account_event})
    cursor = await execute_typed(
        conn, "SELECT account_id, version FROM accounts WHERE account_id = ANY(%b::uuid[])", (ids,)
    )
    return {row[0]: int(row[1]) for row in await cursor.fetchall()}


class Order(Enum):
    NEXT = "next"  # the account's next version (or not an account event): apply it
    PAST = "past"  # at or below the projected version: its rows would change nothing
    EARLY = "early"  # a version is missing before it: defer it


def _order_of(
    event: Envelope, versions: dict[UUID, int], skipped: Mapping[UUID, set[int]]
) -> Order:
    """Where a balances event stands against the account's projected version, which it
    moves on. An early one (a batch the relay retried after a partial failure) is not
    tracked: the mark stays below it, and its redelivery, after its predecessor,
    applies it. A version quarantined (`skipped`) is never coming: it is stepped over."""
    if not event.is_account_event:
        return Order.NEXT
    projected = versions.get(event.aggregate_id, 0)
    set_aside = skipped.get(event.aggregate_id)
    if projected == 0 and set_aside and 1 in set_aside:
        # Its opening was set aside, so it has no row to keep in order: its events change
        # nothing until a retry rebuilds the account from its whole stream.
        return Order.NEXT
    if event.version > next_version(projected, set_aside):
        return Order.EARLY
    versions[event.aggregate_id] = max(projected, event.version)
    return Order.NEXT if event.version > projected else Order.PAST


def _log_deferred(projection: str, deferred: list[tuple[Envelope, int]]) -> int:
    for event, projected in deferred:
        log.warning(
            "projection_event_deferred",
            projection=projection,
            account_id=str(event.aggregate_id),
            version=event.version,
            projected_version=projected,
        )
    return len(deferred)


@dataclass(frozen=True, slots=True)
class Position:
    mark: int
    # The stored id above the mark that the last walk found untracked (None: unknown).
    # Until a batch tracks it the mark cannot move, so there is nothing to walk.
    blocked_at: int | None = None


async def lock_position(conn: AsyncConnection[Any], projection: str) -> Position:
    # FOR UPDATE: workers of one projection on other partitions wait here, so the
    # mark only ever moves forward and compaction never races an insert.
    cursor = await conn.execute(
        "SELECT position, blocked_at FROM projection_positions WHERE projection = %s FOR UPDATE",
        (projection,),
    )
    row = await cursor.fetchone()
    if row is None:
        await conn.execute(
            "INSERT INTO projection_positions (projection) VALUES (%s)", (projection,)
        )
        return Position(0)
    return Position(int(row[0]), None if row[1] is None else int(row[1]))


async def start_batch(
    conn: AsyncConnection[Any], projection: str, events: Sequence[Envelope]
) -> tuple[Position, set[int]]:
    """Lock the projection's position; returns it and the batch's ids that are new (above
    its mark and not tracked yet): the events to apply. Under the position's lock no other
    batch of the projection can track an id meanwhile, so reading is enough here: the
    batch's ids are tracked by `finish_batch`, in this same transaction."""
    position = await lock_position(conn, projection)
    above = {e.notification_id for e in events if e.notification_id > position.mark}
    if not above:
        return position, set()
    cursor = await execute_typed(
        conn,
        "SELECT notification_id FROM projection_tracking WHERE projection = %s "
        "AND notification_id = ANY(%b::bigint[])",
        (projection, list(above)),
    )
    return position, above - {int(row[0]) for row in await cursor.fetchall()}


# The mark moves over the stored ids above it for as long as each is tracked or received
# by this batch: the store's gaps are skipped because only ids that exist in the store are
# walked. With k ids tracked or received above the mark it can move over k stored ids at
# most, so a step of the walk looks at k + 1 of them (and never more than MARK_SCAN_MAX:
# then the next step goes on from there). Both lists are read as plain index scans and
# walked here: joining them in SQL cost PostgreSQL a few microseconds per walked id.
# Ids the relay quarantined were never published and never will be: done for every
# projection, like the store's gaps (that table is almost always empty).
TRACKED_ABOVE: Final = (
    "(SELECT notification_id, true FROM projection_tracking WHERE projection = %s "
    "AND notification_id > %s ORDER BY notification_id LIMIT %s) UNION ALL "
    "(SELECT notification_id, false FROM public.relay_quarantine WHERE notification_id > %s "
    "ORDER BY notification_id LIMIT %s)"
)
STORED_ABOVE: Final = (
    f"SELECT notification_id FROM {EVENTS_TABLE} WHERE notification_id > %s "
    "ORDER BY notification_id LIMIT %s"
)


@dataclass(frozen=True, slots=True)
class Walk:
    mark: int
    # The first stored id above the mark that is neither tracked nor received (None: the
    # walk reached its end without one).
    blocked_at: int | None
    passed_tracked: bool  # whether the mark moved over tracking rows (to compact)
    # Whether the step read all the stored ids it could and found each done: the walk
    # may go on past them.
    more: bool = False


async def walk_mark(
    conn: AsyncConnection[Any],
    projection: str,
    mark: int,
    received: Collection[int],
    limit: int | None = None,
) -> Walk:
    # The step passes at most `limit` ids, all tracked ones among the lowest tracked.
    limit = MARK_SCAN_MAX if limit is None else min(limit, MARK_SCAN_MAX)
    cursor = await conn.execute(TRACKED_ABOVE, (projection, mark, limit, mark, limit), binary=True)
    done = await cursor.fetchall()
    tracked = [int(row[0]) for row in done if row[1]]
    present = {int(row[0]) for row in done}
    present.update(received)
    scan = min(limit, len(present) + 1)
    cursor = await conn.execute(STORED_ABOVE, (mark, scan), binary=True)
    stored = await cursor.fetchall()
    blocked_at = None
    for (notification_id,) in stored:
        if notification_id not in present:
            blocked_at = int(notification_id)
            break
        mark = int(notification_id)
    more = blocked_at is None and len(stored) == scan == limit
    return Walk(mark, blocked_at, bool(tracked) and tracked[0] <= mark, more)


async def walk_mark_fully(
    conn: AsyncConnection[Any], projection: str, mark: int, received: Collection[int]
) -> Walk:
    """`walk_mark` step after step until it stops at an id not applied yet or at the
    store's end. Stopping after one step left a projection that had applied everything
    reporting itself behind until the next batch came, which may be never."""
    limit = min(MARK_SCAN_MAX, len(received) + MARK_SCAN_FIRST)
    walk = await walk_mark(conn, projection, mark, received, limit)
    passed_tracked = walk.passed_tracked
    while walk.more:
        limit = min(MARK_SCAN_MAX, 2 * limit)
        walk = await walk_mark(conn, projection, walk.mark, received, limit)
        passed_tracked = passed_tracked or walk.passed_tracked
    return Walk(walk.mark, walk.blocked_at, passed_tracked)


async def finish_batch(
    conn: AsyncConnection[Any],
    projection: str,
    position: Position,
    received: Collection[int],
    applied: int,
) -> int:
    """Record the batch's received ids (the new ones, less any deferred), move the mark
    and store it; returns the mark.

    The mark moves over every stored id that is tracked or received here. Only the
    received ids it does not reach get a tracking row: a row at or below the mark would
    be compacted away in this same transaction, and the mark already says those ids were
    applied. Tracking rows that the mark passes are deleted. The walk runs only when this
    batch received the id the mark last stopped at: otherwise that id is still missing
    and the mark cannot move (a slow partition would have every other batch walk
    thousands of ids for nothing)."""
    mark, blocked_at = position.mark, position.blocked_at
    ids = list(received)
    if blocked_at is None or blocked_at in received:
        walk = await walk_mark_fully(conn, projection, mark, received)
        assert walk.mark >= mark, (walk.mark, mark)
        if walk.passed_tracked:  # rows at or below the old mark were compacted before
            await conn.execute(
                "DELETE FROM projection_tracking WHERE projection = %s AND notification_id <= %s",
                (projection, walk.mark),
            )
        ids = [i for i in ids if i > walk.mark]
        mark, blocked_at = walk.mark, walk.blocked_at
    await track(conn, projection, ids)
    await conn.execute(
        "UPDATE projection_positions SET position = %s, blocked_at = %s, "
        "applied_events = applied_events + %s, updated_at = now() WHERE projection = %s",
        (mark, blocked_at, applied, projection),
    )
    return mark


async def track(conn: AsyncConnection[Any], projection: str, ids: list[int]) -> None:
    if ids:
        await execute_typed(
            conn,
            "INSERT INTO projection_tracking (projection, notification_id) "
            "SELECT %s, unnest(%b::bigint[]) ON CONFLICT DO NOTHING",
            (projection, ids),
        )
