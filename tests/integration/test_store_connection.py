"""The event store's pool connects as VIGIL_DATABASE_URL says, parameters included (the
library has no setting for `sslmode` and the certificates, and dropped them)."""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit, urlunsplit

import psycopg
import pytest
from eventsourcing.persistence import OperationalError

from application.ledger import Ledger, LedgerOptions
from infrastructure.eventstore.ledger import event_store_env, money_ceilings, open_ledger
from infrastructure.settings import Settings


def _with_query(settings: Settings, query: str) -> Settings:
    parts = urlsplit(settings.resolved_database_url())
    url = urlunsplit(parts._replace(query="&".join(filter(None, [parts.query, query]))))
    return settings.model_copy(update={"database_url": url})


def _server_has_tls(settings: Settings) -> bool:
    with psycopg.connect(settings.resolved_database_url(), autocommit=True) as conn:
        row = conn.execute("SHOW ssl").fetchone()
    return bool(row and row[0] == "on")


def test_the_pool_connects_with_the_urls_parameters(settings: Settings) -> None:
    named = _with_query(settings, "application_name=vigil-store-pool-test")
    ledger = open_ledger(named)
    try:
        ledger.recorder.max_notification_id()  # a connection from the pool
        with psycopg.connect(settings.resolved_database_url(), autocommit=True) as conn:
            names = conn.execute(
                "SELECT application_name FROM pg_stat_activity WHERE datname = current_database()"
            ).fetchall()
        assert ("vigil-store-pool-test",) in names
    finally:
        ledger.close()


def test_sslmode_reaches_the_pool(settings: Settings) -> None:
    """Against a server without TLS, `sslmode=require` must keep the pool from connecting
    (a pool that dropped it would connect in plaintext), where `sslmode=disable` connects."""
    if _server_has_tls(settings):
        pytest.skip("this PostgreSQL serves TLS: sslmode=require would connect")

    def newest_id(query: str) -> int | None:
        chosen = _with_query(settings, query)
        env: dict[str, Any] = event_store_env(chosen, create_table=False)
        options = LedgerOptions(mac_key=b"k" * 32, ceilings=money_ceilings(chosen))
        ledger = Ledger(env=env, options=options)
        try:
            return ledger.recorder.max_notification_id()
        finally:
            ledger.close()

    open_ledger(settings).close()  # the tables exist
    newest_id("sslmode=disable")
    with pytest.raises(OperationalError):
        newest_id("sslmode=require")
