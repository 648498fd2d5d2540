"""The AlertCase aggregate: its workflow, state by action, and what every step records."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from uuid import UUID, uuid4

import pytest

from domain.case import (
    NOTE_CHARS_MAX,
    RESOLUTIONS,
    TRANSITIONS,
    AlertCase,
    CaseAction,
    CaseStatus,
    case_id_for,
)
from domain.errors import DomainError, InvalidTransition, ValidationFailed
from domain.ids import NAMESPACE
from domain.integrity import GENESIS_HASH, Actor, Stamp, chain_hash, mac_matches

T0 = datetime(2026, 3, 1, 9, 0, tzinfo=UTC)
MAC_KEY = b"case-test-key"
SYSTEM = Actor("system:rules", "system")
OFFICER = Actor("olivia", "compliance")


def stamp(minutes: int = 0, actor: Actor = OFFICER) -> Stamp:
    return Stamp(actor, T0 + timedelta(minutes=minutes), f"corr-{minutes}", None, MAC_KEY)


def opened(alert_id: UUID | None = None, account_id: UUID | None = None) -> AlertCase:
    return AlertCase.open(
        alert_id or uuid4(),
        "structuring",
        "high",
        account_id or uuid4(),
        "001",
        "3 cash deposits totalling 28,500.00 GBP within 24h, each under 10,000.00",
        stamp(0, SYSTEM),
    )


# A valid call of each action, so that only the state decides.
ACTIONS: dict[str, Callable[[AlertCase, Stamp], None]] = {
    "acknowledge": lambda case, s: case.acknowledge("looking into it", s),
    "assign": lambda case, s: case.assign("bob", "yours", s),
    "escalate": lambda case, s: case.escalate("pattern matches a known scheme", s),
    "comment": lambda case, s: case.comment("called the branch", s),
    "close": lambda case, s: case.close("no_action", "explained by payroll", s),
    "join": lambda case, s: case.join(uuid4(), "medium", "again", {"positions": [7]}, s),
}

# How to bring a fresh case into each state, through allowed steps only.
PATHS: dict[str, tuple[str, ...]] = {
    "open": (),
    "acknowledged": ("acknowledge",),
    "escalated": ("acknowledge", "escalate"),
    "closed": ("close",),
}


def case_in(state: str) -> AlertCase:
    case = opened()
    for minute, action in enumerate(PATHS[state], start=1):
        ACTIONS[action](case, stamp(minute))
    assert case.status == state
    return case


def snapshot(case: AlertCase) -> dict[str, object]:
    return {k: v for k, v in case.__dict__.items() if k != "_pending_events"}


def refuses(case: AlertCase, error: type[DomainError], command: Callable[[], None]) -> None:
    before, pending = snapshot(case), len(case.pending_events)
    with pytest.raises(error):
        command()
    assert snapshot(case) == before, "a refused command changes nothing"
    assert len(case.pending_events) == pending


# The whole state x action matrix, written out from the API contract: the state after the
# action, or None where the action is refused with `invalid_transition`.
MATRIX = [
    ("open", "acknowledge", "acknowledged"),
    ("open", "assign", "open"),
    ("open", "escalate", None),
    ("open", "comment", "open"),
    ("open", "close", "closed"),
    ("open", "join", "open"),
    ("acknowledged", "acknowledge", None),
    ("acknowledged", "assign", "acknowledged"),
    ("acknowledged", "escalate", "escalated"),
    ("acknowledged", "comment", "acknowledged"),
    ("acknowledged", "close", "closed"),
    ("acknowledged", "join", "acknowledged"),
    ("escalated", "acknowledge", None),
    ("escalated", "assign", "escalated"),
    ("escalated", "escalate", None),
    ("escalated", "comment", "escalated"),
    ("escalated", "close", "closed"),
    ("escalated", "join", "escalated"),
    ("closed", "acknowledge", None),
    ("closed", "assign", None),
    ("closed", "escalate", None),
    ("closed", "comment", None),
    ("closed", "close", None),
    ("closed", "join", None),
]


@pytest.mark.parametrize(
    ("state", "action", "after"),
    [pytest.param(*row, id=f"{row[0]}-{row[1]}") for row in MATRIX],
)
def test_each_action_in_each_state_moves_as_the_workflow_says_or_is_refused(
    state: str, action: str, after: str | None
) -> None:
    case = case_in(state)
    version = case.version
    if after is None:
        refuses(case, InvalidTransition, lambda: ACTIONS[action](case, stamp(30)))
        return
    ACTIONS[action](case, stamp(30))
    assert case.status == after
    assert case.version == version + 1


def test_the_workflow_table_in_the_code_is_the_matrix() -> None:
    expected = {
        (CaseStatus(state), CaseAction(action)): CaseStatus(after)
        for state, action, after in MATRIX
        if after is not None
    }
    assert dict(TRANSITIONS) == expected


def test_the_case_id_is_derived_from_the_alert_id() -> None:
    alert_id = uuid4()
    case = opened(alert_id)
    assert case.id == case_id_for(alert_id)
    assert case.id == case_id_for(str(alert_id))
    assert case.id.version == 5
    assert str(case.id) != str(alert_id)
    assert NAMESPACE  # the contract's namespace, shared with every other derived id


def test_an_opened_case_is_open_unassigned_and_records_the_alert() -> None:
    alert_id, account_id = uuid4(), uuid4()
    case = opened(alert_id, account_id)
    assert case.status is CaseStatus.OPEN
    assert (case.assignee, case.resolution, case.closed_at) == (None, None, None)
    assert (case.alert_id, case.account_id, case.branch) == (str(alert_id), str(account_id), "001")
    assert (case.rule, case.severity, case.version) == ("structuring", "high", 1)
    assert case.created_on == T0
    (event,) = case.pending_events
    assert isinstance(event, AlertCase.CaseOpened)
    assert event.actor == {"subject": "system:rules", "role": "system"}


@pytest.mark.parametrize(
    ("rule", "severity", "explanation"),
    [
        ("", "high", "x"),
        ("r" * 65, "high", "x"),
        ("velocity", "urgent", "x"),
        ("velocity", "", "x"),
        ("velocity", "medium", "x" * 2001),
    ],
)
def test_an_alert_that_is_not_one_opens_no_case(rule: str, severity: str, explanation: str) -> None:
    with pytest.raises(ValidationFailed):
        AlertCase.open(uuid4(), rule, severity, uuid4(), None, explanation, stamp())


def test_acknowledging_needs_no_note_and_blank_notes_are_none() -> None:
    case = opened()
    case.acknowledge("   ", stamp(1))
    event = case.pending_events[-1]
    assert isinstance(event, AlertCase.CaseAcknowledged)
    assert event.note is None


@pytest.mark.parametrize("note", ["", "   ", None])
def test_escalating_without_a_note_is_refused(note: str | None) -> None:
    case = case_in("acknowledged")
    refuses(case, ValidationFailed, lambda: case.escalate(note, stamp(5)))


@pytest.mark.parametrize("note", ["", "  \n ", None])
def test_commenting_without_a_note_is_refused(note: str | None) -> None:
    case = opened()
    refuses(case, ValidationFailed, lambda: case.comment(note, stamp(5)))


@pytest.mark.parametrize("note", ["", "   ", None])
def test_closing_without_a_note_is_refused(note: str | None) -> None:
    case = opened()
    refuses(case, ValidationFailed, lambda: case.close("no_action", note, stamp(5)))


@pytest.mark.parametrize("resolution", ["", "resolved", "FALSE_POSITIVE", "closed"])
def test_closing_with_a_resolution_not_in_the_contract_is_refused(resolution: str) -> None:
    case = opened()
    refuses(case, ValidationFailed, lambda: case.close(resolution, "why", stamp(5)))


@pytest.mark.parametrize("resolution", RESOLUTIONS)
def test_each_contract_resolution_closes_a_case_and_is_kept(resolution: str) -> None:
    case = case_in("escalated")
    case.close(resolution, "  decided  ", stamp(9))
    assert (case.status, case.resolution) == (CaseStatus.CLOSED, resolution)
    assert case.closed_at == T0 + timedelta(minutes=9)
    event = case.pending_events[-1]
    assert isinstance(event, AlertCase.CaseClosed)
    assert event.note == "decided"


def test_a_note_longer_than_the_bound_is_refused() -> None:
    case = opened()
    refuses(case, ValidationFailed, lambda: case.comment("x" * (NOTE_CHARS_MAX + 1), stamp(1)))
    case.comment("x" * NOTE_CHARS_MAX, stamp(1))


@pytest.mark.parametrize("assignee", ["", "   ", "x" * 257])
def test_assigning_to_nobody_or_an_overlong_name_is_refused(assignee: str) -> None:
    case = opened()
    refuses(case, ValidationFailed, lambda: case.assign(assignee, None, stamp(1)))


def test_validation_comes_before_the_state_check() -> None:
    # As over HTTP, where the body is checked before the route runs: 422 before 409.
    case = case_in("closed")
    refuses(case, ValidationFailed, lambda: case.comment("", stamp(5)))
    refuses(case, InvalidTransition, lambda: case.comment("late", stamp(5)))


def test_assigning_again_replaces_the_assignee() -> None:
    case = opened()
    case.assign("bob", None, stamp(1))
    case.assign("carol", "bob is away", stamp(2))
    assert case.assignee == "carol"


def worked_case() -> AlertCase:
    case = opened()
    case.acknowledge(None, stamp(1))
    case.assign("bob", "yours", stamp(2, Actor("olivia", "compliance")))
    case.comment("called the branch", stamp(3, Actor("bob", "compliance")))
    case.escalate("pattern confirmed", stamp(4, Actor("bob", "compliance")))
    case.close("suspicious_activity_reported", "SAR filed", stamp(5, Actor("bob", "compliance")))
    return case


def test_every_step_records_who_when_and_the_account() -> None:
    case = worked_case()
    events = case.pending_events
    assert [type(e).__name__ for e in events] == [
        "CaseOpened",
        "CaseAcknowledged",
        "CaseAssigned",
        "CaseCommented",
        "CaseEscalated",
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
    assert [e.timestamp for e in events] == [T0 + timedelta(minutes=m) for m in range(6)]
    assert all(e.payload()["account_id"] == case.account_id for e in events)
    assert all(e.transaction_id is None for e in events)


def test_the_case_rebuilt_from_its_events_equals_the_live_one() -> None:
    case = worked_case()
    rebuilt: AlertCase | None = None
    for event in case.collect_events():
        rebuilt = event.mutate(rebuilt)
    assert rebuilt == case
    assert rebuilt is not None
    assert (rebuilt.status, rebuilt.assignee, rebuilt.resolution) == (
        CaseStatus.CLOSED,
        "bob",
        "suspicious_activity_reported",
    )


def test_the_case_events_form_a_hash_chain_sealed_with_the_mac() -> None:
    case = worked_case()
    previous = GENESIS_HASH
    for version, event in enumerate(case.collect_events(), start=1):
        assert event.originator_version == version
        assert event.previous_hash == previous
        assert chain_hash(event.chain_record()) == event.hash
        assert mac_matches(MAC_KEY, event.hash, event.mac)
        previous = event.hash
    assert case.last_hash == previous
