"""PostgreSQL reads the typed arrays back as the values sent: NULLs, extremes, text of
every script, instants in any zone, empty arrays."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from uuid import uuid4

import psycopg

from infrastructure.postgres.arrays import typed
from tests.conftest import Databases, database_url

ROUND_TRIP = (
    "SELECT %b::uuid[], %b::bigint[], %b::text[], %b::timestamptz[], %b::bytea[], "
    "%b::uuid[], %b::text[], %b::bigint[]"
)


def test_every_typed_array_reads_back_as_sent(databases: Databases) -> None:
    ids = [uuid4(), None, uuid4()]
    bigints = [-(2**63), 0, None, 2**63 - 1]
    texts = ["", "plain", None, "Ünïcödé ✓ 漢字 🙂", "quote ' and \" and {braces}, comma"]
    instants = [
        datetime(1, 1, 2, tzinfo=UTC),
        None,
        datetime(2026, 12, 6, 15, 30, 0, 123456, tzinfo=timezone(timedelta(hours=5, minutes=30))),
        datetime(9999, 12, 30, 23, 59, 59, 999999, tzinfo=UTC),
    ]
    blobs = [b"", b"\x00\xff" * 100, None]
    params = [ids, bigints, texts, instants, blobs, [None, None], [], []]
    # Ids read from a message's JSON are text: they go as the same uuid[].
    as_text = [None if i is None else str(i) for i in ids]
    with psycopg.connect(database_url(databases.fresh()), autocommit=True) as conn:
        (row,) = conn.execute(ROUND_TRIP, typed(ROUND_TRIP, params)).fetchall()
        (from_text,) = conn.execute("SELECT %b::uuid[]", typed("SELECT %b::uuid[]", [as_text]))
    assert list(row) == params
    assert from_text == (ids,)
