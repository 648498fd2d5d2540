"""Where an account's alerts of one rule go: the open case they join, or nowhere while a
suppression holds. Event-sourced and hash-chained like cases, so the case opener finds
the open case in the event store (never in a read model), and an auditor sees why each
alert joined a case or opened none.

`AlertRouting` has one instance per account and rule (`routing_id`), saved in the same
transaction as the case that opens or closes; `Suppression` is compliance's decision to
record a rule's hits on an account without opening cases, until a time, with a reason.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any
from uuid import UUID, uuid5

from eventsourcing.domain import Aggregate

from domain.chained import ChainedAggregate
from domain.errors import SuppressionNotFound, ValidationFailed
from domain.ids import NAMESPACE
from domain.integrity import Stamp, format_timestamp

SUPPRESSION_REASON_CHARS_MAX = 500
SUPPRESSION_DAYS_MAX = 366


def routing_id(account_id: UUID | str, rule: str) -> UUID:
    """The API contract's key of the open case of an account and rule."""
    return uuid5(NAMESPACE, f"{account_id}:{rule}")


class AlertRouting(ChainedAggregate):
    """The open case of an account and rule (None: the next alert opens one), the alerts
    already routed (so a redelivered alert changes nothing), the suppressions in force."""

    class Event(ChainedAggregate.Event):
        account_id: str

    class RoutingStarted(Event, Aggregate.Created):
        PAYLOAD = ("account_id", "rule")
        rule: str

    class AlertRouted(Event):
        """An alert opened `case_id` (`opened`) or joined it."""

        PAYLOAD = ("account_id", "alert_id", "case_id", "opened")
        alert_id: str
        case_id: str
        opened: bool

        def apply(self, aggregate: Any) -> None:
            super().apply(aggregate)
            aggregate.routed[self.alert_id] = self.case_id
            aggregate.open_case_id = self.case_id

    class AlertSuppressed(Event):
        """A hit while a suppression held: recorded, no case."""

        PAYLOAD = ("account_id", "alert_id", "suppression_id")
        alert_id: str
        suppression_id: str

        def apply(self, aggregate: Any) -> None:
            super().apply(aggregate)
            aggregate.routed[self.alert_id] = None

    class CaseEnded(Event):
        """The open case closed: the next alert opens a new one."""

        PAYLOAD = ("account_id", "case_id")
        case_id: str

        def apply(self, aggregate: Any) -> None:
            super().apply(aggregate)
            if aggregate.open_case_id == self.case_id:
                aggregate.open_case_id = None

    class SuppressionApplied(Event):
        PAYLOAD = ("account_id", "suppression_id", "until")
        suppression_id: str
        until: str

        def apply(self, aggregate: Any) -> None:
            super().apply(aggregate)
            aggregate.suppressions[self.suppression_id] = datetime.fromisoformat(self.until)

    class SuppressionLifted(Event):
        PAYLOAD = ("account_id", "suppression_id")
        suppression_id: str

        def apply(self, aggregate: Any) -> None:
            super().apply(aggregate)
            aggregate.suppressions.pop(self.suppression_id, None)

    def __init__(self, account_id: str, rule: str, hash: str) -> None:
        self.account_id = account_id
        self.rule = rule
        self.open_case_id: str | None = None
        self.routed: dict[str, str | None] = {}
        self.suppressions: dict[str, datetime] = {}
        self.last_hash = hash

    @classmethod
    def start(cls, account_id: UUID, rule: str, stamp: Stamp) -> AlertRouting:
        fields = {"account_id": str(account_id), "rule": rule}
        return cls._start(cls.RoutingStarted, routing_id(account_id, rule), fields, stamp)

    def suppression_at(self, moment: datetime) -> str | None:
        """The suppression holding at `moment` (the latest-ending), if any."""
        holding = [(until, i) for i, until in self.suppressions.items() if moment < until]
        return max(holding)[1] if holding else None

    def opened(self, alert_id: UUID, case_id: UUID, stamp: Stamp) -> None:
        self._route(alert_id, case_id, True, stamp)

    def joined(self, alert_id: UUID, case_id: UUID, stamp: Stamp) -> None:
        self._route(alert_id, case_id, False, stamp)

    def _route(self, alert_id: UUID, case_id: UUID, opened: bool, stamp: Stamp) -> None:
        self._trigger(
            self.AlertRouted,
            stamp,
            account_id=self.account_id,
            alert_id=str(alert_id),
            case_id=str(case_id),
            opened=opened,
        )

    def suppressed(self, alert_id: UUID, suppression_id: str, stamp: Stamp) -> None:
        self._trigger(
            self.AlertSuppressed,
            stamp,
            account_id=self.account_id,
            alert_id=str(alert_id),
            suppression_id=suppression_id,
        )

    def case_closed(self, case_id: UUID, stamp: Stamp) -> None:
        if self.open_case_id == str(case_id):
            self._trigger(self.CaseEnded, stamp, account_id=self.account_id, case_id=str(case_id))

    def apply_suppression(self, suppression: Suppression, stamp: Stamp) -> None:
        self._trigger(
            self.SuppressionApplied,
            stamp,
            account_id=self.account_id,
            suppression_id=str(suppression.id),
            until=format_timestamp(suppression.until),
        )

    def lift_suppression(self, suppression_id: UUID, stamp: Stamp) -> None:
        if str(suppression_id) in self.suppressions:
            self._trigger(
                self.SuppressionLifted,
                stamp,
                account_id=self.account_id,
                suppression_id=str(suppression_id),
            )


