"""Applies the compliance projections' rows (`projections/compliance.py`) in PostgreSQL,
inside the batch transaction of `projection_store.apply_batch`: one statement per table
for a whole batch.

A case's row is recomputed from its whole history once a batch's steps are recorded, so
the result depends only on which steps have arrived, never on their order: a step delivered
early, late or twice leaves the same row as the store's order would.
"""

from __future__ import annotations

from typing import Any, Final

from psycopg import AsyncConnection
from psycopg.types.json import Jsonb

from infrastructure.postgres.arrays import column_arrays, execute_typed
from projections.rows import (
    AlertSuppressedRow,
    CaseEventRow,
    SuppressionChanged,
    WatchlistChanged,
)

INSERT_HISTORY: Final = (
    "INSERT INTO case_history (case_id, version, event_type, status, actor_subject, "
    "actor_role, note, details, at, notification_id) "
    "SELECT * FROM unnest(%b::uuid[], %b::bigint[], %b::text[], %b::text[], %b::text[], "
    "%b::text[], %b::text[], %b::jsonb[], %b::timestamptz[], %b::bigint[]) "
    "ON CONFLICT (case_id, version) DO NOTHING RETURNING case_id"
)

# The case as its recorded steps make it: the opening's facts, the latest status, the
# latest assignee, the closing's resolution. Nothing until the opening itself is here.
# Recomputed once per batch for every case that got a new step: the row depends only on
# the steps recorded, so once after the last equals once after each.
RECOMPUTE_CASE: Final = """
INSERT INTO cases AS c (case_id, alert_id, account_id, branch, rule, severity, status,
    assignee, resolution, explanation, version, opened_at, updated_at, closed_at,
    notification_id)
SELECT o.case_id, (o.details->>'alert_id')::uuid, (o.details->>'account_id')::uuid,
    coalesce(o.details->>'branch', (SELECT a.branch FROM accounts a
        WHERE a.account_id = (o.details->>'account_id')::uuid)),
    o.details->>'rule', o.details->>'severity', coalesce(st.status, 'open'),
    asg.assignee, cl.resolution, coalesce(o.details->>'explanation', ''),
    last.version, o.at, last.at, cl.at, last.notification_id
FROM case_history o
CROSS JOIN LATERAL (SELECT h.version, h.at, h.notification_id FROM case_history h
    WHERE h.case_id = o.case_id ORDER BY h.version DESC LIMIT 1) last
LEFT JOIN LATERAL (SELECT h.status FROM case_history h
    WHERE h.case_id = o.case_id AND h.status IS NOT NULL
    ORDER BY h.version DESC LIMIT 1) st ON true
LEFT JOIN LATERAL (SELECT h.details->>'assignee' AS assignee FROM case_history h
    WHERE h.case_id = o.case_id AND h.event_type = 'CaseAssigned'
    ORDER BY h.version DESC LIMIT 1) asg ON true
LEFT JOIN LATERAL (SELECT h.details->>'resolution' AS resolution, h.at
    FROM case_history h WHERE h.case_id = o.case_id AND h.event_type = 'CaseClosed'
    ORDER BY h.version DESC LIMIT 1) cl ON true
WHERE o.case_id = ANY(%(case_ids)b::uuid[]) AND o.event_type = 'CaseOpened'
ON CONFLICT (case_id) DO UPDATE SET branch = coalesce(c.branch, EXCLUDED.branch),
    status = EXCLUDED.status, assignee = EXCLUDED.assignee, resolution = EXCLUDED.resolution,
    version = EXCLUDED.version, updated_at = EXCLUDED.updated_at,
    closed_at = EXCLUDED.closed_at, notification_id = EXCLUDED.notification_id
"""

# UPSERT_WATCHLIST's unnest arrays, in order, by the row attribute each is read from.
WATCHLIST_COLUMNS: Final = (
    "account_id",
    "listed",
    "reason",
    "at",
    "actor_subject",
    "actor_role",
    "version",
    "notification_id",
)
UPSERT_WATCHLIST: Final = (
    "INSERT INTO watchlist AS w (account_id, listed, reason, changed_at, changed_by, "
    "changed_by_role, version, notification_id) SELECT * FROM unnest(%b::uuid[], "
    "%b::boolean[], %b::text[], %b::timestamptz[], %b::text[], %b::text[], %b::bigint[], "
    "%b::bigint[]) "
    "ON CONFLICT (account_id) DO UPDATE SET listed = EXCLUDED.listed, "
    "reason = EXCLUDED.reason, changed_at = EXCLUDED.changed_at, "
    "changed_by = EXCLUDED.changed_by, changed_by_role = EXCLUDED.changed_by_role, "
    "version = EXCLUDED.version, notification_id = EXCLUDED.notification_id "
    "WHERE w.version < EXCLUDED.version"
)


