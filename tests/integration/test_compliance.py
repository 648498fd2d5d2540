"""Cases and the watchlist on a real PostgreSQL event store: idempotent, race-safe
opening; the workflow through the service; freezing from a case; the hash chain; the
cases and watchlist projections; the case opener against a real tansu broker."""

from __future__ import annotations

import asyncio
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any
from uuid import UUID, uuid4

import orjson
import psycopg
import pytest
from aiokafka import AIOKafkaProducer
from prometheus_client import REGISTRY

from application.commands import Deposit, OpenAccount, Submission, case_body
from application.compliance import AlertSummary, Compliance
from application.envelope import envelope
from application.ledger import Ledger
from domain.account import Account, AccountStatus
from domain.case import AlertCase, CaseStatus, case_id_for
from domain.errors import (
    AccountNotFound,
    AlreadyListed,
    CaseNotFound,
    InvalidTransition,
    ValidationFailed,
    WatchlistEntryNotFound,
)
from domain.integrity import GENESIS_HASH, SYSTEM_ACTOR, Actor, chain_hash, mac_matches
from domain.money import Money
from domain.watchlist import watchlist_entry_id
from infrastructure.eventstore.ledger import open_ledger
from infrastructure.kafka.authenticity import seal_alert
from infrastructure.kafka.topics import EPOCH_HEADER, alerts_topic
from infrastructure.ops.embedded import EmbeddedBroker
from infrastructure.readmodels.tracking import apply_batch
from infrastructure.settings import Settings
from infrastructure.workers.case_opener import CaseOpener
from infrastructure.workers.case_opener_store import QUARANTINE_TABLE, case_opener_quarantine_count
from projections.envelope import Envelope
from tests.integration.support import HookedSaver

pytestmark = pytest.mark.integration

TELLER = Actor("alice", "teller")
OFFICER = Actor("olivia", "compliance")
OPENERS = 10
OPENER_WAIT_S = 30.0


@pytest.fixture
def compliance(ledger: Ledger) -> Compliance:
    return Compliance(ledger)


def open_account(ledger: Ledger, branch: str = "001", balance_minor: int = 10_000) -> UUID:
    account_id = uuid4()
    ledger.execute_one(Submission(OpenAccount(account_id, "Ada", branch, "GBP", 0), TELLER, "c"))
    ledger.execute_one(
        Submission(Deposit(account_id, Money(balance_minor, "GBP"), uuid4()), TELLER, "c")
    )
    return account_id


def alert(account_id: UUID, rule: str = "structuring", severity: str = "high") -> dict[str, Any]:
    alert_id = uuid4()
    return {
        "alert_id": str(alert_id),
        "rule": rule,
        "severity": severity,
        "account_id": str(account_id),
        "transaction_ids": [str(uuid4())],
        "positions": [3, 4, 5],
        "explanation": "3 cash deposits totalling 28,500.00 GBP within 24h, each under 10,000.00",
        "raised_at": "2026-03-01T09:00:00.000000Z",
        "status": "open",
        "case_id": str(case_id_for(alert_id)),
        "rule_config_version": 1,
    }


def sealed_dict(settings: Settings, message: dict[str, Any]) -> dict[str, Any]:
    """The alert as the alerts relay publishes it, sealed with the MAC key."""
    return seal_alert(message, settings.audit_mac_key_resolved(), settings.audit_mac_kid)


def sealed(settings: Settings, message: dict[str, Any]) -> bytes:
    return orjson.dumps(sealed_dict(settings, message))


def open_case(
    service: Compliance, message: dict[str, Any], correlation_id: str
) -> tuple[AlertCase, bool]:
    """The alert's case, and whether this call opened it."""
    routed = service.open_case(message, correlation_id)
    assert routed.case is not None, routed
    return routed.case, routed.outcome == "opened"


def stored_events(ledger: Ledger, aggregate_id: UUID) -> list[Any]:
    return list(ledger.repository.event_store.get(aggregate_id))


# Opening ----------------------------------------------------------------------------------


