"""Stored events, command replies and the event index are append-only, on a real
PostgreSQL: the triggers refuse the owner itself, and a service role set up by
`vigil migrate --grant-to` can write commands but cannot change, remove or unguard
anything."""

from __future__ import annotations

import argparse
import asyncio
import secrets
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit
from uuid import uuid4

import psycopg
import pytest

from application.commands import Deposit, OpenAccount, Transfer
from application.compliance import Compliance
from application.ledger import Ledger
from domain.integrity import Actor
from domain.money import Money
from infrastructure.eventstore.ledger import open_ledger
from infrastructure.monitoring.alerts import register_config
from infrastructure.readmodels.readstore import prepare_read_models
from infrastructure.relay.state import RelayStore
from infrastructure.settings import ConfigurationError, Settings
from infrastructure.workers.case_opener_store import (
    Quarantined,
    case_opener_quarantine_count,
    prepare_quarantine_table,
    record_quarantined,
)
from infrastructure.workers.projections import migrate_read_models
from interfaces.cli.commands.migrate import run_migrate_cli
from tests.conftest import RUN_ID, Databases, _admin_execute, database_url
from tests.integration.support import run_group

pytestmark = pytest.mark.integration

TELLER = Actor("alice", "teller")
OFFICER = Actor("olivia", "compliance")
GUARDED = ("ledger_events", "command_replies", "event_index")
CHANGES = {
    "update": "UPDATE public.{table} SET {column} = {column}",
    "delete": "DELETE FROM public.{table}",
    "truncate": "TRUNCATE public.{table}",
}
# A column of each table that an UPDATE could rewrite.
COLUMNS = {"ledger_events": "state", "command_replies": "body", "event_index": "event_type"}


def gbp(minor: int) -> Money:
    return Money(minor, "GBP")


def seed(ledger: Ledger) -> None:
    a, b = uuid4(), uuid4()
    run_group(
        ledger, OpenAccount(a, "Ada", "001", "GBP", 0), OpenAccount(b, "Bob", "001", "GBP", 0)
    )
    run_group(ledger, Deposit(a, gbp(10_000), uuid4()))
    run_group(ledger, Transfer(a, b, gbp(2_500), uuid4()))


def fingerprint(url: str, table: str) -> tuple[int, str]:
    """Row count and a digest of every row: equal before and after means nothing changed."""
    with psycopg.connect(url) as conn:
        row = conn.execute(
            f"SELECT count(*), md5(coalesce(string_agg(t::text, '|' ORDER BY t::text), '')) "
            f"FROM public.{table} t"
        ).fetchone()
    assert row is not None
    return int(row[0]), str(row[1])


# As the owner (the test role is a superuser) ---------------------------------------------


@pytest.fixture
def seeded(settings_factory) -> Settings:  # type: ignore[no-untyped-def]
    settings: Settings = settings_factory()
    ledger = open_ledger(settings)
    try:
        seed(ledger)
    finally:
        ledger.close()
    return settings


@pytest.mark.parametrize("table", GUARDED)
@pytest.mark.parametrize("change", list(CHANGES))
def test_the_owner_cannot_update_delete_or_truncate_and_nothing_changes(
    seeded: Settings, table: str, change: str
) -> None:
    url = seeded.resolved_database_url()
    before = fingerprint(url, table)
    assert before[0] > 0
    statement = CHANGES[change].format(table=table, column=COLUMNS[table])
    with psycopg.connect(url) as conn, pytest.raises(psycopg.errors.RaiseException) as refused:
        conn.execute(statement)
    assert refused.value.diag.message_primary == f"{table} is append-only"
    assert fingerprint(url, table) == before


def test_migrating_again_keeps_one_trigger_of_each_kind_per_table(seeded: Settings) -> None:
    for _ in range(2):
        open_ledger(seeded).close()
    with psycopg.connect(seeded.resolved_database_url()) as conn:
        rows = conn.execute(
            "SELECT c.relname, t.tgname FROM pg_trigger t JOIN pg_class c ON c.oid = t.tgrelid "
            "WHERE t.tgname LIKE '%append_only%' ORDER BY 1, 2"
        ).fetchall()
    assert rows == sorted(
        (table, f"{table}_append_only{suffix}") for table in GUARDED for suffix in ("", "_truncate")
    )


# As a service role that owns nothing ------------------------------------------------------


@dataclass
class Deployment:
    owner: Settings
    service: Settings
    role: str


def as_role(url: str, role: str) -> str:
    parts = urlsplit(url)
    return urlunsplit(parts._replace(netloc=f"{role}@{parts.hostname}:{parts.port or 5432}"))


@pytest.fixture
def deployment(databases: Databases, tmp_path: Path) -> Iterator[Deployment]:
    """An empty database migrated by the owner with `--grant-to` a fresh LOGIN role."""
    token = secrets.token_hex(4)
    name, role = f"vigil_t{RUN_ID}_roles_{token}", f"vigil_t_service_{token}"
    _admin_execute(f'CREATE DATABASE "{name}"')
    _admin_execute(f'CREATE ROLE "{role}" LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE')
    try:
        owner = databases.settings_for(name, tmp_path / "var")
        assert run_migrate_cli(argparse.Namespace(grant_to=role), owner) == 0
        service = databases.settings_for(
            name,
            tmp_path / "var",
            database_url=as_role(database_url(name), role),
            migrate_on_start=False,
        )
        yield Deployment(owner, service, role)
    finally:
        _admin_execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        _admin_execute(f'DROP ROLE IF EXISTS "{role}"')


