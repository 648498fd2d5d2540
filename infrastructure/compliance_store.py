"""Applies the compliance projections' rows (`projections/compliance.py`) in PostgreSQL,
inside the batch transaction of `projection_store.apply_batch`.

A case's row is recomputed from its whole history after each step is recorded, so the
result depends only on which steps have arrived, never on their order: a step delivered
early, late or twice leaves the same row as the store's order would.
"""

from __future__ import annotations

from typing import Any, Final

from psycopg import AsyncConnection
from psycopg.types.json import Jsonb

from projections.rows import CaseEventRow, WatchlistChanged

INSERT_HISTORY: Final = (
    "INSERT INTO case_history (case_id, version, event_type, status, actor_subject, "
    "actor_role, note, details, at, notification_id) "
    "VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s) ON CONFLICT (case_id, version) DO NOTHING"
)

# The case as its recorded steps make it: the opening's facts, the latest status, the
# latest assignee, the closing's resolution. Nothing until the opening itself is here.
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
WHERE o.case_id = %(case_id)s AND o.event_type = 'CaseOpened'
ON CONFLICT (case_id) DO UPDATE SET branch = coalesce(c.branch, EXCLUDED.branch),
    status = EXCLUDED.status, assignee = EXCLUDED.assignee, resolution = EXCLUDED.resolution,
    version = EXCLUDED.version, updated_at = EXCLUDED.updated_at,
    closed_at = EXCLUDED.closed_at, notification_id = EXCLUDED.notification_id
"""

UPSERT_WATCHLIST: Final = (
    "INSERT INTO watchlist AS w (account_id, listed, reason, changed_at, changed_by, "
    "changed_by_role, version, notification_id) VALUES (%s, %s, %s, %s, %s, %s, %s, %s) "
    "ON CONFLICT (account_id) DO UPDATE SET listed = EXCLUDED.listed, "
    "reason = EXCLUDED.reason, changed_at = EXCLUDED.changed_at, "
    "changed_by = EXCLUDED.changed_by, changed_by_role = EXCLUDED.changed_by_role, "
    "version = EXCLUDED.version, notification_id = EXCLUDED.notification_id "
    "WHERE w.version < EXCLUDED.version"
)


async def apply_row(conn: AsyncConnection[Any], row: CaseEventRow | WatchlistChanged) -> None:
    match row:
        case CaseEventRow():
            await _apply_case_event(conn, row)
        case WatchlistChanged():
            await conn.execute(
                UPSERT_WATCHLIST,
                (
                    row.account_id,
                    row.listed,
                    row.reason,
                    row.at,
                    row.actor_subject,
                    row.actor_role,
                    row.version,
                    row.notification_id,
                ),
            )


async def _apply_case_event(conn: AsyncConnection[Any], row: CaseEventRow) -> None:
    cursor = await conn.execute(
        INSERT_HISTORY,
        (
            row.case_id,
            row.version,
            row.event_type,
            row.status,
            row.actor_subject,
            row.actor_role,
            row.note,
            Jsonb(row.details),
            row.at,
            row.notification_id,
        ),
    )
    if cursor.rowcount == 1:
        await conn.execute(RECOMPUTE_CASE, {"case_id": row.case_id})
