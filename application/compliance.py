"""Compliance's commands: alert cases and the watchlist, over the ledger's event store.

Cases and watchlist entries live in the same store as accounts, so the relay publishes
their events like account events, and the audit trail is one hash-chained log. Each
command is thin: load, call the aggregate, save. A save that loses an optimistic-
concurrency race (another writer took the version) is judged again from fresh state, a
bounded number of times, by the same retry loop as `Ledger.execute`.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal, Protocol, TypeVar
from uuid import UUID, uuid4

from eventsourcing.application import AggregateNotFoundError
from eventsourcing.persistence import MapperDeserialisationError, PersistenceError

from application.commands import ChangeStatus, Submission
from application.ledger import Ledger
from application.locks import StripedLocks
from application.retry import lost_race, retrying, unavailable
from domain.account import Account
from domain.case import EXPLANATION_CHARS_MAX, AlertCase, CaseAction
from domain.errors import (
    CaseNotFound,
    SuppressionNotFound,
    Unavailable,
    ValidationFailed,
    WatchlistEntryNotFound,
)
from domain.ids import case_id_for, watchlist_entry_id
from domain.integrity import SYSTEM_ACTOR, Actor, Stamp, format_timestamp
from domain.routing import AlertRouting, Suppression, routing_id
from domain.rules.config import RULES
from domain.screening import SCREENING_SEVERITIES
from domain.watchlist import WatchlistEntry, list_account

CASE_LOCK_STRIPES = 256

T = TypeVar("T")
A = TypeVar("A")


@dataclass(frozen=True, slots=True)
class Routed:
    """Where an alert went: the case it `opened`, `joined` or found (`existing`: routed
    before), or none (`suppressed`)."""

    case: AlertCase | None
    outcome: Literal["opened", "joined", "existing", "suppressed"]


@dataclass(frozen=True, slots=True)
class AlertSummary:
    """What a case keeps of an alert message (the API contract's alert fields)."""

    alert_id: UUID
    rule: str
    severity: str
    account_id: UUID
    explanation: str
    # What a joining alert brings to the case: its transactions, positions, rule version.
    evidence: dict[str, Any] = field(default_factory=dict)
    raised_at: datetime | None = None

    @classmethod
    def from_message(cls, alert: Mapping[str, Any]) -> AlertSummary:
        """Raises ValidationFailed for a message that is not an alert."""
        try:
            alert_id = UUID(str(alert["alert_id"]))
            account_id = UUID(str(alert["account_id"]))
            rule, severity = alert["rule"], alert["severity"]
        except (KeyError, ValueError, TypeError) as error:
            raise ValidationFailed(f"not an alert: {type(error).__name__} {error}") from None
        if not isinstance(rule, str) or not isinstance(severity, str):
            raise ValidationFailed("not an alert: rule and severity must be strings")
        explanation = str(alert.get("explanation") or "")
        if len(explanation) > EXPLANATION_CHARS_MAX:
            # A case must open even for a verbose rule: keep the start, say it was cut.
            explanation = explanation[: EXPLANATION_CHARS_MAX - 1] + "…"
        evidence = {
            "transaction_ids": _strings(alert.get("transaction_ids")),
            "positions": [p for p in alert.get("positions") or [] if isinstance(p, int)],
            "rule_config_version": _optional_int(alert.get("rule_config_version")),
        }
        return cls(
            alert_id,
            rule,
            severity,
            account_id,
            explanation,
            evidence,
            _moment(alert.get("raised_at")),
        )


class Compliance:
    """Opens and works alert cases, manages the watchlist, freezes accounts from cases."""

    def __init__(self, ledger: Ledger) -> None:
        self.ledger = ledger
        # Commands of this process on one case take turns instead of racing each other.
        self._locks = StripedLocks(CASE_LOCK_STRIPES)

    # Reads ------------------------------------------------------------------------------

    def get_case(self, case_id: UUID) -> AlertCase:
        case = self._find(case_id, AlertCase)
        if case is None:
            raise CaseNotFound(f"case {case_id} does not exist")
        return case

    def find_watchlist_entry(self, account_id: UUID) -> WatchlistEntry | None:
        return self._find(watchlist_entry_id(account_id), WatchlistEntry)

    # Cases ------------------------------------------------------------------------------

    def open_case(self, alert: Mapping[str, Any], correlation_id: str) -> Routed:
        """Route one alert message (see `route_alert`)."""
        return self.route_alert(AlertSummary.from_message(alert), correlation_id)

    def open_cases(self, alerts: Sequence[tuple[AlertSummary, str]]) -> list[Routed]:
        """Route a batch of alerts (the case opener's fetch) in order, as `route_alert` does
        each: the cases and routings they touch read together (a query for them, one for the
        cases their routings hold open, one for the accounts' branches) and what they change
        saved in one transaction. If that transaction loses a race (another opener, or an
        analyst working one of the cases, wrote first) or the domain refuses one alert,
        nothing of it is kept and each alert is routed again on its own."""
        if len(alerts) > 1:
            ids = [i for summary, _ in alerts for i in _route_ids(summary)]
            with self._locks.holding([ids]):
                routed = self._route_together(alerts)
            if routed is not None:
                return routed
        return [self.route_alert(summary, correlation_id) for summary, correlation_id in alerts]

    def route_alert(self, summary: AlertSummary, correlation_id: str) -> Routed:
        """The alert's case: opened now, joined (an open case of its rule on its account
        takes it), or found routed before (a redelivery changes nothing); or no case, while
        a suppression holds. The routing aggregate of the account and rule and the case are
        saved in one transaction; a lost race is judged again."""

        def branch_of(account_id: UUID) -> str | None:
            return self._branches_of([account_id]).get(account_id)

        return self._retrying(
            _route_ids(summary)[-1:],
            lambda: self._route(summary, correlation_id, self._find, self.ledger.save, branch_of),
        )

    def _route_together(self, alerts: Sequence[tuple[AlertSummary, str]]) -> list[Routed] | None:
        """The batch routed and saved, or None if nothing of it could be kept."""
        try:
            return self._route_all(alerts)
        except Unavailable:
            raise
        except PersistenceError as error:
            if not lost_race(error):
                raise unavailable(error) from error
            return None  # a lost race
        except Exception:  # the domain refused one: routed one by one, it raises alone
            return None

    def _route_all(self, alerts: Sequence[tuple[AlertSummary, str]]) -> list[Routed]:
        loader = self.ledger.loader
        wanted = {i for summary, _ in alerts for i in _route_ids(summary)}
        pool: dict[UUID, object] = dict.fromkeys(wanted) | loader.load_aggregates(wanted)
        held_open = {
            UUID(routing.open_case_id)
            for routing in pool.values()
            if isinstance(routing, AlertRouting) and routing.open_case_id is not None
        }.difference(pool)
        if held_open:
            pool |= dict.fromkeys(held_open) | loader.load_aggregates(held_open)
        branches = self._branches_of({summary.account_id for summary, _ in alerts})
        changed: dict[UUID, Any] = {}

        def find(aggregate_id: UUID, kind: type[A]) -> A | None:
            if aggregate_id not in pool:  # a case routed before, long closed: read it now
                pool[aggregate_id] = self._find(aggregate_id, object)
            aggregate = pool[aggregate_id]
            return aggregate if isinstance(aggregate, kind) else None

        def save(*aggregates: Any) -> None:
            for aggregate in aggregates:
                pool[aggregate.id] = changed[aggregate.id] = aggregate

        routed = [
            self._route(summary, correlation_id, find, save, branches.get)
            for summary, correlation_id in alerts
        ]
        if changed:
            self.ledger.save(*changed.values())
        return routed

    def _route(
        self,
        summary: AlertSummary,
        correlation_id: str,
        find: _Find,
        save: Callable[..., object],
        branch_of: Callable[[UUID], str | None],
    ) -> Routed:
        """One alert's routing (see `route_alert`), reading through `find` and handing what
        it changed to `save`."""
        own = find(case_id_for(summary.alert_id), AlertCase)
        if own is not None:
            return Routed(own, "existing")
        if summary.rule in SCREENING_SEVERITIES:
            # Screening opened its case with the hold, in the command's own transaction.
            case = self._new_case(summary, branch_of(summary.account_id), correlation_id)
            save(case)
            return Routed(case, "opened")
        routing = find(routing_id(summary.account_id, summary.rule), AlertRouting)
        stamp = self._stamp(SYSTEM_ACTOR, correlation_id)
        if routing is not None and str(summary.alert_id) in routing.routed:
            routed_to = routing.routed[str(summary.alert_id)]
            if routed_to is None:
                return Routed(None, "suppressed")
            return Routed(find(UUID(routed_to), AlertCase), "existing")
        if routing is None:
            routing = AlertRouting.start(summary.account_id, summary.rule, stamp)
        suppression_id = routing.suppression_at(summary.raised_at or stamp.timestamp)
        if suppression_id is not None:
            routing.suppressed(summary.alert_id, suppression_id, stamp)
            save(routing)
            return Routed(None, "suppressed")
        if routing.open_case_id is not None:
            held = find(UUID(routing.open_case_id), AlertCase)
            if held is not None and held.allows(CaseAction.JOIN):
                held.join(
                    summary.alert_id,
                    summary.severity,
                    summary.explanation,
                    summary.evidence,
                    stamp,
                )
                routing.joined(summary.alert_id, held.id, stamp)
                save(held, routing)
                return Routed(held, "joined")
        case = self._new_case(summary, branch_of(summary.account_id), correlation_id)
        routing.opened(summary.alert_id, case.id, stamp)
        save(case, routing)
        return Routed(case, "opened")

    def _new_case(
        self, summary: AlertSummary, branch: str | None, correlation_id: str
    ) -> AlertCase:
        return AlertCase.open(
            summary.alert_id,
            summary.rule,
            summary.severity,
            summary.account_id,
            branch,
            summary.explanation,
            self._stamp(SYSTEM_ACTOR, correlation_id),
        )

    def act_on_case(
        self,
        case_id: UUID,
        action: CaseAction | str,
        actor: Actor,
        correlation_id: str,
        **args: Any,
    ) -> AlertCase:
        """One workflow step: `acknowledge(note?)`, `assign(assignee, note?)`,
        `escalate(note)`, `comment(note)`, `close(resolution, note)`."""
        step = CaseAction(action)

        def attempt() -> AlertCase:
            case = self.get_case(case_id)
            stamp = self._stamp(actor, correlation_id)
            routing: AlertRouting | None = None
            match step:
                case CaseAction.ACKNOWLEDGE:
                    case.acknowledge(args.get("note"), stamp)
                case CaseAction.ASSIGN:
                    case.assign(
                        args["assignee"],
                        args.get("note"),
                        stamp,
                        if_unassigned=bool(args.get("if_unassigned")),
                    )
                case CaseAction.ESCALATE:
                    case.escalate(args["note"], stamp)
                case CaseAction.COMMENT:
                    case.comment(args["note"], stamp)
                case CaseAction.CLOSE:
                    case.close(args["resolution"], args["note"], stamp)
                    # The next alert of its rule on its account opens a new case.
                    routing = self._find(routing_id(case.account_id, case.rule), AlertRouting)
                    if routing is not None:
                        routing.case_closed(case.id, stamp)
                case CaseAction.JOIN:
                    raise ValidationFailed("alerts join cases through the case opener")
            self.ledger.save(case, *(() if routing is None else (routing,)))
            return case

        return self._retrying([case_id], attempt)

    def freeze_account_from_case(
        self, case_id: UUID, note: str, actor: Actor, correlation_id: str
    ) -> dict[str, Any]:
        """Freeze the case's account through the ledger; the reason names the case.
        Returns the account reply (`account_body`)."""
        case = self.get_case(case_id)
        note = note.strip()
        if not note:
            raise ValidationFailed("freezing an account needs a note saying why", "body.note")
        command = ChangeStatus(UUID(case.account_id), "freeze", f"case {case_id}: {note}")
        outcome = self.ledger.execute([Submission(command, actor, correlation_id)])[0]
        if outcome.error is not None:
            raise outcome.error
        assert outcome.body is not None
        return outcome.body

    # Watchlist --------------------------------------------------------------------------

    def add_to_watchlist(
        self, account_id: UUID, reason: str, actor: Actor, correlation_id: str
    ) -> WatchlistEntry:
        """List an account (new entry, or a removed one restored); `AlreadyListed` if it is."""
        entry_id = watchlist_entry_id(account_id)
        self.ledger.get_account(account_id)  # AccountNotFound: only our accounts are watched

        def attempt() -> WatchlistEntry:
            existing = self._find(entry_id, WatchlistEntry)
            entry = list_account(existing, account_id, reason, self._stamp(actor, correlation_id))
            self.ledger.save(entry)
            return entry

        return self._retrying([entry_id], attempt)

    def remove_from_watchlist(
        self, account_id: UUID, reason: str, actor: Actor, correlation_id: str
    ) -> WatchlistEntry:
        """`WatchlistEntryNotFound` if the account is not listed."""
        entry_id = watchlist_entry_id(account_id)

        def attempt() -> WatchlistEntry:
            entry = self._find(entry_id, WatchlistEntry)
            stamp = self._stamp(actor, correlation_id)
            if entry is None:
                raise WatchlistEntryNotFound(f"account {account_id} is not on the watchlist")
            entry.remove(reason, stamp)
            self.ledger.save(entry)
            return entry

        return self._retrying([entry_id], attempt)

    # Suppressions -----------------------------------------------------------------------

    def add_suppression(
        self,
        account_id: UUID,
        rule: str,
        until: datetime,
        reason: str,
        actor: Actor,
        correlation_id: str,
    ) -> Suppression:
        """Hits of `rule` on the account until `until` are alerts with status `suppressed`
        that open no case. Recorded on the suppression and on the account's routing."""
        if rule not in RULES:
            raise ValidationFailed(f"rule must be one of {', '.join(RULES)}", "body.rule")
        self.ledger.get_account(account_id)  # AccountNotFound
        suppression_id = uuid4()
        key = routing_id(account_id, rule)

        def attempt() -> Suppression:
            stamp = self._stamp(actor, correlation_id)
            suppression = Suppression.create(suppression_id, account_id, rule, until, reason, stamp)
            routing = self._find(key, AlertRouting) or AlertRouting.start(account_id, rule, stamp)
            routing.apply_suppression(suppression, stamp)
            self.ledger.save(suppression, routing)
            return suppression

        return self._retrying([key], attempt)

    def revoke_suppression(
        self, suppression_id: UUID, reason: str, actor: Actor, correlation_id: str
    ) -> Suppression:
        """Revoke it: the next hits route to cases again. `suppression_not_found` for an
        unknown or already revoked one."""
        found = self._find(suppression_id, Suppression)
        if found is None:
            raise SuppressionNotFound(f"suppression {suppression_id} does not exist")
        key = routing_id(found.account_id, found.rule)

        def attempt() -> Suppression:
            suppression = self._find(suppression_id, Suppression)
            assert suppression is not None
            stamp = self._stamp(actor, correlation_id)
            suppression.revoke(reason, stamp)
            routing = self._find(key, AlertRouting)
            if routing is not None:
                routing.lift_suppression(suppression_id, stamp)
            self.ledger.save(suppression, *(() if routing is None else (routing,)))
            return suppression

        return self._retrying([key], attempt)

    # Helpers ----------------------------------------------------------------------------

    def _stamp(self, actor: Actor, correlation_id: str) -> Stamp:
        return Stamp(
            actor=actor,
            timestamp=self.ledger.options.clock(),
            correlation_id=correlation_id,
            transaction_id=None,
            mac_key=self.ledger.options.mac_key,
            mac_kid=self.ledger.options.mac_kid,
        )

    def _find(self, aggregate_id: UUID, kind: type[A]) -> A | None:
        try:
            aggregate: object = self.ledger.repository.get(aggregate_id)
        except AggregateNotFoundError:
            return None
        return aggregate if isinstance(aggregate, kind) else None

    def _branches_of(self, account_ids: Collection[UUID]) -> dict[UUID, str]:
        """Each account's branch from its first event alone (not the whole history), in
        one query; an account is left out if that event cannot be read (one this process
        cannot decode, which is what a `quarantined_event` alert reports: its case must
        still open)."""
        branches: dict[UUID, str] = {}
        for stored in self.ledger.replies.select_first_events(list(account_ids)):
            try:
                first = self.ledger.mapper.to_domain_event(stored)
            except MapperDeserialisationError:
                continue
            if isinstance(first, Account.AccountOpened):
                branches[UUID(str(stored.originator_id))] = first.branch
        return branches

    def _retrying(self, ids: Iterable[UUID], attempt: Callable[[], T]) -> T:
        options = self.ledger.options
        with self._locks.holding([list(ids)]):
            return retrying(
                lambda _last: attempt(),
                retries_max=options.retries_max,
                backoff_s=options.retry_backoff_s,
            )


class _Find(Protocol):
    def __call__(self, aggregate_id: UUID, kind: type[A]) -> A | None: ...


def _route_ids(summary: AlertSummary) -> list[UUID]:
    """What routing the alert reads and may write: its own case, and the routing aggregate
    of its account and rule (last; screening alerts have none)."""
    own = case_id_for(summary.alert_id)
    if summary.rule in SCREENING_SEVERITIES:
        return [own]
    return [own, routing_id(summary.account_id, summary.rule)]


def watchlist_body(entry: WatchlistEntry) -> dict[str, Any]:
    return {
        "account_id": entry.account_id,
        "listed": entry.listed,
        "reason": entry.reason,
        "version": entry.version,
        "changed_at": format_timestamp(entry.modified_on),
    }


def _strings(value: object) -> list[str]:
    return [str(v) for v in value] if isinstance(value, list) else []


def _optional_int(value: object) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _moment(value: object) -> datetime | None:
    """An alert's `raised_at`, if it is a timestamp with a zone."""
    if not isinstance(value, str):
        return None
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        return None
    return moment if moment.tzinfo is not None else None


def suppression_body(suppression: Suppression) -> dict[str, Any]:
    return {
        "suppression_id": str(suppression.id),
        "account_id": suppression.account_id,
        "rule": suppression.rule,
        "until": format_timestamp(suppression.until),
        "reason": suppression.reason,
        "status": "revoked" if suppression.revoked else "active",
        "version": suppression.version,
        "created_at": format_timestamp(suppression.created_on),
        "updated_at": format_timestamp(suppression.modified_on),
    }
