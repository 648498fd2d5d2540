"""The alert case: how compliance works one alert, event-sourced and hash-chained.

Every alert opens one case (its id is `case_id_for(alert_id)`, so opening twice is the
same case). The workflow (the API contract, "Alerts and cases"):

    open -> acknowledged -> escalated -> closed,  plus  open -> closed, acknowledged -> closed

Assigning and commenting are allowed in every state but closed; anything else is refused
with `InvalidTransition`. Every step records who and when (the `Stamp`), and why (a note).
"""

from __future__ import annotations

from collections.abc import Mapping
from enum import StrEnum
from typing import Any, ClassVar
from uuid import UUID

from eventsourcing.domain import Aggregate

from domain.chained import ChainedAggregate
from domain.errors import CaseAlreadyAssigned, InvalidTransition, ValidationFailed
from domain.ids import case_id_for
from domain.integrity import Stamp

__all__ = [
    "RESOLUTIONS",
    "SEVERITIES",
    "TRANSITIONS",
    "AlertCase",
    "CaseAction",
    "CaseStatus",
    "case_id_for",
]

SEVERITIES = ("low", "medium", "high", "critical")
RESOLUTIONS = ("false_positive", "suspicious_activity_reported", "no_action")
# How a case about a transfer screening held for review ends: with the hold.
REVIEW_RESOLUTIONS = ("released", "rejected", "expired")
# Bounds on what a person or a rule may write into the permanent record.
NOTE_CHARS_MAX = 2000
ASSIGNEE_CHARS_MAX = 256
RULE_CHARS_MAX = 64
EXPLANATION_CHARS_MAX = 2000


class CaseStatus(StrEnum):
    OPEN = "open"
    ACKNOWLEDGED = "acknowledged"
    ESCALATED = "escalated"
    CLOSED = "closed"


class CaseAction(StrEnum):
    ACKNOWLEDGE = "acknowledge"
    ASSIGN = "assign"
    ESCALATE = "escalate"
    COMMENT = "comment"
    CLOSE = "close"
    JOIN = "join"


_OPEN, _ACK, _ESC, _CLOSED = (
    CaseStatus.OPEN,
    CaseStatus.ACKNOWLEDGED,
    CaseStatus.ESCALATED,
    CaseStatus.CLOSED,
)
_A = CaseAction

# The one workflow table: (state, action) -> the state after it. Absent: refused.
TRANSITIONS: Mapping[tuple[CaseStatus, CaseAction], CaseStatus] = {
    (_OPEN, _A.ACKNOWLEDGE): _ACK,
    (_OPEN, _A.ASSIGN): _OPEN,
    (_OPEN, _A.COMMENT): _OPEN,
    (_OPEN, _A.JOIN): _OPEN,
    (_ACK, _A.JOIN): _ACK,
    (_ESC, _A.JOIN): _ESC,
    (_OPEN, _A.CLOSE): _CLOSED,
    (_ACK, _A.ASSIGN): _ACK,
    (_ACK, _A.ESCALATE): _ESC,
    (_ACK, _A.COMMENT): _ACK,
    (_ACK, _A.CLOSE): _CLOSED,
    (_ESC, _A.ASSIGN): _ESC,
    (_ESC, _A.COMMENT): _ESC,
    (_ESC, _A.CLOSE): _CLOSED,
}


