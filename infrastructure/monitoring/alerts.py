"""The alerts projection: scores every movement with the rules, keeping each account's
window in PostgreSQL, and writes alerts and their outbox rows in the same transaction
as the window and the tracking rows. A crash neither loses nor invents an alert; the
same event replayed never raises a second one (alert ids are deterministic)."""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any
from uuid import UUID

from psycopg import AsyncConnection
from psycopg.types.json import Jsonb

from domain.ids import watchlist_entry_id
from domain.rules.config import RulesConfig
from domain.rules.engine import Hit
from domain.rules.window import AccountWindow
from infrastructure.eventstore.schema import EVENTS_TABLE, INDEX_TABLE
from infrastructure.monitoring.windows import (
    LoadedWindows,
    WindowCache,
    WindowChange,
    load_windows,
    save_windows,
)
from infrastructure.postgres.arrays import execute_typed
from infrastructure.readmodels.alert_rows import alert_record, insert_alerts, notify_outbox
from infrastructure.readmodels.quarantine import next_version
from infrastructure.readmodels.schema import SCHEMA
from infrastructure.readmodels.tracking import (
    BatchResult,
    Decided,
    apply_or_set_aside,
    apply_tracked,
)
from projections.alerts import movement_of, step
from projections.envelope import Envelope

PROJECTION = "alerts"
# The event store's topics of watchlist entries end with the event class name.
LISTED_EVENTS = ("WatchlistEntryAdded", "WatchlistEntryRestored")


async def register_config(
    conn: AsyncConnection[Any], parameters: dict[str, Any], digest: str, source: str
) -> int:
    """The version number of this configuration, stored on first sight."""
    await conn.execute(
        "INSERT INTO public.rule_configs (sha256, parameters, source) VALUES (%s, %s, %s) "
        "ON CONFLICT (sha256) DO NOTHING",
        (digest, Jsonb(parameters), source),
    )
    cursor = await conn.execute(
        "SELECT version FROM public.rule_configs WHERE sha256 = %s", (digest,)
    )
    row = await cursor.fetchone()
    assert row is not None
    return int(row[0])


async def apply_alerts_batch(
    conn: AsyncConnection[Any],
    events: Sequence[Envelope],
    config: RulesConfig,
    config_version: int,
    schema: str = SCHEMA,
    cache: WindowCache | None = None,
    watchlist: WatchlistSteps | None = None,
) -> tuple[BatchResult, list[Hit]]:
    """Score the new events of a batch, in one transaction with a fixed number of
    statements: the windows, the watchlist's history and the alerts each go in one.
    `cache` holds the windows this process stored in `schema` between batches (a worker's
    cache the live projection's, a replay's its own; never one cache for two schemas).
    `watchlist` keeps the watchlist's steps between batches (only where the event index is
    complete); without it each batch probes the store for its counterparties. An event the
    rules cannot score is quarantined and the rest scored around it."""

    async def load(batch: Sequence[Envelope]) -> tuple[LoadedWindows, WatchlistHistory]:
        windows = await load_windows(conn, batch, cache)
        if watchlist is not None:
            return windows, await watchlist.history(conn, batch)
        return windows, await watchlist_history(conn, batch)

    def decide(
        batch: Sequence[Envelope],
        state: tuple[LoadedWindows, WatchlistHistory],
        fresh: set[int],
        skipped: Mapping[UUID, set[int]],
    ) -> Scored:
        loaded, watchlist = state
        return score_events(
            batch, fresh, loaded.windows, watchlist, config, skipped, stored_unknown=loaded.legacy
        )

    async def write(scored: Scored) -> None:
        await save_windows(conn, scored.window_changes())
        await record_alerts(conn, scored.raised, config_version)
        if scored.raised:
            await notify_outbox(conn)

    async def once(batch: Sequence[Envelope]) -> tuple[BatchResult, list[Hit]]:
        scored = await apply_tracked(conn, PROJECTION, batch, schema, load, decide, write)
        if cache is not None:
            cache.keep(scored.changed_windows())
        return scored.result, [hit for hit, _, _ in scored.raised]

    def merged(parts: list[tuple[BatchResult, list[Hit]]]) -> tuple[BatchResult, list[Hit]]:
        return BatchResult.merged([r for r, _ in parts]), [h for _, hits in parts for h in hits]

    return await apply_or_set_aside(conn, PROJECTION, events, schema, once, merged)