def test_ten_concurrent_openers_of_one_alert_open_exactly_one_case(ledger: Ledger) -> None:
    message = alert(open_account(ledger, branch="007"))
    # One service per thread: no shared in-process lock, so the store's key decides.
    services = [Compliance(ledger) for _ in range(OPENERS)]
    barrier = threading.Barrier(OPENERS)

    def open_one(service: Compliance) -> tuple[UUID, bool]:
        barrier.wait()
        case, created = open_case(service, message, "corr-race")
        return case.id, created

    with ThreadPoolExecutor(OPENERS) as pool:
        results = list(pool.map(open_one, services))
    assert {case_id for case_id, _ in results} == {case_id_for(message["alert_id"])}
    assert sum(created for _, created in results) == 1
    (opened,) = stored_events(ledger, case_id_for(message["alert_id"]))
    assert isinstance(opened, AlertCase.CaseOpened)
    assert opened.actor == {"subject": "system:rules", "role": "system"}
    assert opened.branch == "007", "the branch comes from the account's opening event"


def test_opening_an_alert_again_returns_the_case_unchanged(compliance: Compliance) -> None:
    message = alert(open_account(compliance.ledger))
    case, created = open_case(compliance, message, "c1")
    compliance.act_on_case(case.id, "acknowledge", OFFICER, "c2")
    again, created_again = open_case(compliance, message, "c3")
    assert (created, created_again) == (True, False)
    assert (again.version, again.status) == (2, CaseStatus.ACKNOWLEDGED)


@pytest.mark.parametrize(
    "broken",
    [
        {"alert_id": "not-a-uuid"},
        {"account_id": None},
        {"rule": 42},
        {"severity": "catastrophic"},
    ],
)
def test_a_message_that_is_not_an_alert_opens_no_case(
    compliance: Compliance, broken: dict[str, Any]
) -> None:
    message = {**alert(uuid4()), **broken}
    with pytest.raises(ValidationFailed):
        open_case(compliance, message, "c")


def test_an_alert_for_an_unknown_account_still_opens_a_case_without_branch(
    compliance: Compliance,
) -> None:
    case, created = open_case(compliance, alert(uuid4()), "c")
    assert created
    assert case.branch is None


def summaries(*messages: dict[str, Any]) -> list[tuple[AlertSummary, str]]:
    return [(AlertSummary.from_message(m), f"corr-{k}") for k, m in enumerate(messages)]


def test_a_batch_of_alerts_opens_its_new_cases_and_finds_the_rest(
    compliance: Compliance,
) -> None:
    ledger = compliance.ledger
    first, second = alert(open_account(ledger, "007")), alert(open_account(ledger, "008"))
    earlier, stranger = alert(open_account(ledger, "009")), alert(uuid4())
    before, _ = open_case(compliance, earlier, "c0")
    saves = HookedSaver(ledger)
    opened = compliance.open_cases(summaries(first, second, first, earlier, stranger))
    assert saves.writes == 1, "the batch's new cases and routings in one transaction"
    assert [r.outcome == "opened" for r in opened] == [True, True, False, False, True]
    cases = [r.case for r in opened]
    assert all(case is not None for case in cases)
    assert cases[2].id == cases[0].id == case_id_for(first["alert_id"])
    assert cases[3].id == before.id
    assert [case.branch for case in cases] == ["007", "008", "007", "009", None]
    for case in (cases[0], cases[1], cases[4]):
        (event,) = stored_events(ledger, case.id)
        assert isinstance(event, AlertCase.CaseOpened)
        assert event.branch == case.branch


def test_a_batch_that_loses_a_race_opens_each_alert_on_its_own(
    settings: Settings, compliance: Compliance
) -> None:
    ledger = compliance.ledger
    raced, other = alert(open_account(ledger)), alert(open_account(ledger))
    rival = open_ledger(settings)  # another case opener, saving the same alert first
    try:

        def before(save: int) -> None:
            if save == 1:
                open_case(Compliance(rival), raced, "rival")

        HookedSaver(ledger, before)
        opened = compliance.open_cases(summaries(raced, other))
    finally:
        rival.close()
    assert [r.outcome == "opened" for r in opened] == [False, True]
    assert len(stored_events(ledger, case_id_for(raced["alert_id"]))) == 1
    assert len(stored_events(ledger, case_id_for(other["alert_id"]))) == 1


