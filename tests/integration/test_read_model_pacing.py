"""Under load (fetches of many events each), the read models that do not set the workers'
pace (statements, KPIs, cases, watchlist) start their batches at most once per
`read_models_apply_interval_s`, taking what queued meanwhile together, while the balances
and alerts apply every fetch; they still apply every event, once; and in a quiet hour
(small fetches) they apply each fetch as it comes. Against a real broker and PostgreSQL."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from uuid import UUID, uuid4

import pytest
from prometheus_client import REGISTRY

from application.commands import Deposit, Submission
from application.ledger import Ledger
from domain.money import Money
from infrastructure.readmodels.schema import ALL_PROJECTIONS
from infrastructure.relay.events import Relay
from infrastructure.settings import Settings
from infrastructure.workers.lanes import PACED_AFTER_EVENTS
from infrastructure.workers.projections import ProjectionConsumer
from tests.integration.support import TELLER, Running
from tests.integration.test_projection_lanes import _balance, _deposit, _lines, _open, _position
from tests.integration.test_relay import wait_until

pytestmark = pytest.mark.integration

INTERVAL_S = 2.0
GROUPS = 8
GROUP_DEPOSITS = PACED_AFTER_EVENTS + 10  # each group one fetch of that many events


@pytest.fixture
def settings(broker_settings: Settings) -> Settings:
    return broker_settings.model_copy(update={"read_models_apply_interval_s": INTERVAL_S})


def _batches(projection: str) -> float:
    """Batches the projection has applied in this process so far (its apply histogram)."""
    value = REGISTRY.get_sample_value(
        "vigil_projection_apply_seconds_count", {"projection": projection}
    )
    return value or 0.0


def _deposits(ledger: Ledger, account_id: UUID, count: int) -> None:
    """`count` deposits of 1 in one group: one transaction, read by the relay at once."""
    submissions = [
        Submission(Deposit(account_id, Money(1, "GBP"), uuid4()), TELLER, f"c-{uuid4()}")
        for _ in range(count)
    ]
    for outcome in ledger.execute(submissions):
        assert outcome.error is None, outcome.error


@contextlib.contextmanager
def _pipeline(settings: Settings, ledger: Ledger) -> Iterator[UUID]:
    """A new account, with the relay and a workers process running, once it is projected."""
    account_id = _open(ledger)
    with (
        Running(Relay(settings).run_until),
        Running(ProjectionConsumer(settings, ALL_PROJECTIONS).run),
    ):
        wait_until(lambda: _balance(settings, account_id) == 0, "the account")
        yield account_id


def test_under_load_the_read_models_take_what_queued_together_and_miss_nothing(
    settings: Settings, ledger: Ledger
) -> None:
    with _pipeline(settings, ledger) as account_id:
        before = {name: _batches(name) for name in ("balances", "statements")}
        started = time.monotonic()
        # Each group waited for in the balances before the next: separate fetches.
        for n in range(1, GROUPS + 1):
            _deposits(ledger, account_id, GROUP_DEPOSITS)
            expected = n * GROUP_DEPOSITS
            wait_until(
                lambda expected=expected: _balance(settings, account_id) == expected,
                f"the balance after group {n}",
            )
        streamed_s = time.monotonic() - started
        balances = _batches("balances") - before["balances"]
        statements = _batches("statements") - before["statements"]
        lines = GROUPS * GROUP_DEPOSITS
        wait_until(lambda: _lines(settings, account_id) == lines, "every statement line")
        head = ledger.recorder.max_notification_id()
        for projection in ALL_PROJECTIONS:
            wait_until(lambda p=projection: _position(settings, p) == head, f"{projection} at head")
    assert balances >= GROUPS
    # At most one batch per interval while the groups came, and the one after them.
    assert statements <= streamed_s // INTERVAL_S + 2, (statements, streamed_s)
    assert statements < balances


def test_in_a_quiet_hour_the_read_models_apply_each_fetch_as_it_comes(
    settings: Settings, ledger: Ledger
) -> None:
    with _pipeline(settings, ledger) as account_id:
        for n in range(1, 4):
            _deposit(ledger, account_id, 100)
            # Well within the interval: small batches are not paced.
            wait_until(
                lambda n=n: _lines(settings, account_id) == n,
                f"statement line {n}",
                timeout_s=INTERVAL_S / 2,
            )
