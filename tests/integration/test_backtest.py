"""Back-testing rule configurations over the real event store."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from uuid import uuid4

import psycopg
import pytest

from application.commands import Deposit, OpenAccount, Withdraw
from application.ledger import Ledger
from domain.money import Money
from infrastructure.eventstore.ledger import open_ledger
from infrastructure.monitoring.backtest import run_backtest
from infrastructure.settings import Settings
from infrastructure.workers.projections import migrate_read_models
from interfaces.cli.commands.rules import describe
from tests.integration.support import Clock, run

pytestmark = pytest.mark.integration

T0 = datetime(2026, 7, 1, 8, 0, tzinfo=UTC)


@pytest.fixture
def settings(settings_factory) -> Settings:  # type: ignore[no-untyped-def]
    settings = settings_factory()
    asyncio.run(migrate_read_models(settings))
    return settings


@pytest.fixture
def ledger(settings: Settings) -> Iterator[Ledger]:
    app = open_ledger(settings)
    app.options.clock = Clock(T0)
    yield app
    app.close()


def seed(ledger: Ledger) -> None:
    """Movements of 30,000 to 60,000 GBP: with the default large threshold (50,000) two of
    them are large; at 40,000 four are (39,999.99 never is)."""
    account = uuid4()
    run(ledger, OpenAccount(account, "Big", "001", "GBP", 0))
    for minor in (30_000_00, 45_000_00, 41_000_00, 55_000_00, 60_000_00, 39_999_99):
        run(ledger, Deposit(account, Money(minor, "GBP"), uuid4(), channel="wire"))


def test_backtesting_the_live_configuration_reports_no_difference(
    ledger: Ledger, settings: Settings, tmp_path: Path
) -> None:
    seed(ledger)
    same = tmp_path / "same.toml"
    same.write_text("[thresholds]\nlarge_transaction = 50000\n")
    report = run_backtest(settings, same, progress=lambda _: None)
    assert report.only_candidate == []
    assert report.only_live == []
    assert len(report.live) == 2
    assert "no difference" in describe(report)


def test_a_lower_threshold_reports_exactly_the_extra_alerts_expected(
    ledger: Ledger, settings: Settings, tmp_path: Path
) -> None:
    seed(ledger)
    lower = tmp_path / "lower.toml"
    lower.write_text("[thresholds]\nlarge_transaction = 40000\n")
    report = run_backtest(settings, lower, progress=lambda _: None)
    extra = report.only_candidate
    assert sorted(h.explanation for h in extra) == [
        "deposit of 41,000.00 GBP, at or above 40,000.00",
        "deposit of 45,000.00 GBP, at or above 40,000.00",
    ]
    assert report.only_live == []
    with psycopg.connect(settings.resolved_database_url()) as conn:
        shadow = conn.execute("SELECT count(*) FROM readmodel.alerts_shadow").fetchone()
    assert shadow == (4,)


def test_the_time_range_limits_which_alerts_count(
    ledger: Ledger, settings: Settings, tmp_path: Path
) -> None:
    seed(ledger)
    lower = tmp_path / "lower.toml"
    lower.write_text("[thresholds]\nlarge_transaction = 40000\n")
    # Deposits land at T0+2min .. T0+6min: from T0+4min keeps 41k (4), 55k (5), 60k (6).
    report = run_backtest(settings, lower, since=T0 + timedelta(minutes=4), progress=lambda _: None)
    assert len(report.candidate) == 3
    assert [h.explanation for h in report.only_candidate] == [
        "deposit of 41,000.00 GBP, at or above 40,000.00"
    ]


def test_a_candidate_screening_reports_how_many_commands_it_would_have_held(
    ledger: Ledger, settings: Settings, tmp_path: Path
) -> None:
    account = uuid4()
    run(ledger, OpenAccount(account, "Big", "001", "GBP", 0))
    run(ledger, Deposit(account, Money(200_000_00, "GBP"), uuid4(), channel="wire"))
    for minor in (45_000_00, 30_000_00, 40_000_00):
        run(ledger, Withdraw(account, Money(minor, "GBP"), uuid4(), channel="wire"))
    candidate = tmp_path / "screening.toml"
    candidate.write_text("[screening]\nhold_at_or_above = 40000\n")
    report = run_backtest(settings, candidate, progress=lambda _: None)
    assert report.live_screened.held == 0  # 250,000 by default
    held = report.candidate_screened
    assert (held.held, held.by_rule, held.totals_minor) == (
        2,
        {"screening_amount": 2},
        {"GBP": 85_000_00},
    )
    assert (
        "screening would have held for review: live none; candidate 2 (screening_amount 2), "
        "totalling 85,000.00 GBP"
    ) in describe(report)
