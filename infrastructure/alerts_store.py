"""The alerts projection: scores every movement with the rules, keeping each account's
window in PostgreSQL, and writes alerts and their outbox rows in the same transaction
as the window and the tracking rows. A crash neither loses nor invents an alert; the
same event replayed never raises a second one (alert ids are deterministic)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any
from uuid import UUID

from psycopg import AsyncConnection
from psycopg.types.json import Jsonb

from domain.ids import alert_id, case_id_for, watchlist_entry_id
from domain.integrity import format_timestamp
from domain.rules.config import RulesConfig
from domain.rules.engine import Hit
from domain.rules.window import AccountWindow
from infrastructure.projection_store import (
    BatchResult,
    advance_mark,
    lock_position,
    track,
    use_schema,
)
from infrastructure.readmodel_schema import SCHEMA
from infrastructure.store import EVENTS_TABLE
from projections.alerts import movement_of, step
from projections.envelope import Envelope

PROJECTION = "alerts"
OUTBOX_CHANNEL = "alerts_outbox"
# The event store's topics of watchlist entries end with the event class name.
LISTED_EVENTS = ("WatchlistEntryAdded", "WatchlistEntryRestored")

RULE_CONFIGS_DDL = """
CREATE TABLE IF NOT EXISTS public.rule_configs (
    version serial PRIMARY KEY,
    sha256 text NOT NULL UNIQUE,
    parameters jsonb NOT NULL,
    source text NOT NULL,
    loaded_at timestamptz NOT NULL DEFAULT now()
);
"""


def alerts_ddl(schema: str = SCHEMA) -> str:
    """The alerts projection's tables in `schema` (live, or a shadow for `vigil replay`)."""
    return f"""
CREATE TABLE IF NOT EXISTS {schema}.rule_windows (
    account_id uuid PRIMARY KEY,
    version bigint NOT NULL,
    state jsonb NOT NULL
);
CREATE TABLE IF NOT EXISTS {schema}.alerts (
    alert_id uuid PRIMARY KEY,
    rule text NOT NULL,
    severity text NOT NULL,
    account_id uuid NOT NULL,
    branch text,
    transaction_ids jsonb NOT NULL,
    positions jsonb NOT NULL,
    explanation text NOT NULL,
    raised_at timestamptz NOT NULL,
    notification_id bigint NOT NULL,
    chain_head text,
    rule_config_version int NOT NULL,
    case_id uuid NOT NULL
);
CREATE INDEX IF NOT EXISTS alerts_raised_idx ON {schema}.alerts (raised_at DESC, alert_id);
CREATE INDEX IF NOT EXISTS alerts_account_idx ON {schema}.alerts (account_id);
CREATE TABLE IF NOT EXISTS {schema}.alerts_outbox (
    id bigserial PRIMARY KEY,
    alert_id uuid NOT NULL,
    account_id uuid NOT NULL,
    payload jsonb NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now()
);
"""


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


async def watchlisted_before(
    conn: AsyncConnection[Any], account_id: str | None, notification_id: int
) -> bool:
    """Whether the account was on the watchlist just before this event, by the store's
    order of notification ids (never by Kafka's order of arrival)."""
    if account_id is None:
        return False
    cursor = await conn.execute(
        f"SELECT topic FROM {EVENTS_TABLE} WHERE originator_id = %s AND notification_id < %s "
        "ORDER BY originator_version DESC LIMIT 1",
        (watchlist_entry_id(account_id), notification_id),
    )
    row = await cursor.fetchone()
    return row is not None and str(row[0]).endswith(LISTED_EVENTS)


