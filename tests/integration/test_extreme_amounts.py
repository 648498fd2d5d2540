"""The most extreme figures the ceilings allow, through every projection on real
PostgreSQL, stored and read back exactly.

The settings are the largest ceilings `limits` accepts (amount = overdraft = balance
ceiling), so no value a command can produce lies beyond what is tested here: an account
at -OVERDRAFT_MAX, one at BALANCE_MAX, movements of AMOUNT_MAX, in the currency with the
most decimal places and in JPY. The KPI sums are pushed past 2^63 minor units by real
commands (a deposit and a withdrawal of AMOUNT_MAX, a couple of thousand times).
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from uuid import UUID, uuid4

import httpx
import psycopg
import pytest

from application.commands import Deposit, OpenAccount, Submission, Transfer, Withdraw
from application.ledger import Ledger
from domain.errors import BalanceLimitExceeded, InsufficientFunds, InvalidAmount
from domain.integrity import Actor
from domain.money import CURRENCY_EXPONENTS, Money, format_amount, minor_units
from domain.rules.config import RulesConfig
from infrastructure.eventstore.ledger import open_ledger
from infrastructure.limits import BALANCE_RANGE_MINOR_MAX, BIGINT_MAX, CURRENCY_EXPONENT_MAX
from infrastructure.monitoring.alerts import apply_alerts_batch, register_config
from infrastructure.monitoring.rules_config import config_hash
from infrastructure.readmodels.schema import PROJECTIONS, ensure_read_models
from infrastructure.readmodels.tracking import apply_batch
from infrastructure.settings import Settings
from infrastructure.workers.projections import migrate_read_models
from interfaces.api.http.tokens import issue_token
from projections.envelope import Envelope
from tests.conftest import start_query_api
from tests.integration.support import Clock, rows, run_group, stored_envelopes

pytestmark = pytest.mark.integration

ADMIN = Actor("root", "admin")
T0 = datetime(2026, 6, 1, 9, 0, tzinfo=UTC)
WIDEST = max(CURRENCY_EXPONENTS, key=lambda currency: CURRENCY_EXPONENTS[currency])
CURRENCIES = (WIDEST, "JPY")
# The largest ceiling the settings accept for all three at once.
CEILING_MAJOR = BALANCE_RANGE_MINOR_MAX // 10**CURRENCY_EXPONENT_MAX // 2
# Accounts sharing the movements that push the sums past bigint (each window stays small).
VOLUME_ACCOUNTS = 25
GROUP_COMMANDS_MAX = 1_000


@pytest.fixture
def settings(settings_factory) -> Settings:  # type: ignore[no-untyped-def]
    settings: Settings = settings_factory(
        amount_max=CEILING_MAJOR, overdraft_max=CEILING_MAJOR, balance_max=CEILING_MAJOR
    )
    asyncio.run(migrate_read_models(settings))
    return settings


@pytest.fixture
def ledger(settings: Settings) -> Iterator[Ledger]:
    app = open_ledger(settings)
    # A millisecond apart: every movement in one hour, so one hourly row takes the whole sum.
    app.options.clock = Clock(T0, timedelta(milliseconds=1))
    yield app
    app.close()


class Expected:
    """What the test commanded, kept apart from what the projections compute."""

    def __init__(self) -> None:
        self.balances: dict[UUID, int] = {}
        self.sums: Counter[tuple[str, str]] = Counter()
        self.counts: Counter[tuple[str, str]] = Counter()

    def add(self, currency: str, metric: str, amount_minor: int) -> None:
        self.sums[currency, metric] += amount_minor
        self.counts[currency, metric] += 1


def execute(ledger: Ledger, commands: list[Any]) -> None:
    for start in range(0, len(commands), GROUP_COMMANDS_MAX):
        run_group(ledger, *commands[start : start + GROUP_COMMANDS_MAX], actor=ADMIN)


def extremes(ledger: Ledger, currency: str, expected: Expected) -> dict[str, UUID]:
    """An account at -OVERDRAFT_MAX by a withdrawal, one at BALANCE_MAX by a deposit, and
    a pair moved to both ends by one transfer, each movement AMOUNT_MAX."""
    ceiling = minor_units(CEILING_MAJOR, currency)
    names = ("low", "high", "payer", "payee")
    ids = {name: uuid4() for name in names}
    overdrafts = {"low": ceiling, "high": 0, "payer": ceiling, "payee": 0}
    execute(
        ledger,
        [OpenAccount(ids[n], n, "001", currency, overdrafts[n]) for n in names]
        + [
            Withdraw(ids["low"], Money(ceiling, currency), uuid4()),
            Deposit(ids["high"], Money(ceiling, currency), uuid4()),
            Transfer(ids["payer"], ids["payee"], Money(ceiling, currency), uuid4()),
        ],
    )
    for _ in names:
        expected.add(currency, "accounts_opened", 0)
    for metric in ("withdrawals", "deposits", "transfers"):
        expected.add(currency, metric, ceiling)
    expected.balances |= {
        ids["low"]: -ceiling,
        ids["high"]: ceiling,
        ids["payer"]: -ceiling,
        ids["payee"]: ceiling,
    }
    return ids


def volume(ledger: Ledger, expected: Expected) -> None:
    """Deposits and withdrawals of AMOUNT_MAX until the deposits' sum passes 2^63."""
    ceiling = minor_units(CEILING_MAJOR, WIDEST)
    deposits_needed = BIGINT_MAX // ceiling + 1
    accounts = [uuid4() for _ in range(VOLUME_ACCOUNTS)]
    commands: list[Any] = [OpenAccount(a, "volume", "001", WIDEST, 0) for a in accounts]
    for index in range(deposits_needed):
        account = accounts[index % VOLUME_ACCOUNTS]
        commands.append(Deposit(account, Money(ceiling, WIDEST), uuid4()))
        commands.append(Withdraw(account, Money(ceiling, WIDEST), uuid4()))
        expected.add(WIDEST, "deposits", ceiling)
        expected.add(WIDEST, "withdrawals", ceiling)
    for account in accounts:
        expected.add(WIDEST, "accounts_opened", 0)
        expected.balances[account] = 0
    execute(ledger, commands)
    assert expected.sums[WIDEST, "deposits"] > BIGINT_MAX, "the test needs a sum past bigint"