async def apply_watchlist(conn: AsyncConnection[Any], rows: list[WatchlistChanged]) -> None:
    """At most one row per account (its highest version): one upsert may not touch a row twice."""
    assert len({r.account_id for r in rows}) == len(rows), "one row per account"
    await execute_typed(conn, UPSERT_WATCHLIST, column_arrays(rows, WATCHLIST_COLUMNS))


async def apply_case_events(conn: AsyncConnection[Any], rows: list[CaseEventRow]) -> None:
    cursor = await execute_typed(
        conn,
        INSERT_HISTORY,
        (
            [r.case_id for r in rows],
            [r.version for r in rows],
            [r.event_type for r in rows],
            [r.status for r in rows],
            [r.actor_subject for r in rows],
            [r.actor_role for r in rows],
            [r.note for r in rows],
            [Jsonb(r.details) for r in rows],
            [r.at for r in rows],
            [r.notification_id for r in rows],
        ),
    )
    stepped = list({row[0] for row in await cursor.fetchall()})
    if stepped:
        await conn.execute(RECOMPUTE_CASE, {"case_ids": stepped})


INSERT_SUPPRESSIONS: Final = (
    "INSERT INTO suppressions (suppression_id, account_id, rule, until, reason, created_by, "
    "created_at, updated_at, version, notification_id, status) "
    "SELECT s.suppression_id, s.account_id, s.rule, s.until, s.reason, s.created_by, s.at, "
    "s.at, s.version, s.notification_id, 'active' FROM unnest(%b::uuid[], %b::uuid[], "
    "%b::text[], %b::timestamptz[], %b::text[], %b::text[], %b::timestamptz[], %b::bigint[], "
    "%b::bigint[]) AS s(suppression_id, account_id, rule, until, reason, created_by, at, "
    "version, notification_id) ON CONFLICT (suppression_id) DO NOTHING"
)
REVOKE_SUPPRESSIONS: Final = (
    "UPDATE suppressions AS s SET status = 'revoked', revoked_by = r.actor, "
    "revoke_reason = r.reason, updated_at = r.at, version = r.version, "
    "notification_id = r.notification_id FROM unnest(%b::uuid[], %b::text[], %b::text[], "
    "%b::timestamptz[], %b::bigint[], %b::bigint[]) AS r(suppression_id, actor, reason, at, "
    "version, notification_id) WHERE s.suppression_id = r.suppression_id "
    "AND s.version < r.version"
)
INSERT_SUPPRESSED_ALERTS: Final = (
    "INSERT INTO suppressed_alerts (alert_id, suppression_id, account_id, at, notification_id) "
    "SELECT * FROM unnest(%b::uuid[], %b::uuid[], %b::uuid[], %b::timestamptz[], %b::bigint[]) "
    "ON CONFLICT (alert_id) DO NOTHING"
)


async def apply_suppressions(
    conn: AsyncConnection[Any],
    changes: list[SuppressionChanged],
    suppressed: list[AlertSuppressedRow],
) -> None:
    """Suppressions created, then revoked (a batch may hold both, in that order), and the
    alerts they held back."""
    created = [c for c in changes if not c.revoked]
    if created:
        await execute_typed(
            conn,
            INSERT_SUPPRESSIONS,
            (
                [c.suppression_id for c in created],
                [c.account_id for c in created],
                [c.rule for c in created],
                [c.until for c in created],
                [c.reason for c in created],
                [c.actor_subject for c in created],
                [c.at for c in created],
                [c.version for c in created],
                [c.notification_id for c in created],
            ),
        )
    revoked = [c for c in changes if c.revoked]
    if revoked:
        await execute_typed(
            conn,
            REVOKE_SUPPRESSIONS,
            column_arrays(
                revoked,
                ("suppression_id", "actor_subject", "reason", "at", "version", "notification_id"),
            ),
        )
    if suppressed:
        await execute_typed(
            conn,
            INSERT_SUPPRESSED_ALERTS,
            column_arrays(
                suppressed, ("alert_id", "suppression_id", "account_id", "at", "notification_id")
            ),
        )
