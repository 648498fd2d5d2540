"""Compliance's commands: alert cases and the watchlist, over the ledger's event store.

Cases and watchlist entries live in the same store as accounts, so the relay publishes
their events like account events, and the audit trail is one hash-chained log. Each
command is thin: load, call the aggregate, save. A save that loses an optimistic-
concurrency race (another writer took the version) is judged again from fresh state, a
bounded number of times, by the same retry loop as `Ledger.execute`.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar
from uuid import UUID

from eventsourcing.application import AggregateNotFoundError
from eventsourcing.persistence import IntegrityError, MapperDeserialisationError, PersistenceError

from application.commands import ChangeStatus, Submission
from application.ledger import Ledger
from application.locks import StripedLocks
from application.retry import retrying, unavailable
from domain.account import Account
from domain.case import EXPLANATION_CHARS_MAX, AlertCase, CaseAction
from domain.errors import CaseNotFound, ValidationFailed, WatchlistEntryNotFound
from domain.ids import case_id_for, watchlist_entry_id
from domain.integrity import SYSTEM_ACTOR, Actor, Stamp, format_timestamp
from domain.watchlist import WatchlistEntry, list_account

CASE_LOCK_STRIPES = 256

T = TypeVar("T")
A = TypeVar("A")


@dataclass(frozen=True, slots=True)
class AlertSummary:
    """What a case keeps of an alert message (the API contract's alert fields)."""

    alert_id: UUID
    rule: str
    severity: str
    account_id: UUID
    explanation: str

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
        return cls(alert_id, rule, severity, account_id, explanation)


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

    def open_case(self, alert: Mapping[str, Any], correlation_id: str) -> tuple[AlertCase, bool]:
        """The alert's case, opened now (True) or found opened before (False), unchanged.

        Idempotent and race-safe: a second opener of the same alert loses on the store's
        primary key, reloads, and returns the winner's case.
        """
        return self._open_one(AlertSummary.from_message(alert), correlation_id)

    def open_cases(
        self, alerts: Sequence[tuple[AlertSummary, str]]
    ) -> list[tuple[AlertCase, bool]]:
        """`open_case` for a batch of alerts (the case opener's fetch), in order: one read
        of the cases already open, one of the accounts' branches, and one transaction for
        the new cases. If that transaction loses a race (another opener saved one of them
        first), each alert is opened on its own, as `open_case` does."""
        case_ids = [case_id_for(summary.alert_id) for summary, _ in alerts]
        with self._locks.holding([case_ids]):
            try:
                opened = self._open_all(alerts, case_ids)
            except IntegrityError:
                opened = None
            except PersistenceError as error:
                raise unavailable(error) from error
        if opened is not None:
            return opened
        return [self._open_one(summary, correlation_id) for summary, correlation_id in alerts]

    def _open_all(
        self, alerts: Sequence[tuple[AlertSummary, str]], case_ids: list[UUID]
    ) -> list[tuple[AlertCase, bool]]:
        found = self.ledger.loader.load_aggregates(set(case_ids))
        branches = self._branches_of({summary.account_id for summary, _ in alerts})
        opened: list[tuple[AlertCase, bool]] = []
        new: dict[UUID, AlertCase] = {}
        for (summary, correlation_id), case_id in zip(alerts, case_ids, strict=True):
            case = found.get(case_id)
            if not isinstance(case, AlertCase):
                case = new.get(case_id)
            if case is not None:
                opened.append((case, False))  # opened before, or earlier in this batch
                continue
            case = new[case_id] = self._new_case(
                summary, branches.get(summary.account_id), correlation_id
            )
            opened.append((case, True))
        if new:
            self.ledger.save(*new.values())
        return opened

    def _open_one(self, summary: AlertSummary, correlation_id: str) -> tuple[AlertCase, bool]:
        case_id = case_id_for(summary.alert_id)

        def attempt() -> tuple[AlertCase, bool]:
            existing = self._find(case_id, AlertCase)
            if existing is not None:
                return existing, False
            branch = self._branches_of([summary.account_id]).get(summary.account_id)
            case = self._new_case(summary, branch, correlation_id)
            self.ledger.save(case)
            return case, True

        return self._retrying([case_id], attempt)

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
            match step:
                case CaseAction.ACKNOWLEDGE:
                    case.acknowledge(args.get("note"), stamp)
                case CaseAction.ASSIGN:
                    case.assign(args["assignee"], args.get("note"), stamp)
                case CaseAction.ESCALATE:
                    case.escalate(args["note"], stamp)
                case CaseAction.COMMENT:
                    case.comment(args["note"], stamp)
                case CaseAction.CLOSE:
                    case.close(args["resolution"], args["note"], stamp)
            self.ledger.save(case)
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


def watchlist_body(entry: WatchlistEntry) -> dict[str, Any]:
    return {
        "account_id": entry.account_id,
        "listed": entry.listed,
        "reason": entry.reason,
        "version": entry.version,
        "changed_at": format_timestamp(entry.modified_on),
    }
