"""Each projection of a worker process keeps its own pace, against a real broker and
PostgreSQL: a projection that is held up (here, its position row locked by another
session) does not hold up the balances or the alerts; the fetched batches it has not
applied stay uncommitted, so a worker stopped meanwhile, even abruptly, loses none of
them; and once free, it applies what queued for it."""

from __future__ import annotations

import threading
from typing import Any
from uuid import UUID, uuid4

import psycopg
import pytest

from application.commands import Deposit, OpenAccount, Submission
from application.ledger import Ledger
from domain.integrity import Actor
from domain.money import Money
from infrastructure.readmodels.schema import ALL_PROJECTIONS
from infrastructure.relay.events import Relay
from infrastructure.settings import Settings
from infrastructure.workers.projections import ProjectionConsumer
from tests.integration.support import Running
from tests.integration.test_relay import wait_until

pytestmark = pytest.mark.integration

TELLER = Actor("alice", "teller")
HELD = "statements"
# The broker waits out the session of a consumer that vanished before the group moves on.
REJOIN_S = 60.0


@pytest.fixture
def settings(broker_settings: Settings) -> Settings:
    return broker_settings


def _open(ledger: Ledger) -> UUID:
    account_id = uuid4()
    [opened] = ledger.execute(
        [Submission(OpenAccount(account_id, "Ada", "001", "GBP", 0), TELLER, "c-open")]
    )
    assert opened.error is None, opened.error
    return account_id


def _deposit(ledger: Ledger, account_id: UUID, minor: int) -> None:
    command = Deposit(account_id, Money(minor, "GBP"), uuid4())
    [outcome] = ledger.execute([Submission(command, TELLER, f"c-{uuid4()}")])
    assert outcome.error is None, outcome.error


def _query(settings: Settings, sql: str, *args: object) -> Any:
    with psycopg.connect(settings.resolved_database_url(), autocommit=True) as conn:
        row = conn.execute(sql, args).fetchone()
    assert row is not None
    return row[0]


def _balance(settings: Settings, account_id: UUID) -> int | None:
    with psycopg.connect(settings.resolved_database_url(), autocommit=True) as conn:
        row = conn.execute(
            "SELECT balance_minor FROM readmodel.accounts WHERE account_id = %s", (account_id,)
        ).fetchone()
    return None if row is None else int(row[0])


def _lines(settings: Settings, account_id: UUID) -> int:
    return int(
        _query(settings, "SELECT count(*) FROM readmodel.transactions WHERE account_id = %s",
               account_id)
    )  # fmt: skip


def _position(settings: Settings, projection: str) -> int:
    return int(
        _query(settings, "SELECT position FROM readmodel.projection_positions "
               "WHERE projection = %s", projection)
    )  # fmt: skip


class Held:
    """The held projection's position row, locked FOR UPDATE by a session of our own: its
    next batch waits on the lock."""

    def __init__(self, settings: Settings) -> None:
        self._conn = psycopg.connect(settings.resolved_database_url())
        self._conn.execute(
            "SELECT 1 FROM readmodel.projection_positions WHERE projection = %s FOR UPDATE",
            (HELD,),
        )

    def release(self) -> None:
        self._conn.rollback()
        self._conn.close()


def test_a_held_projection_holds_up_neither_the_others_nor_loses_its_batches(
    settings: Settings, ledger: Ledger
) -> None:
    account_id = _open(ledger)
    _deposit(ledger, account_id, 100)
    relay = Running(Relay(settings).run_until)
    with relay:
        worker = Running(ProjectionConsumer(settings, ALL_PROJECTIONS).run)
        with worker:
            wait_until(lambda: _lines(settings, account_id) == 1, "the first statement line")
            held = Held(settings)
            try:
                # Three deposits, each waited for before the next: separate fetches, so
                # the balances and alerts must go on past a batch the held one has not
                # taken, and past the one after that.
                for n, minor in enumerate((200, 300, 400), start=1):
                    _deposit(ledger, account_id, minor)
                    expected = 100 + sum((200, 300, 400)[:n])
                    wait_until(
                        lambda expected=expected: _balance(settings, account_id) == expected,
                        f"the balance after deposit {n} while {HELD} is held",
                    )
                head = ledger.recorder.max_notification_id()
                wait_until(lambda: _position(settings, "alerts") == head, "the alerts at the head")
                assert _lines(settings, account_id) == 1
                assert _position(settings, HELD) < head
                # Stopped abruptly while the held projection still waits: what it has not
                # applied was never committed as read.
                worker.kill()
            finally:
                held.release()
            assert _lines(settings, account_id) == 1
        # A new worker reads again what the held projection missed; the others skip it.
        # (It joins the group once the broker has given up on the one that vanished.)
        with Running(ProjectionConsumer(settings, ALL_PROJECTIONS).run):
            wait_until(
                lambda: _lines(settings, account_id) == 4,
                "the held projection's lines",
                timeout_s=REJOIN_S,
            )
            head = ledger.recorder.max_notification_id()
            for projection in ALL_PROJECTIONS:
                wait_until(
                    lambda p=projection: _position(settings, p) == head, f"{projection} at head"
                )
            assert _balance(settings, account_id) == 1_000
            applied = _query(
                settings,
                "SELECT applied_events FROM readmodel.projection_positions WHERE projection = %s",
                "balances",
            )
            assert applied == head  # each event applied once, none twice


def test_a_worker_stopped_while_a_projection_is_behind_applies_what_it_queued_first(
    settings: Settings, ledger: Ledger
) -> None:
    account_id = _open(ledger)
    with Running(Relay(settings).run_until):
        worker = Running(ProjectionConsumer(settings, ALL_PROJECTIONS).run)
        with worker:
            wait_until(lambda: _balance(settings, account_id) == 0, "the account")
            held = Held(settings)
            _deposit(ledger, account_id, 500)
            wait_until(lambda: _balance(settings, account_id) == 500, "the balance")
            # The stop comes while the held projection waits; the lock goes a moment
            # later, and the worker's shutdown lets the projection finish its queue.
            threading.Timer(1.0, held.release).start()
        assert _lines(settings, account_id) == 1
        head = ledger.recorder.max_notification_id()
        assert _position(settings, HELD) == head