@dataclass
class Scored(Decided):
    """A batch's events scored against the windows (pure; nothing written yet). The
    windows as loaded are kept beside the new ones: saving writes only their difference."""

    windows: dict[UUID, AccountWindow] = field(default_factory=dict)
    loaded: Mapping[UUID, AccountWindow] = field(default_factory=dict)
    # Accounts whose stored movements are not known as rows: saved whole.
    stored_unknown: Collection[UUID] = frozenset()
    raised: list[tuple[Hit, str | None, Envelope]] = field(default_factory=list)
    changed: set[UUID] = field(default_factory=set)

    def changed_windows(self) -> dict[UUID, AccountWindow]:
        return {account_id: self.windows[account_id] for account_id in self.changed}

    def window_changes(self) -> list[WindowChange]:
        """Each changed window beside the one its rows hold (none for an account never
        stored; not known for one in `stored_unknown`)."""
        return [
            WindowChange(
                account_id,
                None
                if account_id in self.stored_unknown
                else self.loaded.get(account_id) or AccountWindow(str(account_id)),
                self.windows[account_id],
            )
            for account_id in self.changed
        ]


def score_events(
    events: Sequence[Envelope],
    fresh: set[int],
    loaded: Mapping[UUID, AccountWindow],
    watchlist: WatchlistHistory,
    config: RulesConfig,
    skipped: Mapping[UUID, set[int]],
    stored_unknown: Collection[UUID] = frozenset(),
) -> Scored:
    """Every new event through the rules, in order; early ones deferred. `fresh` and
    `loaded` are not changed (a second scoring, with `skipped` known, starts over).
    `loaded` holds the windows as stored, but for the accounts of `stored_unknown`."""
    fresh = set(fresh)
    out = Scored(windows=dict(loaded), loaded=loaded, stored_unknown=stored_unknown)
    for event in events:
        if event.notification_id not in fresh:
            out.result.duplicates += 1
            continue
        fresh.discard(event.notification_id)
        if not event.is_account_event:
            out.received.add(event.notification_id)
            out.result.applied += 1
            continue
        window = out.windows.get(event.aggregate_id) or AccountWindow(str(event.aggregate_id))
        if event.version != next_version(window.version, skipped.get(event.aggregate_id)):
            if event.version <= window.version:
                out.received.add(event.notification_id)
                out.result.duplicates += 1  # already scored: the window has moved past it
            else:
                out.deferred.append((event, window.version))
            continue
        out.received.add(event.notification_id)
        hits, out.windows[event.aggregate_id] = step(
            config, window, event, watchlist.listed_before(event)
        )
        out.changed.add(event.aggregate_id)
        out.raised.extend((hit, window.branch, event) for hit in hits)
        out.result.applied += 1
    return out


class WatchlistHistory:
    """The watchlist entries of a batch's counterparties, as the store has them up to the
    batch's last event: enough to tell whether an account was listed just before any event
    of the batch, by the store's order of notification ids (never by Kafka's order of
    arrival)."""

    def __init__(self, steps: dict[UUID, list[tuple[int, int, str]]]) -> None:
        self.steps = steps  # entry id -> (notification id, version, topic)

    def listed_before(self, event: Envelope) -> bool:
        """Whether the counterparty of this movement was listed just before it."""
        if not self.steps:
            return False  # most batches: no counterparty was ever on the watchlist
        account_id = _counterparty(event)
        if account_id is None:
            return False
        earlier = [
            (version, topic)
            for step_id, version, topic in self.steps.get(watchlist_entry_id(account_id), ())
            if step_id < event.notification_id
        ]
        return bool(earlier) and max(earlier)[1].endswith(LISTED_EVENTS)


def _counterparty(event: Envelope) -> str | None:
    movement = movement_of(event)
    return None if movement is None else movement.counterparty_account_id


class WatchlistSteps:
    """Every watchlist entry's steps below a notification id, kept between batches and
    extended through the event index's type index: each batch reads the few entries (most
    often none) after the last id it read, where probing the store costs an index look-up
    per counterparty. Only for a complete event index (the recorder writes each event's
    row in the event's transaction; `complete_event_index` checks a store written before
    there was one). Notification ids commit in order, under the store's table lock: once
    a batch holds id n, no step below n can appear later."""

    def __init__(self) -> None:
        self.below = 1  # every step with a lower notification id is in `steps`
        self.steps: dict[UUID, list[tuple[int, int, str]]] = {}

    async def history(
        self, conn: AsyncConnection[Any], events: Sequence[Envelope]
    ) -> WatchlistHistory:
        high = max((e.notification_id for e in events), default=0)
        if high > self.below:
            cursor = await conn.execute(WATCHLIST_STEPS, (WATCHLIST_EVENTS, self.below, high))
            for entry_id, step_id, version, event_type in await cursor.fetchall():
                steps = self.steps.setdefault(entry_id, [])
                steps.append((int(step_id), int(version), str(event_type)))
            self.below = high
        return WatchlistHistory(self.steps)


