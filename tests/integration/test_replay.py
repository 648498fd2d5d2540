"""`vigil replay` on real PostgreSQL: a shadow rebuilt from the store equals the live read
models; a corrupted live row shows up in the diff; an in-place replay repairs it."""

from __future__ import annotations

import argparse
import asyncio
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any
from uuid import uuid4

import psycopg
import pytest

from application.commands import ChangeStatus, Deposit, OpenAccount, Submission, Transfer
from application.envelope import envelope
from application.ledger import Ledger
from domain.integrity import Actor
from domain.money import Money
from domain.rules.config import RulesConfig
from infrastructure.eventstore.ledger import open_ledger
from infrastructure.monitoring.alerts import apply_alerts_batch, register_config
from infrastructure.monitoring.rules_config import config_hash
from infrastructure.ops import replay as replay_module
from infrastructure.ops.replay import SHADOW_SCHEMA, TABLES
from infrastructure.readmodels.tracking import apply_batch
from infrastructure.settings import Settings
from infrastructure.workers.projections import migrate_read_models
from interfaces.cli.commands.replay import run_replay_cli
from projections.envelope import Envelope

pytestmark = pytest.mark.integration

T0 = datetime(2026, 8, 1, 10, 0, tzinfo=UTC)


@pytest.fixture
def settings(settings_factory) -> Settings:  # type: ignore[no-untyped-def]
    settings = settings_factory()
    asyncio.run(migrate_read_models(settings))
    return settings


@pytest.fixture
def ledger(settings: Settings) -> Iterator[Ledger]:
    app = open_ledger(settings)
    clock = iter(T0 + timedelta(minutes=i) for i in range(10_000))
    app.options.clock = lambda: next(clock)
    yield app
    app.close()


def seed(ledger: Ledger) -> None:
    actor = Actor("t", "teller")
    a, b = uuid4(), uuid4()
    commands: list[Any] = [
        OpenAccount(a, "Ada", "001", "GBP", 0),
        OpenAccount(b, "Bob", "002", "GBP", 10_000),
        Deposit(a, Money(6_000_000, "GBP"), uuid4(), channel="wire"),
        Transfer(a, b, Money(5_000_000, "GBP"), uuid4()),
        ChangeStatus(b, "freeze", "checks"),
    ]
    for command in commands:
        [outcome] = ledger.execute([Submission(command, actor, "corr")])
        assert outcome.error is None


def project_live(ledger: Ledger, settings: Settings) -> None:
    """What the workers would have done, from the same events."""
    events = [
        Envelope.from_json(envelope(n.id, ledger.mapper.to_domain_event(n)))  # type: ignore[arg-type]
        for n in ledger.recorder.select_notifications(start=None, limit=10_000)
    ]

    async def run() -> None:
        async with await psycopg.AsyncConnection.connect(
            settings.resolved_database_url(), autocommit=True
        ) as conn:
            config = RulesConfig()
            version = await register_config(conn, config.describe(), config_hash(config), "")
            await apply_alerts_batch(conn, events, config, version)
            for projection in TABLES:
                if projection != "alerts":
                    await apply_batch(conn, projection, events)

    asyncio.run(run())


def cli(
    settings: Settings, projection: str | None, *, shadow: bool = False, diff: bool = False
) -> int:
    args = argparse.Namespace(projection=projection, to_shadow=shadow, diff=diff)
    return run_replay_cli(args, settings)


def test_a_shadow_rebuilt_from_the_store_equals_the_live_read_models(
    ledger: Ledger, settings: Settings, capsys: pytest.CaptureFixture[str]
) -> None:
    seed(ledger)
    project_live(ledger, settings)
    assert cli(settings, "balances", shadow=True) == 0
    assert cli(settings, None, shadow=True) == 0  # every projection
    assert cli(settings, None, diff=True) == 0
    out = capsys.readouterr().out
    assert "replayed 6 events" in out  # 2 openings, deposit, 2 transfer sides, freeze
    assert "no difference" in out
    with psycopg.connect(settings.resolved_database_url()) as conn:
        alerts = conn.execute(f"SELECT count(*) FROM {SHADOW_SCHEMA}.alerts").fetchone()
    assert alerts is not None
    assert alerts[0] >= 1, "the shadow has alerts too"


def test_a_corrupted_live_row_shows_in_the_diff_and_an_in_place_replay_repairs_it(
    ledger: Ledger, settings: Settings, capsys: pytest.CaptureFixture[str]
) -> None:
    seed(ledger)
    project_live(ledger, settings)
    with psycopg.connect(settings.resolved_database_url(), autocommit=True) as conn:
        conn.execute(
            "UPDATE readmodel.accounts SET balance_minor = balance_minor + 1 WHERE branch = '002'"
        )
    assert cli(settings, "balances", shadow=True) == 0
    capsys.readouterr()
    assert cli(settings, "balances", diff=True) == 1
    out = capsys.readouterr().out
    assert "accounts [account_id=" in out
    assert "live only" in out
    assert "shadow only" in out
    assert cli(settings, "balances") == 0
    assert cli(settings, "balances", diff=True) == 0


def test_a_replay_a_page_per_event_carries_each_window_to_the_next_page(
    ledger: Ledger, settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The replay keeps the windows it stored between pages (reading only their versions):
    with one event per page, every account's window crosses pages, and the shadow must
    still equal live read models projected in one batch, alerts and windows included."""
    seed(ledger)
    actor = Actor("t", "teller")
    a = uuid4()
    [opened] = ledger.execute([Submission(OpenAccount(a, "Cy", "001", "GBP", 0), actor, "c")])
    assert opened.error is None
    for _ in range(25):  # past the velocity rule's 20 movements an hour
        deposit = Deposit(a, Money(9_500_00, "GBP"), uuid4(), channel="cash")
        [outcome] = ledger.execute([Submission(deposit, actor, "c")])
        assert outcome.error is None
    project_live(ledger, settings)
    monkeypatch.setattr(replay_module, "PAGE_EVENTS", 1)
    assert cli(settings, None, shadow=True) == 0
    assert cli(settings, None, diff=True) == 0
    with psycopg.connect(settings.resolved_database_url()) as conn:
        row = conn.execute(
            f"SELECT count(*) FROM {SHADOW_SCHEMA}.rule_window_movements WHERE account_id = %s",
            (a,),
        ).fetchone()
    assert row == (25,)
