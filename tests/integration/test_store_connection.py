"""The event store's pool connects as VIGIL_DATABASE_URL says, parameters included (the
library has no setting for `sslmode` and the certificates, and dropped them)."""

from __future__ import annotations

from pathlib import Path
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


def test_sslmode_reaches_the_pool(settings: Settings, tmp_path: Path) -> None:
    """`sslmode=verify-full` with a root certificate that does not exist must keep the pool
    from connecting, whether the server serves TLS (nothing to verify it against) or not
    (TLS required): a pool that dropped the parameters would connect in plaintext. With
    `sslmode=disable` it connects."""
    missing_root = tmp_path / "no-such-root.crt"

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
        newest_id(f"sslmode=verify-full&sslrootcert={missing_root}")