def test_the_service_role_runs_commands_without_migrating(deployment: Deployment) -> None:
    service = deployment.service
    # Every start-up path with migrate_on_start off runs no DDL, so none is refused.
    asyncio.run(migrate_read_models(service))
    prepare_read_models(service)
    ledger = open_ledger(service)
    try:
        seed(ledger)
        compliance = Compliance(ledger)
        account = uuid4()
        run_group(ledger, OpenAccount(account, "Cy", "001", "GBP", 0))
        compliance.add_to_watchlist(account, "sanctions hit", OFFICER, "corr-list")
    finally:
        ledger.close()
    url = service.resolved_database_url()
    with psycopg.connect(url) as conn:
        row = conn.execute(
            "SELECT current_user, (SELECT count(*) FROM ledger_events), "
            "(SELECT count(*) FROM event_index), (SELECT count(*) FROM command_replies)"
        ).fetchone()
    # Replies: the three openings and the two money commands; the watchlist has none.
    assert row == (deployment.role, 7, 7, 5)


def test_the_service_role_writes_relay_state_rule_configs_read_models_audit_and_quarantine_rows(
    deployment: Deployment,
) -> None:
    async def write() -> None:
        store = await RelayStore.connect(deployment.service, "t.vigil.ledger.events")
        try:
            await store.migrate()
            state = await store.load()
            state.position = 5
            await store.record(state, {0: 4})
        finally:
            await store.close()
        async with await psycopg.AsyncConnection.connect(
            deployment.service.resolved_database_url(), autocommit=True
        ) as conn:
            assert await register_config(conn, {"rules": {}}, "digest-1", "test") >= 1
            await conn.execute(
                "UPDATE readmodel.projection_positions SET position = 0 WHERE projection = 'kpis'"
            )
            await conn.execute(
                "INSERT INTO readmodel.alerts_outbox (alert_id, account_id, payload) "
                "VALUES (gen_random_uuid(), gen_random_uuid(), '{}')"
            )
            await conn.execute("DELETE FROM readmodel.alerts_outbox")
            await conn.execute(
                "INSERT INTO public.audit_access_log (subject, role, action) "
                "VALUES ('ann', 'auditor', 'events.read')"
            )
            await conn.execute(
                "INSERT INTO public.audit_checkpoints "
                "(notification_id, rolling_hash, time, key_id, signature) "
                "VALUES (1, 'h', now(), 'k', 's')"
            )
            await prepare_quarantine_table(conn, deployment.service)  # no DDL: none refused
            row = Quarantined("t.vigil.alerts", 0, 7, None, None, "JSONDecodeError", b"x")
            assert await record_quarantined(conn, row)
            assert await case_opener_quarantine_count(conn) == 1

    asyncio.run(write())


SERVICE_REFUSED = [
    "UPDATE public.ledger_events SET state = state",
    "DELETE FROM public.ledger_events",
    "TRUNCATE public.ledger_events",
    "UPDATE public.command_replies SET body = body",
    "DELETE FROM public.event_index",
    "TRUNCATE public.event_index",
    "ALTER TABLE public.ledger_events DISABLE TRIGGER ALL",
    "ALTER TABLE public.ledger_events DISABLE TRIGGER ledger_events_append_only",
    "DROP TRIGGER ledger_events_append_only ON public.ledger_events",
    "DROP TRIGGER ledger_events_append_only_truncate ON public.ledger_events",
    "DROP FUNCTION public.vigil_refuse_change() CASCADE",
    "CREATE OR REPLACE FUNCTION public.vigil_refuse_change() RETURNS trigger "
    "LANGUAGE plpgsql AS $$ BEGIN RETURN NEW; END $$",
    "DROP TABLE public.ledger_events",
    "DROP TABLE public.event_index",
    "ALTER TABLE public.ledger_events OWNER TO CURRENT_USER",
    "SET session_replication_role = replica",
]


def test_the_service_role_cannot_change_remove_or_unguard_stored_events(
    deployment: Deployment,
) -> None:
    ledger = open_ledger(deployment.service)
    try:
        seed(ledger)
    finally:
        ledger.close()
    owner_url = deployment.owner.resolved_database_url()
    before = {table: fingerprint(owner_url, table) for table in GUARDED}
    with psycopg.connect(deployment.service.resolved_database_url(), autocommit=True) as conn:
        # The lock the library takes for every write stays allowed.
        with conn.transaction():
            conn.execute("LOCK TABLE public.ledger_events IN EXCLUSIVE MODE")
        # UPDATE is granted (for that lock): the trigger is what refuses it.
        with pytest.raises(psycopg.errors.RaiseException, match="ledger_events is append-only"):
            conn.execute("UPDATE public.ledger_events SET topic = topic")
        allowed = []
        for statement in SERVICE_REFUSED:
            try:
                conn.execute(statement)
            except (psycopg.errors.InsufficientPrivilege, psycopg.errors.RaiseException):
                continue
            allowed.append(statement)
        assert allowed == []
        # Granting itself more is not an error, only a warning that nothing was granted.
        conn.execute("GRANT DELETE, TRUNCATE ON public.ledger_events TO CURRENT_USER")
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute("DELETE FROM public.ledger_events")
    assert {table: fingerprint(owner_url, table) for table in GUARDED} == before


def test_migrate_refuses_to_grant_to_the_owner_or_a_superuser(deployment: Deployment) -> None:
    with pytest.raises(ConfigurationError, match="superuser"):
        run_migrate_cli(argparse.Namespace(grant_to="postgres"), deployment.owner)
    with pytest.raises(ConfigurationError, match="does not exist"):
        run_migrate_cli(argparse.Namespace(grant_to=f"{deployment.role}_nobody"), deployment.owner)