class Suppression(ChainedAggregate):
    """Compliance's decision: hits of `rule` on `account_id` until `until` are recorded as
    alerts with status `suppressed` and open no case. Revocable, never edited."""

    class Event(ChainedAggregate.Event):
        account_id: str

    class SuppressionCreated(Event, Aggregate.Created):
        PAYLOAD = ("account_id", "rule", "until", "reason")
        rule: str
        until: str
        reason: str

    class SuppressionRevoked(Event):
        PAYLOAD = ("account_id", "reason")
        reason: str

        def apply(self, aggregate: Any) -> None:
            super().apply(aggregate)
            aggregate.revoked = True
            aggregate.revoked_reason = self.reason

    def __init__(self, account_id: str, rule: str, until: str, reason: str, hash: str) -> None:
        self.account_id = account_id
        self.rule = rule
        self.until = datetime.fromisoformat(until)
        self.reason = reason
        self.revoked = False
        self.revoked_reason: str | None = None
        self.last_hash = hash

    @classmethod
    def create(
        cls,
        suppression_id: UUID,
        account_id: UUID,
        rule: str,
        until: datetime,
        reason: str,
        stamp: Stamp,
    ) -> Suppression:
        if until.tzinfo is None:
            raise ValidationFailed("until must carry a time zone", "body.until")
        if until <= stamp.timestamp:
            raise ValidationFailed("until must be in the future", "body.until")
        if until > stamp.timestamp + timedelta(days=SUPPRESSION_DAYS_MAX):
            raise ValidationFailed(
                f"until must be within {SUPPRESSION_DAYS_MAX} days", "body.until"
            )
        fields = {
            "account_id": str(account_id),
            "rule": rule,
            "until": format_timestamp(until),
            "reason": _reason(reason),
        }
        return cls._start(cls.SuppressionCreated, suppression_id, fields, stamp)

    def revoke(self, reason: str, stamp: Stamp) -> None:
        if self.revoked:
            raise SuppressionNotFound(f"suppression {self.id} is already revoked")
        self._trigger(
            self.SuppressionRevoked, stamp, account_id=self.account_id, reason=_reason(reason)
        )


def _reason(reason: str) -> str:
    reason = reason.strip()
    if not reason or len(reason) > SUPPRESSION_REASON_CHARS_MAX:
        raise ValidationFailed(
            f"reason must be 1 to {SUPPRESSION_REASON_CHARS_MAX} characters", "body.reason"
        )
    return reason