# The watchlist entry's event classes, as the event index names them: those that put an
# account on the list, and the one that takes it off.
WATCHLIST_EVENTS = [*LISTED_EVENTS, "WatchlistEntryRemoved"]
# Row comparisons, which only the (event_type, notification_id) index can serve: written
# as `event_type = ... AND notification_id >= ...`, the generic plan took the primary key's
# range and filtered every event of the range (the whole index on a worker's first batch).
WATCHLIST_STEPS = (
    "SELECT s.aggregate_id, s.notification_id, s.version, s.event_type "
    f"FROM unnest(%s::text[]) AS t(event_type) JOIN {INDEX_TABLE} s "
    "ON (s.event_type, s.notification_id) >= (t.event_type, %s::bigint) "
    "AND (s.event_type, s.notification_id) < (t.event_type, %s::bigint)"
)


async def complete_event_index(conn: AsyncConnection[Any]) -> bool:
    """Whether the event index is as far as the store (`WatchlistSteps` needs it): two
    index look-ups. The recorder creates both tables together, so a store not made yet
    will have it; one older than the index needs `vigil audit reindex`."""
    events_present, index_present = await _one_row(
        conn,
        f"SELECT to_regclass('{EVENTS_TABLE}') IS NOT NULL, "
        f"to_regclass('{INDEX_TABLE}') IS NOT NULL",
    )
    if not events_present:
        return True
    if not index_present:
        return False
    store_head, index_head = await _one_row(
        conn,
        f"SELECT (SELECT max(notification_id) FROM {EVENTS_TABLE}), "
        f"(SELECT max(notification_id) FROM {INDEX_TABLE})",
    )
    return store_head is None or (index_head is not None and index_head >= store_head)


async def _one_row(conn: AsyncConnection[Any], query: str) -> tuple[Any, ...]:
    cursor = await conn.execute(query)
    row = await cursor.fetchone()
    assert row is not None, "a SELECT without FROM returns one row"
    return tuple(row)


async def watchlist_history(
    conn: AsyncConnection[Any], events: Sequence[Envelope]
) -> WatchlistHistory:
    counterparties = {a for a in map(_counterparty, events) if a is not None}
    if not counterparties:
        return WatchlistHistory({})
    cursor = await execute_typed(
        conn,
        f"SELECT originator_id, notification_id, originator_version, topic FROM {EVENTS_TABLE} "
        "WHERE originator_id = ANY(%b::uuid[]) AND notification_id < %s",
        (
            [watchlist_entry_id(a) for a in counterparties],
            max(e.notification_id for e in events),
        ),
    )
    steps: dict[UUID, list[tuple[int, int, str]]] = {}
    for entry_id, step_id, version, topic in await cursor.fetchall():
        steps.setdefault(entry_id, []).append((int(step_id), int(version), str(topic)))
    return WatchlistHistory(steps)


def alert_body(
    hit: Hit, branch: str | None, chain_head: str | None, version: int
) -> dict[str, Any]:
    """The alert a rule raised, as the contract shows it (and as `vigil.alerts` carries it)."""
    return alert_record(
        rule=hit.rule,
        severity=hit.severity,
        account_id=hit.account_id,
        notification_id=hit.notification_id,
        transaction_ids=hit.transaction_ids,
        positions=hit.notification_ids,
        explanation=hit.explanation,
        raised_at=hit.raised_at,
        branch=branch,
        chain_head=chain_head,
        version=version,
        identifier=None if hit.alert_id is None else UUID(hit.alert_id),
    )


async def record_alerts(
    conn: AsyncConnection[Any], raised: list[tuple[Hit, str | None, Envelope]], version: int
) -> None:
    await insert_alerts(
        conn,
        [
            (alert_body(hit, branch, event.hash, version), hit.raised_at)
            for hit, branch, event in raised
        ],
    )