def test_a_batch_with_an_alert_the_domain_refuses_keeps_those_before_it_only(
    compliance: Compliance,
) -> None:
    ledger = compliance.ledger
    before, after = alert(open_account(ledger)), alert(open_account(ledger))
    refused = {**alert(open_account(ledger)), "severity": "catastrophic"}
    with pytest.raises(ValidationFailed):
        compliance.open_cases(summaries(before, refused, after))
    # Routed one by one, as the case opener then does with each message of the fetch.
    assert stored_events(ledger, case_id_for(before["alert_id"]))
    assert not stored_events(ledger, case_id_for(refused["alert_id"]))
    assert not stored_events(ledger, case_id_for(after["alert_id"]))
    again = compliance.open_cases(summaries(before, after))
    assert [r.outcome for r in again] == ["existing", "opened"]


# The workflow -------------------------------------------------------------------------------


def test_a_case_is_worked_to_closed_and_every_step_is_stored_with_its_actor(
    compliance: Compliance, ledger: Ledger, settings: Settings
) -> None:
    case, _ = open_case(compliance, alert(open_account(ledger)), "c0")
    bob = Actor("bob", "compliance")
    compliance.act_on_case(case.id, "acknowledge", OFFICER, "c1", note=None)
    compliance.act_on_case(case.id, "assign", OFFICER, "c2", assignee="bob", note="yours")
    with pytest.raises(InvalidTransition):
        compliance.act_on_case(case.id, "acknowledge", bob, "c3")
    compliance.act_on_case(case.id, "escalate", bob, "c4", note="pattern confirmed")
    compliance.act_on_case(case.id, "comment", bob, "c5", note="SAR drafted")
    closed = compliance.act_on_case(
        case.id, "close", bob, "c6", resolution="suspicious_activity_reported", note="SAR filed"
    )
    with pytest.raises(InvalidTransition):
        compliance.act_on_case(case.id, "comment", bob, "c7", note="too late")
    body = case_body(closed)
    assert (body["status"], body["assignee"], body["resolution"], body["version"]) == (
        "closed",
        "bob",
        "suspicious_activity_reported",
        6,
    )
    assert body["closed_at"] is not None
    events = stored_events(ledger, case.id)
    assert [type(e).__name__ for e in events] == [
        "CaseOpened",
        "CaseAcknowledged",
        "CaseAssigned",
        "CaseEscalated",
        "CaseCommented",
        "CaseClosed",
    ]
    assert [e.actor["subject"] for e in events] == [
        "system:rules",
        "olivia",
        "olivia",
        "bob",
        "bob",
        "bob",
    ]
    assert [e.correlation_id for e in events] == ["c0", "c1", "c2", "c4", "c5", "c6"]
    assert compliance.get_case(case.id) == closed, "rebuilt from the store equals the live case"


def test_case_events_chain_and_carry_the_mac_of_the_configured_key(
    compliance: Compliance, ledger: Ledger, settings: Settings
) -> None:
    case, _ = open_case(compliance, alert(open_account(ledger)), "c0")
    compliance.act_on_case(case.id, "close", OFFICER, "c1", resolution="no_action", note="ok")
    previous = GENESIS_HASH
    for event in stored_events(ledger, case.id):
        assert event.previous_hash == previous
        assert chain_hash(event.chain_record()) == event.hash
        assert mac_matches(settings.audit_mac_key_resolved(), event.hash, event.mac)
        previous = event.hash


def test_an_unknown_case_is_not_found(compliance: Compliance) -> None:
    with pytest.raises(CaseNotFound):
        compliance.act_on_case(uuid4(), "acknowledge", OFFICER, "c")
    with pytest.raises(CaseNotFound):
        compliance.freeze_account_from_case(uuid4(), "why", OFFICER, "c")