async def project(settings: Settings, events: list[Envelope]) -> None:
    """Every projection, in two batches: one sum folded in Python past bigint, then one
    added to it in SQL."""
    halves = (events[: len(events) // 2], events[len(events) // 2 :])
    config = RulesConfig()
    async with await psycopg.AsyncConnection.connect(
        settings.resolved_database_url(), autocommit=True
    ) as conn:
        version = await register_config(conn, config.describe(), config_hash(config), "")
        for half in halves:
            for projection in PROJECTIONS:
                await apply_batch(conn, projection, half)
            await apply_alerts_batch(conn, half, config, version)


def test_the_widest_values_the_ceilings_allow_are_stored_and_read_back_exactly(
    ledger: Ledger, settings: Settings, tmp_path: Path
) -> None:
    expected = Expected()
    accounts = {c: extremes(ledger, c, expected) for c in CURRENCIES}
    volume(ledger, expected)
    events = stored_envelopes(ledger)
    asyncio.run(project(settings, events))

    assert_balances_and_statements(settings, expected)
    assert_kpis(settings, expected)
    assert_alerts(settings, accounts, events)
    assert_query_api(settings, tmp_path, accounts, expected)


def test_past_the_ceilings_nothing_is_stored(ledger: Ledger) -> None:
    accounts = extremes(ledger, WIDEST, Expected())
    spare = uuid4()
    execute(ledger, [OpenAccount(spare, "spare", "001", WIDEST, 1)])
    before = len(stored_envelopes(ledger))
    one = Money(1, WIDEST)
    beyond = minor_units(CEILING_MAJOR, WIDEST) + 1
    commands: list[Any] = [
        Deposit(accounts["high"], one, uuid4()),
        Transfer(spare, accounts["payee"], one, uuid4()),
        Withdraw(accounts["low"], one, uuid4()),
        OpenAccount(uuid4(), "beyond", "001", WIDEST, beyond),
    ]
    outcomes = ledger.execute([Submission(c, ADMIN, "corr") for c in commands])
    assert [type(o.error) for o in outcomes] == [
        BalanceLimitExceeded,
        BalanceLimitExceeded,
        InsufficientFunds,
        InvalidAmount,
    ]
    assert len(stored_envelopes(ledger)) == before


def assert_balances_and_statements(settings: Settings, expected: Expected) -> None:
    stored = dict(rows(settings, "SELECT account_id, balance_minor FROM readmodel.accounts"))
    assert stored == expected.balances
    for account_id, balance_minor in expected.balances.items():
        if balance_minor == 0:
            continue  # the volume accounts: their last line is checked by the sums
        [(amount_minor, balance_after_minor)] = rows(
            settings,
            "SELECT amount_minor, balance_after_minor FROM readmodel.transactions "
            "WHERE account_id = %s",
            account_id,
        )
        assert (amount_minor, balance_after_minor) == (abs(balance_minor), balance_minor)


def assert_kpis(settings: Settings, expected: Expected) -> None:
    for table in ("kpis_hourly", "kpis_branch"):
        found = rows(
            settings,
            f"SELECT currency, metric, sum(count), sum(sum_minor) FROM readmodel.{table} "
            "GROUP BY currency, metric",
        )
        sums = {(c, m): int(s) for c, m, _, s in found}
        counts = {(c, m): int(n) for c, m, n, _ in found}
        assert all(s == int(s) for _, _, _, s in found), "whole minor units"
        assert sums == dict(expected.sums), table
        assert counts == dict(expected.counts), table
    [(hourly_max,)] = rows(settings, "SELECT max(sum_minor) FROM readmodel.kpis_hourly")
    assert hourly_max > BIGINT_MAX, "one stored row holds a sum past bigint"


def assert_alerts(
    settings: Settings, accounts: dict[str, dict[str, UUID]], events: list[Envelope]
) -> None:
    movements: dict[UUID, list[tuple[int, str]]] = {}
    for account_id, amount_minor, currency in rows(
        settings,
        "SELECT account_id, amount_minor, currency FROM readmodel.rule_window_movements",
    ):
        movements.setdefault(account_id, []).append((amount_minor, currency))
    for currency, ids in accounts.items():
        ceiling = minor_units(CEILING_MAJOR, currency)
        for name in ("low", "high", "payer", "payee"):
            assert movements[ids[name]] == [(ceiling, currency)]
    [(large,)] = rows(
        settings, "SELECT count(*) FROM readmodel.alerts WHERE rule = 'large_transaction'"
    )
    assert large > 0
    [(position,)] = rows(
        settings, "SELECT position FROM readmodel.projection_positions WHERE projection = 'alerts'"
    )
    assert position == events[-1].notification_id


def assert_query_api(
    settings: Settings,
    tmp_path: Path,
    accounts: dict[str, dict[str, UUID]],
    expected: Expected,
) -> None:
    server = start_query_api(settings, tmp_path / "logs")
    try:
        with httpx.Client(base_url=server.url, timeout=15) as client:
            token = issue_token(settings, role="admin")
            headers = {"Authorization": f"Bearer {token}"}
            for currency, ids in accounts.items():
                for account_id in ids.values():
                    reply = client.get(f"/v1/accounts/{account_id}", headers=headers).json()
                    assert reply["balance"] == format_amount(
                        expected.balances[account_id], currency
                    )
            stats = client.get("/v1/stats/overview", headers=headers).json()
    finally:
        server.stop()
    for currency in CURRENCIES:
        for metric in ("deposits", "withdrawals", "transfers"):
            shown = {
                "count": expected.counts[currency, metric],
                "sum": format_amount(expected.sums[currency, metric], currency),
            }
            assert stats["totals"][currency][metric] == shown
            assert stats["branches"]["001"][currency][metric] == shown


def test_read_models_made_with_bigint_sums_are_converted_in_place(settings: Settings) -> None:
    with psycopg.connect(settings.resolved_database_url(), autocommit=True) as conn:
        # As an older version left them: bigint sums, and no schema fingerprint yet.
        conn.execute("DROP TABLE IF EXISTS readmodel.schema_fingerprint")
        for table in ("kpis_hourly", "kpis_branch"):
            conn.execute(f"ALTER TABLE readmodel.{table} ALTER COLUMN sum_minor TYPE bigint")
        conn.execute(
            "INSERT INTO readmodel.kpis_hourly VALUES (%s, 'GBP', 'deposits', 2, %s)",
            (T0, BIGINT_MAX),
        )
        ensure_read_models(conn)
        conn.execute(
            "UPDATE readmodel.kpis_hourly SET sum_minor = sum_minor + 1 WHERE currency = 'GBP'"
        )
    types = rows(
        settings,
        "SELECT table_name, data_type FROM information_schema.columns "
        "WHERE table_schema = 'readmodel' AND column_name = 'sum_minor' ORDER BY table_name",
    )
    assert types == [("kpis_branch", "numeric"), ("kpis_hourly", "numeric")]
    assert rows(settings, "SELECT sum_minor FROM readmodel.kpis_hourly") == [(BIGINT_MAX + 1,)]
