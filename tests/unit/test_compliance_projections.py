"""The cases and watchlist projectors, and the Kafka envelope of case and watchlist
events: pure functions, no I/O."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from uuid import UUID, uuid4

from application.envelope import envelope
from domain.account import Account
from domain.case import AlertCase
from domain.integrity import Actor, Stamp
from domain.watchlist import WatchlistEntry
from projections.compliance import cases, watchlist
from projections.envelope import Envelope
from projections.ledger import PROJECTORS
from projections.rows import CaseEventRow, WatchlistChanged
from tests.ceilings import OVERDRAFT_MAX_MINOR

T0 = datetime(2026, 3, 1, 9, 0, tzinfo=UTC)
OFFICER = Actor("olivia", "compliance")


def stamp(minutes: int, actor: Actor = OFFICER) -> Stamp:
    return Stamp(actor, T0 + timedelta(minutes=minutes), "corr", None, b"k")


def envelopes(*aggregates: AlertCase | WatchlistEntry | Account) -> list[Envelope]:
    events = [e for aggregate in aggregates for e in aggregate.collect_events()]
    return [Envelope.from_json(envelope(n, e)) for n, e in enumerate(events, start=1)]


def worked_case(account_id: UUID) -> AlertCase:
    case = AlertCase.open(
        uuid4(), "velocity", "medium", account_id, "002", "21 movements in 1h", stamp(0)
    )
    case.acknowledge(None, stamp(1))
    case.assign("bob", "yours", stamp(2))
    case.close("false_positive", "payroll run", stamp(3))
    return case


def test_case_and_watchlist_envelopes_name_their_type_and_account() -> None:
    account_id = uuid4()
    case = worked_case(account_id)
    entry = WatchlistEntry.add(account_id, "adverse media", stamp(0))
    entry.remove("cleared", stamp(1))
    for event in envelopes(case, entry):
        assert event.aggregate_type in ("case", "watchlist")
        assert event.payload["account_id"] == str(account_id)
    raw = [envelope(1, e) for e in worked_case(account_id).collect_events()]
    assert {body["account_id"] for body in raw} == {str(account_id)}
    assert {body["aggregate_type"] for body in raw} == {"case"}


def test_account_envelopes_are_as_before() -> None:
    account = Account.open(
        uuid4(), "Ada", "001", "GBP", 0, stamp(0), overdraft_max_minor=OVERDRAFT_MAX_MINOR
    )
    (body,) = [envelope(7, e) for e in account.collect_events()]
    assert body["aggregate_type"] == "account"
    assert body["account_id"] == body["aggregate_id"] == str(account.id)


def test_the_cases_projector_makes_one_history_row_per_case_event_with_its_status() -> None:
    case = worked_case(uuid4())
    rows = [row for event in envelopes(case) for row in cases(event)]
    assert all(isinstance(row, CaseEventRow) for row in rows)
    steps = [(r.version, r.event_type, r.status, r.note) for r in rows]
    assert steps == [
        (1, "CaseOpened", "open", None),
        (2, "CaseAcknowledged", "acknowledged", None),
        (3, "CaseAssigned", None, "yours"),
        (4, "CaseClosed", "closed", "payroll run"),
    ]
    opening, assigned, closing = rows[0], rows[2], rows[3]
    assert isinstance(opening, CaseEventRow)
    assert opening.details["alert_id"] == case.alert_id
    assert opening.details["branch"] == "002"
    assert isinstance(assigned, CaseEventRow)
    assert assigned.details["assignee"] == "bob"
    assert "note" not in assigned.details
    assert isinstance(closing, CaseEventRow)
    assert closing.details["resolution"] == "false_positive"
    assert (closing.actor_subject, closing.actor_role) == ("olivia", "compliance")


def test_the_watchlist_projector_carries_each_entry_state() -> None:
    account_id = uuid4()
    entry = WatchlistEntry.add(account_id, "adverse media", stamp(0))
    entry.remove("cleared", stamp(1))
    entry.restore("new hit", stamp(2))
    rows = [row for event in envelopes(entry) for row in watchlist(event)]
    assert all(isinstance(row, WatchlistChanged) for row in rows)
    assert [(r.listed, r.reason, r.version) for r in rows] == [
        (True, "adverse media", 1),
        (False, "cleared", 2),
        (True, "new hit", 3),
    ]
    assert {r.account_id for r in rows} == {account_id}


def test_each_projection_ignores_the_other_aggregates() -> None:
    account = Account.open(
        uuid4(), "Ada", "001", "GBP", 0, stamp(0), overdraft_max_minor=OVERDRAFT_MAX_MINOR
    )
    case = worked_case(account.id)
    entry = WatchlistEntry.add(account.id, "adverse media", stamp(0))
    events = envelopes(account, case, entry)
    assert [e for e in events if watchlist(e)] == [
        e for e in events if e.aggregate_type == "watchlist"
    ]
    assert [e for e in events if cases(e)] == [e for e in events if e.aggregate_type == "case"]
    for name in ("balances", "statements", "kpis"):
        assert all(PROJECTORS[name](e) == [] for e in events if not e.is_account_event)
    assert PROJECTORS["cases"] is cases
    assert PROJECTORS["watchlist"] is watchlist
