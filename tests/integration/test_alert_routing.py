"""Alerts compliance can work, on a real store: while a case is open for an account and a
rule, further hits join it (a case event naming each alert, with its evidence) instead of
opening another; a closed case lets the next hit open a new one; a suppression records
hits as `suppressed` alerts that open no case; all of it found in the event store, safe
with several case openers at once."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from typing import Any
from uuid import UUID, uuid4

import pytest

from application.compliance import AlertSummary, Compliance
from application.ledger import Ledger
from domain.case import AlertCase
from domain.errors import AccountNotFound, SuppressionNotFound, ValidationFailed
from domain.ids import case_id_for
from domain.integrity import Actor
from domain.routing import AlertRouting, Suppression, routing_id
from infrastructure.eventstore.ledger import open_ledger
from infrastructure.settings import Settings
from tests.integration.support import HookedSaver
from tests.integration.test_compliance import alert, open_account, stored_events

pytestmark = pytest.mark.integration

OFFICER = Actor("olivia", "compliance")


@pytest.fixture
def compliance(ledger: Ledger) -> Compliance:
    return Compliance(ledger)


def velocity(account_id: UUID, raised_at: datetime | None = None) -> dict[str, Any]:
    message = alert(account_id, "velocity", "medium")
    if raised_at is not None:
        message["raised_at"] = raised_at.strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    return message


def test_hits_of_one_rule_join_the_open_case_until_it_closes(compliance: Compliance) -> None:
    account_id = open_account(compliance.ledger)
    first, second = velocity(account_id), velocity(account_id)
    opened = compliance.open_case(first, "c1")
    joined = compliance.open_case(second, "c2")
    assert (opened.outcome, joined.outcome) == ("opened", "joined")
    case = joined.case
    assert case is not None
    assert case.id == case_id_for(first["alert_id"])
    assert case.alert_ids == [first["alert_id"], second["alert_id"]]
    join = stored_events(compliance.ledger, case.id)[-1]
    assert isinstance(join, AlertCase.CaseAlertJoined)
    assert (join.alert_id, join.positions, join.transaction_ids, join.rule_config_version) == (
        second["alert_id"],
        second["positions"],
        second["transaction_ids"],
        1,
    )
    assert join.actor == {"subject": "system:rules", "role": "system"}
    # A redelivered alert changes nothing.
    again = compliance.open_case(second, "c3")
    assert (again.outcome, again.case.id if again.case else None) == ("existing", case.id)
    assert len(stored_events(compliance.ledger, case.id)) == 2
    # Another rule opens its own case.
    other = compliance.open_case(alert(account_id, "structuring", "high"), "c4")
    assert other.outcome == "opened"
    # Closed, the case takes no more: the next hit opens a new one.
    compliance.act_on_case(case.id, "close", OFFICER, "c5", resolution="no_action", note="ok")
    third = velocity(account_id)
    reopened = compliance.open_case(third, "c6")
    assert reopened.outcome == "opened"
    assert reopened.case is not None
    assert reopened.case.id == case_id_for(third["alert_id"])
    routing = compliance.ledger.repository.get(routing_id(account_id, "velocity"))
    assert isinstance(routing, AlertRouting)
    assert routing.open_case_id == str(reopened.case.id)
    assert routing.routed == {
        first["alert_id"]: str(case.id),
        second["alert_id"]: str(case.id),
        third["alert_id"]: str(reopened.case.id),
    }


def test_two_case_openers_at_once_give_one_case_with_every_alert(
    compliance: Compliance, settings: Settings
) -> None:
    account_id = open_account(compliance.ledger)
    others = [open_ledger(settings) for _ in range(3)]
    services = [compliance, *(Compliance(ledger) for ledger in others)]
    messages = [velocity(account_id) for _ in services]
    barrier = threading.Barrier(len(services))

    def route(index: int) -> str:
        barrier.wait()
        return services[index].open_case(messages[index], f"c{index}").outcome

    try:
        with ThreadPoolExecutor(len(services)) as pool:
            outcomes = list(pool.map(route, range(len(services))))
    finally:
        for ledger in others:
            ledger.close()
    assert sorted(outcomes) == ["joined", "joined", "joined", "opened"]
    routing = compliance.ledger.repository.get(routing_id(account_id, "velocity"))
    assert isinstance(routing, AlertRouting)
    [case_id] = set(routing.routed.values())
    assert case_id is not None
    case = compliance.get_case(UUID(case_id))
    assert sorted(case.alert_ids) == sorted(m["alert_id"] for m in messages)


def test_a_batch_routes_as_one_by_one_does_in_one_transaction(compliance: Compliance) -> None:
    ledger = compliance.ledger
    busy, quiet, hushed = open_account(ledger), open_account(ledger), open_account(ledger)
    # An open case from an earlier fetch, which the batch's first hit on `quiet` joins.
    earlier = compliance.open_case(velocity(quiet), "c0").case
    assert earlier is not None
    now = datetime.now(UTC)
    compliance.add_suppression(
        hushed, "velocity", now + timedelta(hours=1), "payroll", OFFICER, "c"
    )
    hits = [velocity(busy), velocity(quiet), velocity(busy), velocity(hushed, now)]
    hits.append(hits[2])  # redelivered within the same fetch
    saves = HookedSaver(ledger)
    routed = compliance.open_cases([(AlertSummary.from_message(m), "b") for m in hits])
    assert saves.writes == 1
    assert [r.outcome for r in routed] == ["opened", "joined", "joined", "suppressed", "existing"]
    opened = routed[0].case
    assert opened is not None
    assert [r.case.id if r.case else None for r in routed] == [
        opened.id,
        earlier.id,
        opened.id,
        None,
        opened.id,
    ]
    assert opened.id == case_id_for(hits[0]["alert_id"])
    stored = compliance.get_case(opened.id)
    assert stored.alert_ids == [hits[0]["alert_id"], hits[2]["alert_id"]]
    assert compliance.get_case(earlier.id).version == 2
    routing = ledger.repository.get(routing_id(busy, "velocity"))
    assert routing.routed == {m["alert_id"]: str(opened.id) for m in (hits[0], hits[2])}
    assert ledger.repository.get(routing_id(hushed, "velocity")).routed == {
        hits[3]["alert_id"]: None
    }
    # The same fetch delivered again changes nothing.
    saves.writes = 0
    again = compliance.open_cases([(AlertSummary.from_message(m), "b") for m in hits])
    assert [r.outcome for r in again] == [
        "existing",
        "existing",
        "existing",
        "suppressed",
        "existing",
    ]
    assert saves.writes == 0


def test_a_suppression_records_hits_without_cases_until_revoked(
    compliance: Compliance,
) -> None:
    account_id = open_account(compliance.ledger)
    now = datetime.now(UTC)
    suppression = compliance.add_suppression(
        account_id, "velocity", now + timedelta(hours=1), "payroll account", OFFICER, "c"
    )
    assert isinstance(suppression, Suppression)
    held = compliance.open_case(velocity(account_id, now), "c1")
    assert (held.outcome, held.case) == ("suppressed", None)
    # A hit raised after the suppression ends is not suppressed.
    later = compliance.open_case(velocity(account_id, now + timedelta(hours=2)), "c2")
    assert later.outcome == "opened"
    compliance.act_on_case(later.case.id, "close", OFFICER, "c", resolution="no_action", note="x")  # type: ignore[union-attr]
    revoked = compliance.revoke_suppression(suppression.id, "account reviewed", OFFICER, "c3")
    assert revoked.revoked
    after = compliance.open_case(velocity(account_id, now), "c4")
    assert after.outcome == "opened"
    routing = compliance.ledger.repository.get(routing_id(account_id, "velocity"))
    assert routing.suppressions == {}
    with pytest.raises(SuppressionNotFound):
        compliance.revoke_suppression(suppression.id, "again", OFFICER, "c5")
    with pytest.raises(SuppressionNotFound):
        compliance.revoke_suppression(uuid4(), "unknown", OFFICER, "c6")


@pytest.mark.parametrize(
    ("rule", "until", "field"),
    [
        ("no_such_rule", timedelta(hours=1), "body.rule"),
        ("velocity", timedelta(hours=-1), "body.until"),
        ("velocity", timedelta(days=400), "body.until"),
    ],
)
def test_a_suppression_is_refused_for_a_bad_rule_or_time(
    compliance: Compliance, rule: str, until: timedelta, field: str
) -> None:
    account_id = open_account(compliance.ledger)
    with pytest.raises(ValidationFailed) as refused:
        compliance.add_suppression(account_id, rule, datetime.now(UTC) + until, "why", OFFICER, "c")
    assert refused.value.errors[0]["field"] == field
    with pytest.raises(AccountNotFound):
        compliance.add_suppression(
            uuid4(), "velocity", datetime.now(UTC) + timedelta(hours=1), "why", OFFICER, "c"
        )