def test_freezing_from_a_case_names_the_case_in_the_accounts_frozen_reason(
    compliance: Compliance, ledger: Ledger
) -> None:
    account_id = open_account(ledger)
    case, _ = open_case(compliance, alert(account_id), "c0")
    reply = compliance.freeze_account_from_case(case.id, "funds at risk", OFFICER, "c-freeze")
    assert (reply["account_id"], reply["status"]) == (str(account_id), "frozen")
    account = ledger.get_account(account_id)
    assert account.status is AccountStatus.FROZEN
    frozen = stored_events(ledger, account_id)[-1]
    assert isinstance(frozen, Account.Frozen)
    assert frozen.reason == f"case {case.id}: funds at risk"
    assert frozen.actor == {"subject": "olivia", "role": "compliance"}
    assert frozen.correlation_id == "c-freeze"


# The watchlist ----------------------------------------------------------------------------


def test_the_watchlist_adds_removes_and_restores_an_account(
    compliance: Compliance, ledger: Ledger
) -> None:
    account_id = open_account(ledger)
    entry = compliance.add_to_watchlist(account_id, "sanctions hit", OFFICER, "w1")
    assert (entry.id, entry.listed) == (watchlist_entry_id(account_id), True)
    with pytest.raises(AlreadyListed):
        compliance.add_to_watchlist(account_id, "again", OFFICER, "w2")
    assert not compliance.remove_from_watchlist(account_id, "cleared", OFFICER, "w3").listed
    with pytest.raises(WatchlistEntryNotFound):
        compliance.remove_from_watchlist(account_id, "cleared again", OFFICER, "w4")
    assert compliance.add_to_watchlist(account_id, "new hit", OFFICER, "w5").version == 3
    names = [type(e).__name__ for e in stored_events(ledger, watchlist_entry_id(account_id))]
    assert names == ["WatchlistEntryAdded", "WatchlistEntryRemoved", "WatchlistEntryRestored"]


def test_only_known_accounts_are_watched_and_unlisted_ones_cannot_be_removed(
    compliance: Compliance,
) -> None:
    with pytest.raises(AccountNotFound):
        compliance.add_to_watchlist(uuid4(), "typo", OFFICER, "w")
    with pytest.raises(WatchlistEntryNotFound):
        compliance.remove_from_watchlist(uuid4(), "never listed", OFFICER, "w")


# Projections --------------------------------------------------------------------------------


def envelopes_of(ledger: Ledger) -> list[Envelope]:
    out = []
    for notification in ledger.recorder.select_notifications(start=None, limit=10_000):
        event = ledger.mapper.to_domain_event(notification)
        out.append(Envelope.from_json(envelope(notification.id, event)))  # type: ignore[arg-type]
    return out


def project(settings: Settings, projection: str, *batches: list[Envelope]) -> None:
    async def run() -> None:
        async with await psycopg.AsyncConnection.connect(
            settings.resolved_database_url(), autocommit=True
        ) as conn:
            for batch in batches:
                await apply_batch(conn, projection, batch)

    asyncio.run(run())


def rows(settings: Settings, query: str) -> list[tuple[Any, ...]]:
    with psycopg.connect(settings.resolved_database_url()) as conn:
        return conn.execute(query).fetchall()  # type: ignore[arg-type]


CASE_ROW = (
    "SELECT case_id, alert_id, account_id, branch, rule, severity, status, assignee, "
    "resolution, version, closed_at IS NOT NULL FROM readmodel.cases ORDER BY case_id"
)
HISTORY_ROWS = (
    "SELECT case_id, version, event_type, actor_subject, note FROM readmodel.case_history "
    "ORDER BY case_id, version"
)


