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

from infrastructure.postgres.arrays import column_arrays
from projections.rows import CaseEventRow, WatchlistChanged

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
    await conn.execute(UPSERT_WATCHLIST, column_arrays(rows, WATCHLIST_COLUMNS))


async def apply_case_events(conn: AsyncConnection[Any], rows: list[CaseEventRow]) -> None:
    cursor = await conn.execute(
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
