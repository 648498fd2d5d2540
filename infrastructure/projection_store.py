"""Applies projection rows and tracking in PostgreSQL: one transaction per fetched batch.

Exactly once by tracking (DESIGN.md): each projection records every notification id it
receives (one row each, `ON CONFLICT DO NOTHING`), applies only the ids that were new,
and keeps a contiguous high-water mark, compacting the rows at or below it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any
from uuid import UUID

import structlog
from psycopg import AsyncConnection

from infrastructure.compliance_store import apply_row as apply_compliance_row
from infrastructure.readmodel_schema import SCHEMA
from infrastructure.store import EVENTS_TABLE
from projections.envelope import Envelope
from projections.ledger import PROJECTORS
from projections.rows import (
    AccountOpenedRow,
    BalanceChanged,
    BranchKnown,
    KpiIncrement,
    Row,
    StatementLine,
    StatusChanged,
)

# How far one advance of the mark looks ahead in the store; the next batch goes on.
MARK_SCAN_MAX = 10_000
log = structlog.get_logger("vigil.projections")

NOTIFY_CHANNELS = {"balances": "readmodel_accounts", "statements": "readmodel_transactions"}


@dataclass
class BatchResult:
    applied: int = 0
    duplicates: int = 0
    deferred: int = 0
    position: int = 0
    touched_versions: dict[UUID, int] = field(default_factory=dict)


async def apply_batch(
    conn: AsyncConnection[Any],
    projection: str,
    events: Sequence[Envelope],
    schema: str = SCHEMA,
) -> BatchResult:
    """Apply the new events of a batch and advance the mark, all in one transaction."""
    project = PROJECTORS[projection]
    result = BatchResult()
    async with conn.transaction():
        await use_schema(conn, schema)
        mark = await lock_position(conn, projection)
        fresh = await track(
            conn, projection, [e.notification_id for e in events if e.notification_id > mark]
        )
        versions = await _projected_versions(conn, projection, events)
        for event in events:
            if event.notification_id not in fresh:
                result.duplicates += 1
                continue
            fresh.discard(event.notification_id)  # a batch may hold one id twice
            if versions is not None and not await _in_order(conn, projection, event, versions):
                result.deferred += 1
                continue
            for row in project(event):
                await _apply_row(conn, row)
            result.applied += 1
            if event.is_account_event:
                previous = result.touched_versions.get(event.aggregate_id, 0)
                result.touched_versions[event.aggregate_id] = max(previous, event.version)
        result.position = await advance_mark(conn, projection, mark, result.applied)
        channel = NOTIFY_CHANNELS.get(projection)
        if channel:
            for account_id, version in result.touched_versions.items():
                await conn.execute("SELECT pg_notify(%s, %s)", (channel, f"{account_id}:{version}"))
    return result


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
    cursor = await conn.execute(
        "SELECT account_id, version FROM accounts WHERE account_id = ANY(%s)", (ids,)
    )
    return {row[0]: int(row[1]) for row in await cursor.fetchall()}


async def _in_order(
    conn: AsyncConnection[Any], projection: str, event: Envelope, versions: dict[UUID, int]
) -> bool:
    """Whether a balances event follows the projected version. One that comes early (a
    batch the relay retried after a partial failure) is untracked again: the mark stays
    below it, and its redelivery, after its predecessor, applies it."""
    if not event.is_account_event:
        return True
    projected = versions.get(event.aggregate_id, 0)
    if event.version > projected + 1:
        await conn.execute(
            "DELETE FROM projection_tracking WHERE projection = %s AND notification_id = %s",
            (projection, event.notification_id),
        )
        log.warning(
            "projection_event_deferred",
            projection=projection,
            account_id=str(event.aggregate_id),
            version=event.version,
            projected_version=projected,
        )
        return False
    versions[event.aggregate_id] = max(projected, event.version)
    return True


async def lock_position(conn: AsyncConnection[Any], projection: str) -> int:
    # FOR UPDATE: workers of one projection on other partitions wait here, so the
    # mark only ever moves forward and compaction never races an insert.
    cursor = await conn.execute(
        "SELECT position FROM projection_positions WHERE projection = %s FOR UPDATE",
        (projection,),
    )
    row = await cursor.fetchone()
    if row is None:
        await conn.execute(
            "INSERT INTO projection_positions (projection) VALUES (%s)", (projection,)
        )
        return 0
    return int(row[0])


async def track(conn: AsyncConnection[Any], projection: str, ids: list[int]) -> set[int]:
    if not ids:
        return set()
    cursor = await conn.execute(
        "INSERT INTO projection_tracking (projection, notification_id) "
        "SELECT %s, unnest(%s::bigint[]) ON CONFLICT DO NOTHING RETURNING notification_id",
        (projection, ids),
    )
    return {int(row[0]) for row in await cursor.fetchall()}


async def advance_mark(conn: AsyncConnection[Any], projection: str, mark: int, applied: int) -> int:
    """Move the mark over every stored id that is tracked; the store's gaps are skipped
    because only ids that exist in the store are walked."""
    cursor = await conn.execute(
        f"WITH stored AS (SELECT notification_id FROM {EVENTS_TABLE} "
        "  WHERE notification_id > %(mark)s ORDER BY notification_id LIMIT %(scan)s) "
        "SELECT s.notification_id, t.notification_id IS NOT NULL FROM stored s "
        f"LEFT JOIN projection_tracking t "
        "  ON t.projection = %(projection)s AND t.notification_id = s.notification_id "
        "ORDER BY s.notification_id",
        {"mark": mark, "scan": MARK_SCAN_MAX, "projection": projection},
    )
    new_mark = mark
    for notification_id, tracked in await cursor.fetchall():
        if not tracked:
            break
        new_mark = int(notification_id)
    if new_mark > mark:
        await conn.execute(
            "DELETE FROM projection_tracking WHERE projection = %s AND notification_id <= %s",
            (projection, new_mark),
        )
    await conn.execute(
        "UPDATE projection_positions SET position = %s, "
        "applied_events = applied_events + %s, updated_at = now() WHERE projection = %s",
        (new_mark, applied, projection),
    )
    return new_mark


async def _apply_row(conn: AsyncConnection[Any], row: Row) -> None:
    match row:
        case AccountOpenedRow():
            await conn.execute(
                "INSERT INTO accounts (account_id, owner, branch, currency, status, "
                "balance_minor, overdraft_limit_minor, version, opened_at, updated_at, "
                "notification_id) VALUES (%s, %s, %s, %s, 'open', 0, %s, %s, %s, %s, %s) "
                "ON CONFLICT (account_id) DO NOTHING",
                (
                    row.account_id,
                    row.owner,
                    row.branch,
                    row.currency,
                    row.overdraft_limit_minor,
                    row.version,
                    row.at,
                    row.at,
                    row.notification_id,
                ),
            )
        case BalanceChanged():
            await conn.execute(
                "UPDATE accounts SET balance_minor = %s, version = %s, updated_at = %s, "
                "last_transaction_at = %s, notification_id = %s "
                "WHERE account_id = %s AND version < %s",
                (
                    row.balance_minor,
                    row.version,
                    row.at,
                    row.at,
                    row.notification_id,
                    row.account_id,
                    row.version,
                ),
            )
        case StatusChanged():
            await conn.execute(
                "UPDATE accounts SET status = %s, version = %s, updated_at = %s, "
                "notification_id = %s WHERE account_id = %s AND version < %s",
                (row.status, row.version, row.at, row.notification_id, row.account_id, row.version),
            )
        case StatementLine():
            await _insert_statement_line(conn, row)
        case BranchKnown():
            await conn.execute(
                "INSERT INTO kpi_account_branches (account_id, branch) VALUES (%s, %s) "
                "ON CONFLICT DO NOTHING",
                (row.account_id, row.branch),
            )
        case KpiIncrement():
            await _add_kpi(conn, row)
        case _:
            await apply_compliance_row(conn, row)


async def _insert_statement_line(conn: AsyncConnection[Any], row: StatementLine) -> None:
    await conn.execute(
        "INSERT INTO transactions (account_id, version, transaction_id, "
        "counterparty_account_id, direction, kind, amount_minor, balance_after_minor, currency, "
        "reference, channel, actor_subject, actor_role, occurred_at, correlation_id, "
        "notification_id) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s) "
        "ON CONFLICT (account_id, version) DO NOTHING",
        (
            row.account_id,
            row.version,
            row.transaction_id,
            row.counterparty_account_id,
            row.direction,
            row.kind,
            row.amount_minor,
            row.balance_after_minor,
            row.currency,
            row.reference,
            row.channel,
            row.actor_subject,
            row.actor_role,
            row.occurred_at,
            row.correlation_id,
            row.notification_id,
        ),
    )


async def _add_kpi(conn: AsyncConnection[Any], row: KpiIncrement) -> None:
    await conn.execute(
        "INSERT INTO kpis_hourly (hour, currency, metric, count, sum_minor) "
        "VALUES (%s, %s, %s, 1, %s) ON CONFLICT (hour, currency, metric) DO UPDATE SET "
        "count = kpis_hourly.count + 1, sum_minor = kpis_hourly.sum_minor + EXCLUDED.sum_minor",
        (row.hour, row.currency, row.metric, row.amount_minor),
    )
    await conn.execute(
        "INSERT INTO kpis_branch (branch, currency, metric, count, sum_minor) "
        "SELECT branch, %s, %s, 1, %s FROM kpi_account_branches WHERE account_id = %s "
        "ON CONFLICT (branch, currency, metric) DO UPDATE SET "
        "count = kpis_branch.count + 1, sum_minor = kpis_branch.sum_minor + EXCLUDED.sum_minor",
        (row.currency, row.metric, row.amount_minor, row.account_id),
    )