def test_the_cases_projection_gives_the_same_rows_in_any_order_and_once_only(
    compliance: Compliance, ledger: Ledger, settings: Settings
) -> None:
    account_id = open_account(ledger, branch="004")
    first, _ = open_case(compliance, alert(account_id), "c")
    second, _ = open_case(compliance, alert(account_id, "velocity", "medium"), "c")
    compliance.act_on_case(first.id, "acknowledge", OFFICER, "c")
    compliance.act_on_case(first.id, "assign", OFFICER, "c", assignee="bob")
    compliance.act_on_case(first.id, "escalate", OFFICER, "c", note="why")
    compliance.act_on_case(second.id, "close", OFFICER, "c", resolution="no_action", note="ok")
    events = envelopes_of(ledger)
    project(settings, "cases", events, events)  # the second time: all duplicates
    in_order = rows(settings, CASE_ROW), rows(settings, HISTORY_ROWS)
    with psycopg.connect(settings.resolved_database_url(), autocommit=True) as conn:
        conn.execute("TRUNCATE readmodel.cases, readmodel.case_history")
        conn.execute("DELETE FROM readmodel.projection_tracking WHERE projection = 'cases'")
        conn.execute("UPDATE readmodel.projection_positions SET position = 0")
    project(settings, "cases", *[[event] for event in reversed(events)])
    assert (rows(settings, CASE_ROW), rows(settings, HISTORY_ROWS)) == in_order
    by_id = {row[0]: row for row in in_order[0]}
    assert by_id[first.id][3:] == ("004", "structuring", "high", "escalated", "bob", None, 4, False)
    assert by_id[second.id][6:] == ("closed", None, "no_action", 2, True)
    assert len(in_order[1]) == 6


def test_the_watchlist_projection_keeps_each_accounts_latest_state(
    compliance: Compliance, ledger: Ledger, settings: Settings
) -> None:
    account_id = open_account(ledger)
    compliance.add_to_watchlist(account_id, "sanctions hit", OFFICER, "w")
    compliance.remove_from_watchlist(account_id, "cleared", OFFICER, "w")
    events = envelopes_of(ledger)
    project(settings, "watchlist", *[[event] for event in reversed(events)])
    assert rows(
        settings, "SELECT account_id, listed, reason, changed_by, version FROM readmodel.watchlist"
    ) == [(account_id, False, "cleared", "olivia", 2)]


# The case opener ----------------------------------------------------------------------------


class OpenerThread:
    """A CaseOpener on an event loop of its own thread, stopped like SIGTERM would."""

    def __init__(self, opener: CaseOpener) -> None:
        self.opener = opener
        self._loop = asyncio.new_event_loop()
        self._stop = asyncio.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        self._loop.run_until_complete(self.opener.run(self._stop))

    def __enter__(self) -> OpenerThread:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(15)


async def publish(settings: Settings, *messages: bytes, epoch: int) -> None:
    """Onto the alerts topic, one partition (one key), as the outbox relay in `epoch` would."""
    producer = AIOKafkaProducer(
        bootstrap_servers=settings.resolved_kafka_bootstrap(), acks="all", enable_idempotence=False
    )
    await producer.start()
    try:
        for message in messages:
            await producer.send_and_wait(
                alerts_topic(settings),
                message,
                key=b"k",
                headers=[(EPOCH_HEADER, str(epoch).encode())],
            )
    finally:
        await producer.stop()


def wait_handled(opener: CaseOpener, count: int) -> None:
    deadline = time.monotonic() + OPENER_WAIT_S
    while opener.handled < count:
        assert time.monotonic() < deadline, f"handled {opener.handled} of {count} in time"
        time.sleep(0.1)


async def unresolved_quarantined(settings: Settings) -> int:
    async with await psycopg.AsyncConnection.connect(settings.resolved_database_url()) as conn:
        return await case_opener_quarantine_count(conn)


