"""The mark's walk over a large sparse backlog on real PostgreSQL: steps that grow, the
store's gaps and the relay's quarantined ids passed, a missing id that stops it."""

from __future__ import annotations

import asyncio
from collections.abc import Collection
from typing import Any

import psycopg
import pytest

from application.ledger import Ledger
from infrastructure.readmodels import tracking
from infrastructure.readmodels.tracking import Position, finish_batch, use_schema
from infrastructure.settings import Settings
from tests.integration.support import rows

pytestmark = pytest.mark.integration

BACKLOG = 6_000
TRACKED = "SELECT count(*) FROM readmodel.projection_tracking WHERE projection = 'statements'"


def store_backlog(settings: Settings) -> list[int]:
    """BACKLOG raw stored ids with two gaps (rolled-back inserts) among them."""
    with psycopg.connect(settings.resolved_database_url(), autocommit=True) as conn:
        for part in range(3):
            conn.execute(
                "INSERT INTO ledger_events (originator_id, originator_version, topic, state) "
                "SELECT gen_random_uuid(), 1, 'x', ''::bytea FROM generate_series(1, %s)",
                (BACKLOG // 3,),
            )
            if part < 2:
                with conn.transaction(force_rollback=True):
                    conn.execute(
                        "INSERT INTO ledger_events (originator_id, originator_version, topic, "
                        "state) SELECT gen_random_uuid(), 1, 'x', ''::bytea "
                        "FROM generate_series(1, 50)"
                    )
        ids = [int(r[0]) for r in conn.execute("SELECT notification_id FROM ledger_events")]
    ids.sort()
    assert len(ids) == BACKLOG
    assert ids[-1] - ids[0] + 1 == BACKLOG + 100, "two gaps"
    return ids


def track_and_quarantine(settings: Settings, tracked: list[int], quarantined: list[int]) -> None:
    with psycopg.connect(settings.resolved_database_url(), autocommit=True) as conn:
        conn.execute(
            "INSERT INTO readmodel.projection_tracking (projection, notification_id) "
            "SELECT 'statements', unnest(%s::bigint[])",
            (tracked,),
        )
        conn.execute(
            "INSERT INTO public.relay_quarantine (notification_id, topic, originator_id, "
            "originator_version, error) SELECT i, 'x', gen_random_uuid(), 1, 'test' "
            "FROM unnest(%s::bigint[]) AS i",
            (quarantined,),
        )


async def finish(settings: Settings, position: Position, received: Collection[int]) -> int:
    async with (
        await psycopg.AsyncConnection.connect(
            settings.resolved_database_url(), autocommit=True
        ) as conn,
        conn.transaction(),
    ):
        await use_schema(conn, "readmodel")
        await tracking.lock_position(conn, "statements")
        return await finish_batch(conn, "statements", position, received, len(received))


def count_steps(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    limits: list[int] = []
    walk = tracking.walk_mark

    async def counted(*args: Any) -> tracking.Walk:
        limits.append(args[-1])
        return await walk(*args)

    monkeypatch.setattr(tracking, "walk_mark", counted)
    return limits


def test_a_large_sparse_backlog_is_walked_in_growing_steps_past_gaps_and_quarantine(
    ledger: Ledger, settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(tracking, "MARK_SCAN_FIRST", 8)
    monkeypatch.setattr(tracking, "MARK_SCAN_MAX", 2_048)
    ids = store_backlog(settings)
    quarantined = ids[100:110] + ids[4_000:4_005]
    later = [i for i in ids[1:] if i not in set(quarantined)]
    # Every other partition ran ahead: all tracked but the first id.
    track_and_quarantine(settings, later, quarantined)
    limits = count_steps(monkeypatch)

    mark = asyncio.run(finish(settings, Position(0, ids[0]), [ids[0]]))

    assert mark == ids[-1]
    assert rows(settings, TRACKED) == [(0,)]
    # Growing steps, capped: a handful of round trips, not one per smallest step.
    assert limits[:4] == [9, 18, 36, 72]
    assert max(limits) == 2_048
    assert len(limits) <= 12


def test_a_walk_stops_at_a_missing_id_and_a_batch_without_it_does_not_walk(
    ledger: Ledger, settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(tracking, "MARK_SCAN_FIRST", 8)
    monkeypatch.setattr(tracking, "MARK_SCAN_MAX", 512)
    ids = store_backlog(settings)
    missing = ids[3_000]  # a slow partition: ids after it arrived first
    track_and_quarantine(settings, [i for i in ids[1:] if i != missing], [])

    mark = asyncio.run(finish(settings, Position(0, ids[0]), [ids[0]]))
    assert mark == ids[2_999]
    blocked = (
        "SELECT blocked_at FROM readmodel.projection_positions WHERE projection = 'statements'"
    )
    assert rows(settings, blocked) == [(missing,)]
    assert rows(settings, TRACKED) == [(BACKLOG - 3_001,)]

    limits = count_steps(monkeypatch)
    # Another batch that does not bring the missing id: no walk at all.
    assert asyncio.run(finish(settings, Position(mark, missing), [])) == mark
    assert limits == []
    # The missing id arrives: the mark reaches the end and every row is compacted.
    assert asyncio.run(finish(settings, Position(mark, missing), [missing])) == ids[-1]
    assert rows(settings, TRACKED) == [(0,)]