class AlertCase(ChainedAggregate):
    """One alert's case. Every event's payload names the account, so a consumer of the
    event stream needs no state to know which account a step concerns."""

    class Event(ChainedAggregate.Event):
        account_id: str

    class CaseOpened(Event, Aggregate.Created):
        PAYLOAD = ("alert_id", "rule", "severity", "account_id", "branch", "explanation")

        alert_id: str
        rule: str
        severity: str
        branch: str | None
        explanation: str

    class Step(Event):
        """A workflow step; `STATUS` is the state it leads to (None: unchanged)."""

        STATUS: ClassVar[CaseStatus | None] = None
        note: str | None

        def apply(self, aggregate: Any) -> None:
            super().apply(aggregate)
            if self.STATUS is not None:
                aggregate.status = self.STATUS

    class CaseAcknowledged(Step):
        STATUS = CaseStatus.ACKNOWLEDGED
        PAYLOAD = ("account_id", "note")

    class CaseAssigned(Step):
        PAYLOAD = ("account_id", "assignee", "note")
        assignee: str

        def apply(self, aggregate: Any) -> None:
            super().apply(aggregate)
            aggregate.assignee = self.assignee

    class CaseEscalated(Step):
        STATUS = CaseStatus.ESCALATED
        PAYLOAD = ("account_id", "note")

    class CaseCommented(Step):
        PAYLOAD = ("account_id", "note")

    class CaseAlertJoined(Step):
        """Another alert of the case's rule on its account, while the case is open: it
        joins this case instead of opening another, with its own evidence."""

        PAYLOAD = (
            "account_id",
            "alert_id",
            "rule",
            "severity",
            "explanation",
            "transaction_ids",
            "positions",
            "rule_config_version",
            "note",
        )
        alert_id: str
        rule: str
        severity: str
        explanation: str
        transaction_ids: list[str]
        positions: list[int]
        rule_config_version: int | None

        def apply(self, aggregate: Any) -> None:
            super().apply(aggregate)
            aggregate.alert_ids.append(self.alert_id)

    class CaseClosed(Step):
        STATUS = CaseStatus.CLOSED
        PAYLOAD = ("account_id", "resolution", "note")
        resolution: str

        def apply(self, aggregate: Any) -> None:
            super().apply(aggregate)
            aggregate.resolution = self.resolution
            aggregate.closed_at = self.timestamp

    def __init__(
        self,
        alert_id: str,
        rule: str,
        severity: str,
        account_id: str,
        branch: str | None,
        explanation: str,
        hash: str,
    ) -> None:
        self.alert_id = alert_id
        self.rule = rule
        self.severity = severity
        self.account_id = account_id
        self.branch = branch
        self.explanation = explanation
        self.status = CaseStatus.OPEN
        self.assignee: str | None = None
        self.resolution: str | None = None
        self.closed_at: Any = None
        self.last_hash = hash
        # Every alert of the case: the one that opened it, then those that joined it.
        self.alert_ids: list[str] = [alert_id]

    # Commands ---------------------------------------------------------------------------

    @classmethod
    def open(
        cls,
        alert_id: UUID,
        rule: str,
        severity: str,
        account_id: UUID,
        branch: str | None,
        explanation: str,
        stamp: Stamp,
    ) -> AlertCase:
        """The case of an alert, with the id every opener of that alert computes."""
        if not rule or len(rule) > RULE_CHARS_MAX:
            raise ValidationFailed(f"rule must be 1 to {RULE_CHARS_MAX} characters", "rule")
        if severity not in SEVERITIES:
            raise ValidationFailed(f"severity must be one of {', '.join(SEVERITIES)}", "severity")
        if len(explanation) > EXPLANATION_CHARS_MAX:
            raise ValidationFailed(
                f"explanation must be at most {EXPLANATION_CHARS_MAX} characters", "explanation"
            )
        fields: dict[str, Any] = {
            "alert_id": str(alert_id),
            "rule": rule,
            "severity": severity,
            "account_id": str(account_id),
            "branch": branch,
            "explanation": explanation,
        }
        return cls._start(cls.CaseOpened, case_id_for(alert_id), fields, stamp)

    def acknowledge(self, note: str | None, stamp: Stamp) -> None:
        note = _optional_note(note)
        self._check_allowed(CaseAction.ACKNOWLEDGE)
        self._step(self.CaseAcknowledged, stamp, note=note)

    def assign(
        self, assignee: str, note: str | None, stamp: Stamp, *, if_unassigned: bool = False
    ) -> None:
        """`if_unassigned`: only if nobody has the case (two analysts taking the next case
        at once: one gets it, the other `case_already_assigned`)."""
        assignee = assignee.strip()
        if not assignee or len(assignee) > ASSIGNEE_CHARS_MAX:
            raise ValidationFailed(
                f"assignee must be 1 to {ASSIGNEE_CHARS_MAX} characters", "body.assignee"
            )
        note = _optional_note(note)
        self._check_allowed(CaseAction.ASSIGN)
        if if_unassigned and self.assignee is not None:
            raise CaseAlreadyAssigned(f"case {self.id} is assigned to {self.assignee}")
        self._step(self.CaseAssigned, stamp, assignee=assignee, note=note)

    def escalate(self, note: str, stamp: Stamp) -> None:
        note = _required_note(note, "escalating a case")
        self._check_allowed(CaseAction.ESCALATE)
        self._step(self.CaseEscalated, stamp, note=note)

    def comment(self, note: str, stamp: Stamp) -> None:
        note = _required_note(note, "a comment")
        self._check_allowed(CaseAction.COMMENT)
        self._step(self.CaseCommented, stamp, note=note)

    def join(
        self,
        alert_id: UUID,
        severity: str,
        explanation: str,
        evidence: Mapping[str, Any],
        stamp: Stamp,
    ) -> None:
        """Record another alert of this case's rule and account (its evidence with it)."""
        if str(alert_id) in self.alert_ids:
            return
        if severity not in SEVERITIES:
            raise ValidationFailed(f"severity must be one of {', '.join(SEVERITIES)}", "severity")
        self._check_allowed(CaseAction.JOIN)
        self._step(
            self.CaseAlertJoined,
            stamp,
            alert_id=str(alert_id),
            rule=self.rule,
            severity=severity,
            explanation=explanation[:EXPLANATION_CHARS_MAX],
            transaction_ids=[str(t) for t in evidence.get("transaction_ids") or []],
            positions=[int(p) for p in evidence.get("positions") or []],
            rule_config_version=evidence.get("rule_config_version"),
            note=None,
        )

    def close(self, resolution: str, note: str, stamp: Stamp, *, review: bool = False) -> None:
        """`review`: closed with the hold it reviews (released, rejected, expired)."""
        allowed = REVIEW_RESOLUTIONS if review else RESOLUTIONS
        if resolution not in allowed:
            raise ValidationFailed(
                f"resolution must be one of {', '.join(allowed)}", "body.resolution"
            )
        note = _required_note(note, "closing a case")
        self._check_allowed(CaseAction.CLOSE)
        self._step(self.CaseClosed, stamp, resolution=resolution, note=note)

    # Queries ------------------------------------------------------------------------------

    def allows(self, action: CaseAction) -> bool:
        return (self.status, action) in TRANSITIONS

    # Guards and helpers -------------------------------------------------------------------

    def _check_allowed(self, action: CaseAction) -> None:
        if not self.allows(action):
            raise InvalidTransition(
                f"case {self.id} is {self.status.value}: it cannot be {_PAST[action]}"
            )

    def _step(self, event_class: type[AlertCase.Step], stamp: Stamp, **fields: Any) -> None:
        action = _ACTION_OF[event_class.__name__]
        expected = TRANSITIONS[(self.status, action)]
        self._trigger(event_class, stamp, account_id=self.account_id, **fields)
        assert self.status is expected, "the event leads where the workflow table says"


_PAST: Mapping[CaseAction, str] = {
    CaseAction.ACKNOWLEDGE: "acknowledged",
    CaseAction.ASSIGN: "assigned",
    CaseAction.ESCALATE: "escalated",
    CaseAction.COMMENT: "commented on",
    CaseAction.CLOSE: "closed",
    CaseAction.JOIN: "joined by another alert",
}
_ACTION_OF: Mapping[str, CaseAction] = {
    "CaseAcknowledged": CaseAction.ACKNOWLEDGE,
    "CaseAssigned": CaseAction.ASSIGN,
    "CaseEscalated": CaseAction.ESCALATE,
    "CaseCommented": CaseAction.COMMENT,
    "CaseClosed": CaseAction.CLOSE,
    "CaseAlertJoined": CaseAction.JOIN,
}


def _optional_note(note: str | None) -> str | None:
    if note is None:
        return None
    note = note.strip()
    if len(note) > NOTE_CHARS_MAX:
        raise ValidationFailed(f"note must be at most {NOTE_CHARS_MAX} characters", "body.note")
    return note or None


def _required_note(note: str | None, what: str) -> str:
    checked = _optional_note(note)
    if checked is None:
        raise ValidationFailed(f"{what} needs a note saying why", "body.note")
    return checked