def test_the_case_opener_quarantines_what_it_cannot_handle_once_and_goes_on(
    settings_factory: Any, broker: EmbeddedBroker
) -> None:
    settings = settings_factory(
        kafka_bootstrap=broker.bootstrap, topic_prefix=f"it{uuid4().hex[:6]}.", topic_partitions=4
    )
    ledger = open_ledger(settings)
    try:
        account_id = open_account(ledger)
        garbage = b"\x00\xffnot json"
        refused = alert(account_id, severity="apocalyptic")  # JSON, but no alert we open
        valid = alert(account_id)
        quarantined_before = REGISTRY.get_sample_value("vigil_case_opener_quarantined_total")
        messages = (sealed(settings, refused), sealed(settings, valid))
        asyncio.run(publish(settings, garbage, *messages, epoch=1))
        opener = CaseOpener(settings, Compliance(ledger))
        with OpenerThread(opener):
            wait_handled(opener, 3)
            # A republished log (the relay's next epoch) makes the consumer read the
            # partition again from its start: every message is delivered a second time.
            asyncio.run(publish(settings, sealed(settings, valid), epoch=2))
            wait_handled(opener, 3 + 4)
        with psycopg.connect(settings.resolved_database_url()) as conn:
            rows = conn.execute(
                "SELECT topic, partition, kafka_offset, alert_id, account_id, error, value "
                f"FROM public.{QUARANTINE_TABLE} ORDER BY kafka_offset"
            ).fetchall()
        (opened,) = stored_events(ledger, case_id_for(valid["alert_id"]))
    finally:
        ledger.close()
    assert opened.actor == SYSTEM_ACTOR.as_dict()
    assert opener.opened == 1
    assert [row[2] for row in rows] == [0, 1], "each quarantined once, redelivered or not"
    first, second = rows
    assert first[:5] == (alerts_topic(settings), first[1], 0, None, "k")
    assert first[5].startswith("JSONDecodeError"), first
    assert first[6] == "\ufffd\ufffdnot json", "NUL and invalid UTF-8 kept as replacements"
    assert second[3:5] == (refused["alert_id"], str(account_id))
    assert second[5].startswith("ValidationFailed: severity must be one of"), second
    assert orjson.loads(second[6]) == sealed_dict(settings, refused)
    quarantined_after = REGISTRY.get_sample_value("vigil_case_opener_quarantined_total")
    assert (quarantined_after or 0) - (quarantined_before or 0) == 2
    assert asyncio.run(unresolved_quarantined(settings)) == 2
    with psycopg.connect(settings.resolved_database_url()) as conn:
        conn.execute(
            f"UPDATE public.{QUARANTINE_TABLE} SET resolved_at = now() WHERE kafka_offset = 0"
        )
    assert asyncio.run(unresolved_quarantined(settings)) == 1, "resolved rows are not counted"


def test_a_lost_database_connection_makes_the_case_opener_retry_and_skip_nothing(
    settings_factory: Any, broker: EmbeddedBroker
) -> None:
    settings = settings_factory(
        kafka_bootstrap=broker.bootstrap, topic_prefix=f"it{uuid4().hex[:6]}.", topic_partitions=4
    )
    ledger = open_ledger(settings)
    try:
        valid = alert(open_account(ledger))
        asyncio.run(publish(settings, sealed(settings, valid), epoch=1))
        opener = CaseOpener(settings, Compliance(ledger))
        with OpenerThread(opener):
            wait_handled(opener, 1)
            with psycopg.connect(settings.resolved_database_url(), autocommit=True) as admin:
                (ended,) = admin.execute(
                    "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                    "WHERE application_name = 'vigil-case-opener' AND datname = current_database()"
                ).fetchone() or (0,)
            assert ended == 1, "the case opener's quarantine connection"
            asyncio.run(publish(settings, b"not json", epoch=1))
            deadline = time.monotonic() + OPENER_WAIT_S
            while asyncio.run(unresolved_quarantined(settings)) == 0:
                assert time.monotonic() < deadline, "quarantined after the reconnection"
                time.sleep(0.1)
        assert opener.handled >= 3, "the failed attempt, then the message again"
        with psycopg.connect(settings.resolved_database_url()) as conn:
            offsets = conn.execute(f"SELECT kafka_offset FROM public.{QUARANTINE_TABLE}").fetchall()
        assert offsets == [(1,)]
        assert len(stored_events(ledger, case_id_for(valid["alert_id"]))) == 1
    finally:
        ledger.close()