async def apply_alerts_batch(
    conn: AsyncConnection[Any],
    events: Sequence[Envelope],
    config: RulesConfig,
    config_version: int,
    schema: str = SCHEMA,
) -> tuple[BatchResult, list[Hit]]:
    result = BatchResult()
    raised: list[Hit] = []
    async with conn.transaction():
        await use_schema(conn, schema)
        mark = await lock_position(conn, PROJECTION)
        fresh = await track(
            conn, PROJECTION, [e.notification_id for e in events if e.notification_id > mark]
        )
        windows = await _load_windows(conn, events)
        changed: set[UUID] = set()
        for event in events:
            if event.notification_id not in fresh:
                result.duplicates += 1
                continue
            fresh.discard(event.notification_id)
            if not event.is_account_event:
                result.applied += 1
                continue
            window = windows.get(event.aggregate_id) or AccountWindow(str(event.aggregate_id))
            if event.version != window.version + 1:
                await _defer(conn, event, window, result)
                continue
            movement = movement_of(event)
            watchlisted = movement is not None and await watchlisted_before(
                conn, movement.counterparty_account_id, event.notification_id
            )
            hits, windows[event.aggregate_id] = step(config, window, event, watchlisted)
            changed.add(event.aggregate_id)
            for hit in hits:
                await _record_alert(conn, hit, window.branch, event, config_version)
            raised.extend(hits)
            result.applied += 1
        await _save_windows(conn, {a: windows[a] for a in changed})
        result.position = await advance_mark(conn, PROJECTION, mark, result.applied)
        if raised:
            await conn.execute("SELECT pg_notify(%s, '')", (OUTBOX_CHANNEL,))
    return result, raised


async def _defer(
    conn: AsyncConnection[Any], event: Envelope, window: AccountWindow, result: BatchResult
) -> None:
    if event.version <= window.version:
        result.duplicates += 1  # already scored: the window has moved past it
        return
    # Early (a partially failed relay batch, retried): untracked again, so the mark
    # stays below it and its redelivery, after its predecessor, scores it in order.
    await conn.execute(
        "DELETE FROM projection_tracking WHERE projection = %s AND notification_id = %s",
        (PROJECTION, event.notification_id),
    )
    result.deferred += 1


async def _load_windows(
    conn: AsyncConnection[Any], events: Sequence[Envelope]
) -> dict[UUID, AccountWindow]:
    ids = list({e.aggregate_id for e in events if e.is_account_event})
    cursor = await conn.execute(
        "SELECT account_id, state FROM rule_windows WHERE account_id = ANY(%s)", (ids,)
    )
    return {row[0]: AccountWindow.from_json(row[1]) for row in await cursor.fetchall()}


async def _save_windows(conn: AsyncConnection[Any], windows: dict[UUID, AccountWindow]) -> None:
    if not windows:
        return
    async with conn.cursor() as cursor:
        await cursor.executemany(
            "INSERT INTO rule_windows (account_id, version, state) VALUES (%s, %s, %s) "
            "ON CONFLICT (account_id) DO UPDATE SET version = EXCLUDED.version, "
            "state = EXCLUDED.state",
            [(a, w.version, Jsonb(w.to_json())) for a, w in windows.items()],
        )


def alert_body(
    hit: Hit, branch: str | None, chain_head: str | None, version: int
) -> dict[str, Any]:
    """The alert as the contract shows it (and as `vigil.alerts` carries it)."""
    identifier = alert_id(hit.rule, hit.account_id, hit.notification_id)
    return {
        "alert_id": str(identifier),
        "rule": hit.rule,
        "severity": hit.severity,
        "account_id": hit.account_id,
        "branch": branch,
        "transaction_ids": hit.transaction_ids,
        "positions": hit.notification_ids,
        "explanation": hit.explanation,
        "raised_at": format_timestamp(hit.raised_at),
        "scored_at_position": hit.notification_id,
        "chain_head": chain_head,
        "status": "open",
        "case_id": str(case_id_for(identifier)),
        "rule_config_version": version,
    }


async def _record_alert(
    conn: AsyncConnection[Any], hit: Hit, branch: str | None, event: Envelope, version: int
) -> None:
    body = alert_body(hit, branch, event.hash, version)
    cursor = await conn.execute(
        "INSERT INTO alerts (alert_id, rule, severity, account_id, branch, "
        "transaction_ids, positions, explanation, raised_at, notification_id, chain_head, "
        "rule_config_version, case_id) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s) "
        "ON CONFLICT (alert_id) DO NOTHING",
        (
            body["alert_id"], hit.rule, hit.severity, hit.account_id, branch,
            Jsonb(hit.transaction_ids), Jsonb(hit.notification_ids), hit.explanation,
            hit.raised_at, hit.notification_id, event.hash, version, body["case_id"],
        ),
    )  # fmt: skip
    if cursor.rowcount == 1:
        await conn.execute(
            "INSERT INTO alerts_outbox (alert_id, account_id, payload) VALUES (%s, %s, %s)",
            (body["alert_id"], hit.account_id, Jsonb(body)),
        )
