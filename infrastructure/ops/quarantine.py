"""What operators do with quarantined events: see them (`vigil quarantine list`, the
health and projections routes) and, once the cause is fixed and the fixed workers are
deployed, apply them again (`vigil quarantine retry`).

A retry applies the event where its projection missed it, in one transaction with
marking the quarantine row resolved, so a second retry applies nothing twice (KPIs add
up). Projections that need an account's events in version order (balances, alerts)
re-project the account's whole stream instead: balances' writes keep only what is newer,
and alert ids are deterministic, so what was applied already is not applied again.
An event the relay could not decode is retried in every projection at once.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Final
from uuid import UUID

import psycopg
import redis.asyncio as aioredis
from eventsourcing.persistence import StoredEvent
from psycopg import AsyncConnection
from psycopg.rows import dict_row, tuple_row

from application.ledger import Ledger
from infrastructure.eventstore.envelopes import stored_envelope
from infrastructure.eventstore.schema import EVENTS_TABLE
from infrastructure.logging import describe
from infrastructure.monitoring.alerts import PROJECTION as ALERTS
from infrastructure.monitoring.alerts import (
    WatchlistHistory,
    record_alerts,
    register_config,
    score_events,
    watchlist_history,
)
from infrastructure.monitoring.rules_config import config_hash, load_rules
from infrastructure.monitoring.windows import save_windows
from infrastructure.readmodels.balances_cache import CacheEntry, cache_entries, newest_entries
from infrastructure.readmodels.quarantine import RELAY, quarantined_versions
from infrastructure.readmodels.schema import ALL_PROJECTIONS, SCHEMA
from infrastructure.readmodels.tracking import use_schema
from infrastructure.readmodels.writes import write_batch
from infrastructure.settings import Settings
from projections.batch import fold
from projections.envelope import Envelope
from projections.ledger import PROJECTORS

CASE_OPENER: Final = "case_opener"
# Projections whose rows depend on every earlier version of the account.
IN_VERSION_ORDER: Final = frozenset({"balances", ALERTS})


@dataclass(frozen=True)
class Quarantined:
    """One set-aside event (or, for the case opener, alert message), for people."""

    consumer: str  # a projection, `relay` or `case_opener`
    notification_id: int | None  # None for an alert message (the case opener's)
    event_type: str
    aggregate_id: str | None
    version: int | None
    error: str
    quarantined_at: datetime
    resolved_at: datetime | None


LIST_PROJECTIONS: Final = (
    f"SELECT projection, notification_id, event_type, aggregate_id::text, version, error, "
    f"quarantined_at, resolved_at FROM {SCHEMA}.quarantined_events"
)
LIST_RELAY: Final = (
    "SELECT 'relay', notification_id, topic, originator_id::text, originator_version, error, "
    "quarantined_at, resolved_at FROM public.relay_quarantine"
)
LIST_CASE_OPENER: Final = (
    "SELECT 'case_opener', NULL::bigint, 'alert', alert_id, NULL::bigint, error, "
    "quarantined_at, resolved_at FROM public.case_opener_quarantine"
)
# Messages refused as not Vigil's: listed with the notification id they claimed.
LIST_REFUSED: Final = (
    "SELECT consumer || ' (refused)', notification_id, 'unauthenticated message', "
    "NULL::text, NULL::bigint, reason, refused_at, resolved_at FROM public.refused_messages"
)


QUARANTINE_TABLES: Final = (
    (LIST_PROJECTIONS, f"{SCHEMA}.quarantined_events"),
    (LIST_RELAY, "public.relay_quarantine"),
    (LIST_CASE_OPENER, "public.case_opener_quarantine"),
    (LIST_REFUSED, "public.refused_messages"),
)
PRESENT: Final = "SELECT " + ", ".join(
    f"to_regclass('{table}') IS NOT NULL" for _, table in QUARANTINE_TABLES
)


def _listing(present: tuple[bool, ...], include_resolved: bool) -> str | None:
    """One query over the quarantine tables that exist (a consumer that never ran has
    not made its own), oldest first; None if none does."""
    where = "" if include_resolved else " WHERE resolved_at IS NULL"
    parts = [
        f"({query}{where})"
        for (query, _), exists in zip(QUARANTINE_TABLES, present, strict=True)
        if exists
    ]
    return f"{' UNION ALL '.join(parts)} ORDER BY 7, 2" if parts else None


async def list_quarantined(
    conn: AsyncConnection[Any], include_resolved: bool = False
) -> list[Quarantined]:
    """Every quarantined event of every consumer, oldest first."""
    async with conn.cursor(row_factory=tuple_row) as cursor:
        await cursor.execute(PRESENT)
        present = await cursor.fetchone()
        assert present is not None
        query = _listing(tuple(present), include_resolved)
        if query is None:
            return []
        await cursor.execute(query)
        return [Quarantined(*row) for row in await cursor.fetchall()]


def list_quarantined_sync(conn: psycopg.Connection[Any]) -> list[Quarantined]:
    """`list_quarantined` (unresolved only) on a synchronous connection."""
    with conn.cursor(row_factory=tuple_row) as cursor:
        cursor.execute(PRESENT)
        present = cursor.fetchone()
        assert present is not None
        query = _listing(tuple(present), include_resolved=False)
        if query is None:
            return []
        cursor.execute(query)
        return [Quarantined(*row) for row in cursor.fetchall()]


def reasons(items: list[Quarantined]) -> list[str]:
    """What `/health/ready` says of unresolved quarantined events (nothing if none)."""
    if not items:
        return []
    counts: dict[str, int] = {}
    for item in items:
        counts[item.consumer] = counts.get(item.consumer, 0) + 1
    by = ", ".join(f"{n} by {consumer}" for consumer, n in sorted(counts.items()))
    # The readiness answer's own words (the command line's counting lives with the CLI).
    events = f"{len(items):,} event{'' if len(items) == 1 else 's'}"
    return [f"{events} quarantined ({by}): see `vigil quarantine list`"]


# Retrying ------------------------------------------------------------------------------


@dataclass(frozen=True)
class RetryOutcome:
    consumer: str
    notification_id: int
    resolved: bool
    error: str | None = None


async def retry_quarantined(
    settings: Settings,
    ledger: Ledger,
    conn: AsyncConnection[Any],
    consumer: str | None = None,
    notification_id: int | None = None,
    say: Callable[[RetryOutcome], None] = lambda _: None,
) -> list[RetryOutcome]:
    """Apply again every unresolved quarantined event (or those named); each in its own
    transaction. Alert messages the case opener set aside are not retried here: fix the
    alert at its source."""
    retrier = _Retrier(settings, ledger, conn)
    outcomes = []
    try:
        for item in await list_quarantined(conn):
            if item.consumer == CASE_OPENER or item.notification_id is None:
                continue
            if consumer not in (None, item.consumer):
                continue
            if notification_id not in (None, item.notification_id):
                continue
            outcome = await retrier.retry(item.consumer, item.notification_id)
            say(outcome)
            outcomes.append(outcome)
    finally:
        await retrier.close()
    return outcomes


class _Retrier:
    def __init__(self, settings: Settings, ledger: Ledger, conn: AsyncConnection[Any]) -> None:
        self.settings = settings
        self.ledger = ledger
        self.conn = conn
        self.cache: aioredis.Redis | None = None  # opened for the first account row written
        self._rules: tuple[Any, int] | None = None

    async def retry(self, consumer: str, notification_id: int) -> RetryOutcome:
        entries: list[CacheEntry] = []
        try:
            event = await self._event(notification_id)
            projections = ALL_PROJECTIONS if consumer == RELAY else (consumer,)
            async with self.conn.transaction():
                await use_schema(self.conn, SCHEMA)
                if not await self._resolve(consumer, notification_id):
                    return RetryOutcome(consumer, notification_id, resolved=True)
                for projection in projections:
                    entries += await self._apply(projection, event)
        except Exception as error:
            if isinstance(error, psycopg.OperationalError | psycopg.InterfaceError):
                raise
            await self._note_failure(consumer, notification_id)
            return RetryOutcome(consumer, notification_id, resolved=False, error=describe(error))
        if entries:
            # Committed: the query API's cached copy of the account must not stay behind.
            await self._cache(entries)
        return RetryOutcome(consumer, notification_id, resolved=True)

    async def _cache(self, entries: list[CacheEntry]) -> None:
        if self.cache is None:
            self.cache = aioredis.Redis.from_url(
                self.settings.resolved_redis_url(), socket_timeout=self.settings.redis_timeout_s
            )
        newest = list(newest_entries(entries).values())
        await cache_entries(self.cache, self.settings.redis_key_prefix, newest)

    async def close(self) -> None:
        if self.cache is not None:
            await self.cache.aclose()

    async def _event(self, notification_id: int) -> Envelope:
        [stored] = await self._stored(
            f"SELECT notification_id, originator_id, originator_version, topic, state "
            f"FROM {EVENTS_TABLE} WHERE notification_id = %s",
            notification_id,
        )
        return stored

    async def _stream(self, account_id: UUID) -> list[Envelope]:
        """The account's events in version order; those that still cannot be decoded are
        left out (they stay quarantined by the relay)."""
        return await self._stored(
            f"SELECT notification_id, originator_id, originator_version, topic, state "
            f"FROM {EVENTS_TABLE} WHERE originator_id = %s ORDER BY originator_version",
            account_id,
            skip_undecodable=True,
        )

    async def _stored(
        self, query: str, key: Any, *, skip_undecodable: bool = False
    ) -> list[Envelope]:
        async with self.conn.cursor(row_factory=dict_row) as cursor:
            await cursor.execute(query, (key,))
            found = await cursor.fetchall()
        events = []
        for row in found:
            stored = StoredEvent(
                originator_id=row["originator_id"],
                originator_version=row["originator_version"],
                topic=row["topic"],
                state=bytes(row["state"]),
            )
            try:
                body = stored_envelope(self.ledger, int(row["notification_id"]), stored)
            except Exception:
                if skip_undecodable:
                    continue
                raise
            events.append(Envelope.from_json(body))
        return events

    async def _resolve(self, consumer: str, notification_id: int) -> bool:
        """Mark the row resolved, in the retry's transaction; False if it already was."""
        if consumer == RELAY:
            query = (
                "UPDATE public.relay_quarantine SET resolved_at = now(), retried_at = now() "
                "WHERE notification_id = %s AND resolved_at IS NULL"
            )
            cursor = await self.conn.execute(query, (notification_id,))
        else:
            query = (
                "UPDATE quarantined_events SET resolved_at = now(), retried_at = now() "
                "WHERE projection = %s AND notification_id = %s AND resolved_at IS NULL"
            )
            cursor = await self.conn.execute(query, (consumer, notification_id))
        return cursor.rowcount == 1

    async def _note_failure(self, consumer: str, notification_id: int) -> None:
        if consumer == RELAY:
            await self.conn.execute(
                "UPDATE public.relay_quarantine SET retried_at = now() WHERE notification_id = %s",
                (notification_id,),
            )
        else:
            await self.conn.execute(
                f"UPDATE {SCHEMA}.quarantined_events SET retried_at = now() "
                "WHERE projection = %s AND notification_id = %s",
                (consumer, notification_id),
            )

    async def _apply(self, projection: str, event: Envelope) -> list[CacheEntry]:
        """Apply the event; the balances cache's entries of the account rows written."""
        if projection not in IN_VERSION_ORDER or not event.is_account_event:
            if projection != ALERTS:
                return await write_batch(self.conn, fold(PROJECTORS[projection](event)))
            return []
        stream = await self._stream(event.aggregate_id)
        if projection == "balances":
            rows = [row for e in stream for row in PROJECTORS["balances"](e)]
            return await write_batch(self.conn, fold(rows))
        await self._rescore(stream, event)
        return []

    async def _rescore(self, stream: list[Envelope], retried: Envelope) -> None:
        """The account's window rebuilt from its whole stream (stepping over the versions
        still set aside), its alerts recorded (those there already are kept as they are)."""
        config, version = await self._rules_config()
        skipped = await quarantined_versions(self.conn, ALERTS, [retried.aggregate_id])
        still = skipped.get(retried.aggregate_id, set()) - {retried.version}
        watchlist: WatchlistHistory = await watchlist_history(self.conn, stream)
        fresh = {e.notification_id for e in stream}
        scored = score_events(
            stream,
            fresh,
            {},
            watchlist,
            config,
            {retried.aggregate_id: still},
            stored_unknown={retried.aggregate_id},
        )
        await save_windows(self.conn, scored.window_changes())
        await record_alerts(self.conn, scored.raised, version)

    async def _rules_config(self) -> tuple[Any, int]:
        if self._rules is None:
            config, source = load_rules(self.settings.rules_config)
            version = await register_config(
                self.conn, config.describe(), config_hash(config), source
            )
            self._rules = (config, version)
        return self._rules
