"""The read models' schema at start: a schema this code made is left alone (its DDL, even
`IF NOT EXISTS`, takes table locks, and a process restarted beside busy workers deadlocked
with them); a changed one is brought up to date."""

from __future__ import annotations

import psycopg

from infrastructure.readmodels.schema import SCHEMA, ensure_read_models, schema_fingerprint
from infrastructure.settings import Settings


def test_a_current_schema_takes_no_lock(settings: Settings) -> None:
    url = settings.resolved_database_url()
    with psycopg.connect(url, autocommit=True) as holder, psycopg.connect(url) as starter:
        ensure_read_models(holder)  # current, fingerprint recorded
        holder.execute("BEGIN")
        holder.execute(f"LOCK TABLE {SCHEMA}.accounts IN ACCESS EXCLUSIVE MODE")
        starter.execute("SET lock_timeout = '1s'")
        try:
            ensure_read_models(starter)  # would wait on the lock, then fail, if it ran DDL
        finally:
            holder.execute("ROLLBACK")


def test_a_changed_schema_is_brought_up_to_date(settings: Settings) -> None:
    with psycopg.connect(settings.resolved_database_url(), autocommit=True) as conn:
        ensure_read_models(conn)
        conn.execute(f"UPDATE {SCHEMA}.schema_fingerprint SET fingerprint = 'an older one'")
        conn.execute(f"DROP INDEX {SCHEMA}.accounts_branch_idx")
        ensure_read_models(conn)
        recorded = conn.execute(f"SELECT fingerprint FROM {SCHEMA}.schema_fingerprint")
        assert recorded.fetchone() == (schema_fingerprint(),)
        index = conn.execute("SELECT to_regclass(%s)", (f"{SCHEMA}.accounts_branch_idx",))
        assert index.fetchone() == ("readmodel.accounts_branch_idx",)
