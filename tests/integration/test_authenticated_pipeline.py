"""The projections trust nothing the broker says: a forged message produced to the real
topic (an amount raised, its hash zeroed, the next notification id) is refused and leaves
the read models as they were; the genuine event that later takes that id is applied; and
a genuine message re-sent under another id fails its `relay_mac`."""

from __future__ import annotations

import asyncio
from typing import Any
from uuid import UUID, uuid4

import orjson
import psycopg
import pytest
from aiokafka import AIOKafkaProducer

from application.commands import Deposit, OpenAccount, Submission
from application.ledger import Ledger
from domain.integrity import Actor
from domain.money import Money
from infrastructure.kafka.topics import ledger_events_topic
from infrastructure.readmodels.schema import ALL_PROJECTIONS
from infrastructure.relay.events import Relay
from infrastructure.settings import Settings
from infrastructure.workers.projections import ProjectionConsumer
from tests.integration.support import Running
from tests.integration.test_relay import consume, notification_id, wait_until

pytestmark = pytest.mark.integration

TELLER = Actor("alice", "teller")
SETTLE_S = 30.0


@pytest.fixture
def settings(broker_settings: Settings) -> Settings:
    return broker_settings


def _run(ledger: Ledger, command: Any) -> None:
    [outcome] = ledger.execute([Submission(command, TELLER, f"c-{uuid4()}")])
    assert outcome.error is None, outcome.error


def _balance(settings: Settings, account_id: UUID) -> tuple[int, int] | None:
    with psycopg.connect(settings.resolved_database_url(), autocommit=True) as conn:
        row = conn.execute(
            "SELECT balance_minor, version FROM readmodel.accounts WHERE account_id = %s",
            (account_id,),
        ).fetchone()
    return None if row is None else (int(row[0]), int(row[1]))


def _statement_lines(settings: Settings, account_id: UUID) -> int:
    with psycopg.connect(settings.resolved_database_url(), autocommit=True) as conn:
        row = conn.execute(
            "SELECT count(*) FROM readmodel.transactions WHERE account_id = %s",
            (account_id,),
        ).fetchone()
    assert row is not None
    return int(row[0])


def _refused(settings: Settings) -> list[tuple[int | None, str]]:
    with psycopg.connect(settings.resolved_database_url(), autocommit=True) as conn:
        rows = conn.execute(
            "SELECT notification_id, reason FROM public.refused_messages ORDER BY id"
        ).fetchall()
    return [(row[0], str(row[1])) for row in rows]


def _produce(settings: Settings, messages: list[tuple[bytes, dict[str, Any]]]) -> None:
    async def send() -> None:
        producer = AIOKafkaProducer(
            bootstrap_servers=settings.resolved_kafka_bootstrap(),
            acks="all",
            enable_idempotence=False,
            request_timeout_ms=10_000,
        )
        await producer.start()
        try:
            for key, value in messages:
                headers = [("notification_id", str(value["notification_id"]).encode())]
                await producer.send_and_wait(
                    ledger_events_topic(settings), orjson.dumps(value), key=key, headers=headers
                )
        finally:
            await producer.stop()

    asyncio.run(send())


def test_a_forged_message_is_refused_and_the_genuine_event_with_its_id_still_applies(
    settings: Settings, ledger: Ledger
) -> None:
    account_id = uuid4()
    _run(ledger, OpenAccount(account_id, "Ada", "001", "GBP", 0))
    _run(ledger, Deposit(account_id, Money(10_000, "GBP"), uuid4()))
    consumer = ProjectionConsumer(settings, ALL_PROJECTIONS)
    with Running(Relay(settings).run_until), Running(consumer.run):
        wait_until(lambda: _balance(settings, account_id) == (10_000, 2), "the projection")
        wait_until(lambda: _statement_lines(settings, account_id) == 1, "the statement line")
        [deposit] = [r for r in consume(settings, {2}) if notification_id(r) == 2]
        genuine = orjson.loads(deposit.value)
        assert isinstance(genuine["relay_mac"], str)
        head = ledger.recorder.max_notification_id()
        assert head == 2

        forged = {**genuine, "notification_id": 3, "version": 3, "hash": "0" * 64}
        forged["payload"] = {
            **genuine["payload"],
            "amount_minor": 1_000_000_000_000,
            "balance_after_minor": 1_000_000_010_000,
        }
        replayed_elsewhere = {**genuine, "notification_id": 4}
        _produce(settings, [(deposit.key, forged), (deposit.key, replayed_elsewhere)])
        wait_until(lambda: len(_refused(settings)) == 2, "both messages refused", SETTLE_S)
        [(first_id, first_reason), (second_id, second_reason)] = _refused(settings)
        assert (first_id, second_id) == (3, 4)
        assert "hash" in first_reason
        assert "relay_mac" in second_reason
        assert _balance(settings, account_id) == (10_000, 2)
        assert _statement_lines(settings, account_id) == 1

        # The genuine event that takes id 3 is applied: the forgery took no tracking row.
        _run(ledger, Deposit(account_id, Money(500, "GBP"), uuid4()))
        assert ledger.recorder.max_notification_id() == 3
        wait_until(lambda: _balance(settings, account_id) == (10_500, 3), "the genuine event")
        # The statements keep their own pace: they follow the balances, not with them.
        wait_until(lambda: _statement_lines(settings, account_id) == 2, "its statement line")
