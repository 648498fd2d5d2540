"""Judging a group of commands, apart from any I/O: accounts and stored replies in; new
events per account, new replies and one outcome per command out.

Nothing here reads a clock, the store or a cache: the moments to stamp events with, the
operator's ceilings and the MAC key come in as arguments, so the same inputs give the
same decision. The accounts given are the group's working copies and are changed in place
(a caller that cannot save the decision drops them).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from collections.abc import Set as AbstractSet
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import Any
from uuid import UUID

from eventsourcing.domain import DomainEventProtocol

from application.commands import (
    CaptureHold,
    ChangeStatus,
    DecideReview,
    Deposit,
    ExpireHold,
    OpenAccount,
    Outcome,
    PlaceHold,
    ReplyRecord,
    ReverseTransaction,
    Submission,
    Transfer,
    VoidHold,
    Withdraw,
    account_body,
    account_ids,
    case_body,
    command_id,
    fingerprint,
    hold_body,
    movement_body,
    reversal_body,
    transfer_body,
)
from application.terms import HELD_FOR_REVIEW, RELEASED, REVIEW_HOLD, Terms, released_id
from domain.account import Account, HoldStatus, PendingHold
from domain.case import AlertCase, CaseAction
from domain.errors import (
    AccountNotFound,
    CaseNotFound,
    CurrencyMismatch,
    DomainError,
    Forbidden,
    InvalidTransition,
    TransactionConflict,
    Unavailable,
    ValidationFailed,
)
from domain.ids import case_id_for, derived_id, watchlist_entry_id
from domain.integrity import Stamp
from domain.money import Money, format_amount
from domain.postings import capture_hold, reverse, transfer
from domain.screening import Screening, screen
from domain.watchlist import WatchlistEntry


@dataclass(frozen=True, slots=True)
class Decision:
    """A group judged: one outcome per command, in order (refusals included); the new
    events of each account changed, in the order to save them; the new replies by command
    id; and every account of the group afterwards (those opened by it included)."""

    outcomes: list[Outcome]
    events: dict[UUID, list[DomainEventProtocol[UUID]]]
    replies: dict[UUID, ReplyRecord]
    accounts: dict[UUID, Account]


def decide_group(
    submissions: Sequence[Submission],
    accounts: Mapping[UUID, Account],
    stored_replies: Mapping[UUID, ReplyRecord],
    *,
    terms: Terms,
    timestamps: Iterator[datetime],
    held_back: AbstractSet[UUID] = frozenset(),
    others: Mapping[UUID, object] | None = None,
) -> Decision:
    """Apply the commands in order, each atomic on its own, to the group's accounts.

    `stored_replies`: the replies already given to the group's command ids; such a command
    is replayed (same fingerprint) or refused (another). `timestamps`: one moment is drawn
    for each command that reaches the domain, so each is stamped with its own time, as
    when commands were applied one at a time. A command on an account in `held_back`
    (one that kept changing under the group) is told to retry, and decides nothing.
    `others`: the watchlist entries screening reads and the cases review decisions close.
    """
    judge = _Judge(accounts, stored_replies, terms, timestamps, others or {})
    outcomes = [
        Outcome(error=Unavailable("its accounts kept changing under it; retry"))
        if not held_back.isdisjoint(account_ids(submission.command))
        else judge.decide(submission)
        for submission in submissions
    ]
    events: dict[UUID, list[DomainEventProtocol[UUID]]] = {
        i: list(account.collect_events()) for i, account in judge.touched.items()
    }
    for case_id, case in judge.cases.items():
        events[case_id] = list(case.collect_events())
    return Decision(outcomes, events, judge.new_replies, judge.accounts)


class _Judge:
    """The state of one group being judged: its accounts, and replies decided so far."""

    def __init__(
        self,
        accounts: Mapping[UUID, Account],
        stored_replies: Mapping[UUID, ReplyRecord],
        terms: Terms,
        timestamps: Iterator[datetime],
        others: Mapping[UUID, object],
    ) -> None:
        self.accounts: dict[UUID, Account] = dict(accounts)
        self.others = others
        # Cases opened or closed by the group (saved with its accounts).
        self.cases: dict[UUID, AlertCase] = {}
        self.stored = stored_replies
        self.terms = terms
        self.timestamps = timestamps
        self.touched: dict[UUID, Account] = {}
        self.new_replies: dict[UUID, ReplyRecord] = {}

    def account(self, account_id: UUID) -> Account:
        account = self.accounts.get(account_id)
        if account is None:
            raise AccountNotFound(f"account {account_id} does not exist")
        return account

    def decide(self, submission: Submission) -> Outcome:
        try:
            outcome = self._decide(submission)
        except DomainError as error:
            return Outcome(error=error)
        return self._readable(submission, outcome)

    def _readable(self, submission: Submission, outcome: Outcome) -> Outcome:
        """The reply as the caller may read it: a teller transferring to another branch's
        account learns it exists, not its balance (the stored reply keeps both sides, so
        a replay is judged, and shown, the same way)."""
        command = submission.command
        scope = submission.branch_scope
        if scope is None or not isinstance(command, Transfer) or outcome.body is None:
            return outcome
        target = self.accounts.get(command.to_account_id)
        if target is not None and target.branch == scope:
            return outcome
        return Outcome(body=redact_counterparty(outcome.body), replayed=outcome.replayed)

    def _decide(self, submission: Submission) -> Outcome:
        # Auth first: a teller of another branch learns nothing, not even a replay.
        self._check_authority(submission)
        cid = command_id(submission.command)
        if cid is None:
            return Outcome(body=self._apply(submission, None))
        print_ = fingerprint(submission)
        prior = self.new_replies.get(cid) or self.stored.get(cid)
        if prior is not None:
            if prior.fingerprint != print_:
                raise TransactionConflict(f"id {cid} was already used for another command")
            return Outcome(body=prior.body, replayed=True)
        body = self._apply(submission, cid)
        self.new_replies[cid] = ReplyRecord(
            command_id=cid,
            kind=submission.command.kind,
            subject=submission.actor.subject,
            fingerprint=print_,
            body=body,
        )
        return Outcome(body=body)

    def _check_authority(self, submission: Submission) -> None:
        """A teller acts on its own branch only, and grants overdrafts up to its ceiling."""
        scope = submission.branch_scope
        if scope is None:
            return
        command = submission.command
        branch: str | None
        match command:
            case OpenAccount(branch=opened_in):
                branch = opened_in
            case Transfer(from_account_id=account_id) | (
                Deposit(account_id=account_id)
                | Withdraw(account_id=account_id)
                | ChangeStatus(account_id=account_id)
                | PlaceHold(account_id=account_id)
                | CaptureHold(account_id=account_id)
                | VoidHold(account_id=account_id)
                | ExpireHold(account_id=account_id)
            ):
                account = self.accounts.get(account_id)
                # Missing or another branch's: a teller cannot tell which.
                branch = None if account is None else account.branch
        if branch != scope:
            raise Forbidden(f"a teller of branch {scope} may act only on accounts of that branch")
        if isinstance(command, OpenAccount):
            limit_minor = self.terms.ceilings.teller_overdraft_max_minor(command.currency)
            if command.overdraft_limit_minor > limit_minor:
                raise Forbidden(
                    f"a teller may grant an overdraft of at most "
                    f"{format_amount(limit_minor, command.currency)} {command.currency}; "
                    "an admin may grant more"
                )

    def _apply(self, submission: Submission, cid: UUID | None) -> dict[str, Any]:
        # An opening moves no money: its id is the account's, not a transaction's.
        is_transaction = cid is not None and not isinstance(submission.command, OpenAccount)
        stamp = Stamp(
            actor=submission.actor,
            timestamp=next(self.timestamps),
            correlation_id=submission.correlation_id,
            transaction_id=str(cid) if is_transaction else None,
            mac_key=self.terms.mac_key,
            mac_kid=self.terms.mac_kid,
        )
        command = submission.command
        ceilings = self.terms.ceilings
        if isinstance(command, Transfer | Withdraw | PlaceHold) and self.terms.screening:
            held = self._screen(command, self.terms.screening, stamp)
            if held is not None:
                return held
        match command:
            case OpenAccount():
                return self._open(command, stamp)
            case DecideReview():
                return self._decide_review(command, stamp)
            case Deposit():
                account = self.account(command.account_id)
                account.deposit(
                    command.money,
                    command.channel,
                    command.reference,
                    stamp,
                    balance_max_minor=ceilings.balance_max_minor(account.currency),
                )
                self.touched[account.id] = account
                return movement_body(command.transaction_id, account)
            case Withdraw():
                account = self.account(command.account_id)
                account.withdraw(command.money, command.channel, command.reference, stamp)
                self.touched[account.id] = account
                return movement_body(command.transaction_id, account)
            case Transfer():
                source = self.account(command.from_account_id)
                target = self.account(command.to_account_id)
                transfer(
                    source,
                    target,
                    command.money,
                    command.reference,
                    stamp,
                    balance_max_minor=ceilings.balance_max_minor(target.currency),
                )
                self.touched[source.id] = source
                self.touched[target.id] = target
                return transfer_body(command.transaction_id, source, target)
            case ChangeStatus():
                account = self.account(command.account_id)
                getattr(account, command.action)(command.reason, stamp)
                self.touched[account.id] = account
                return account_body(account)
            case PlaceHold() | CaptureHold() | VoidHold() | ExpireHold():
                return self._hold(command, stamp)
            case ReverseTransaction():
                return self._reverse(command, stamp)

    def _hold(
        self, command: PlaceHold | CaptureHold | VoidHold | ExpireHold, stamp: Stamp
    ) -> dict[str, Any]:
        ceilings = self.terms.ceilings
        match command:
            case PlaceHold():
                return self._place_hold(command, stamp)
            case CaptureHold():
                source = self.account(command.account_id)
                payee = None
                if command.to_account_id is not None:
                    payee = self.account(command.to_account_id)
                hold, money = capture_hold(
                    source,
                    payee,
                    str(command.hold_id),
                    command.amount_minor,
                    stamp,
                    balance_max_minor=ceilings.balance_max_minor(source.currency),
                )
                self.touched[source.id] = source
                if payee is not None:
                    self.touched[payee.id] = payee
                return hold_body(
                    source,
                    hold,
                    HoldStatus.CAPTURED.value,
                    captured_amount=format_amount(money.amount_minor, money.currency),
                    transaction_id=str(command.transaction_id),
                )
            case VoidHold():
                account = self.account(command.account_id)
                hold = account.pending_hold(str(command.hold_id))
                account.void_hold(str(command.hold_id), command.reason, stamp)
                self.touched[account.id] = account
                return hold_body(account, hold, HoldStatus.VOIDED.value)
            case ExpireHold():
                account = self.account(command.account_id)
                hold_id = str(command.hold_id)
                due = account.holds.get(hold_id)
                if due is None or not due.is_due(stamp.timestamp):
                    return {"hold_id": hold_id, "status": "unchanged", "changed": False}
                case = self._review_case(command.case_id, due) if due.review else None
                account.expire_hold(hold_id, stamp)
                self.touched[account.id] = account
                if case is not None and case.allows(CaseAction.CLOSE):
                    case.close("expired", "the review hold expired undecided", stamp, review=True)
                    self.cases[case.id] = case
                return hold_body(account, due, HoldStatus.EXPIRED.value, changed=True)

    # Screening and review ------------------------------------------------------------

    def _screen(
        self, command: Transfer | Withdraw | PlaceHold, screening: Screening, stamp: Stamp
    ) -> dict[str, Any] | None:
        """A command screening stops becomes a pending hold for review and a case, in this
        group's transaction; None lets it post. Every check the command itself would make
        on its accounts comes first, so screening holds only what could post."""
        payee: Account | None = None
        match command:
            case Transfer():
                source = self.account(command.from_account_id)
                payee = self.account(command.to_account_id)
                if source.id == payee.id:
                    return None  # refused as a transfer, below
                payee.check_can_receive(
                    command.money,
                    balance_max_minor=self.terms.ceilings.balance_max_minor(payee.currency),
                )
            case Withdraw():
                source = self.account(command.account_id)
            case PlaceHold():
                source = self.account(command.account_id)
                if command.to_account_id is not None:
                    payee = self.account(command.to_account_id)
        watchlisted = {
            i
            for i in (source.id, None if payee is None else payee.id)
            if i is not None and self._watchlisted(i)
        }
        verdict = screen(
            screening,
            command.money,
            source.id,
            None if payee is None else payee.id,
            watchlisted,
        )
        if verdict is None:
            return None
        transaction_id = command.transaction_id
        hold_id = derived_id(f"{transaction_id}:review")
        alert_id = derived_id(f"{verdict.rule}:{hold_id}")
        case_id = case_id_for(alert_id)
        held: dict[str, Any] = {"kind": command.kind, "reference": command.reference}
        if isinstance(command, Withdraw):
            held["channel"] = command.channel
        if isinstance(command, PlaceHold):
            held["expires_in_s"] = command.expires_in_s
        review = {
            "rule": verdict.rule,
            "config_sha256": screening.config_sha256,
            "figures": verdict.figures,
            "alert_id": str(alert_id),
            "case_id": str(case_id),
            "transaction_id": str(transaction_id),
            "command": held,
        }
        source.place_hold(
            hold_id,
            command.money,
            None if payee is None else payee.id,
            stamp.timestamp + timedelta(seconds=screening.review_timeout_s),
            command.reference,
            stamp,
            review=review,
        )
        self.touched[source.id] = source
        case = AlertCase.open(
            alert_id,
            verdict.rule,
            verdict.severity,
            source.id,
            source.branch,
            f"held for review before posting: {verdict.explanation}",
            stamp,
        )
        self.cases[case.id] = case
        # The review hold's own record, as every hold's placing has one under its id: it
        # says where the hold is (a capture or void of it is then told `hold_under_review`).
        self.new_replies[hold_id] = ReplyRecord(
            command_id=hold_id,
            kind=REVIEW_HOLD,
            subject=stamp.actor.subject,
            fingerprint=f"{REVIEW_HOLD}:{transaction_id}",
            body=hold_body(source, source.holds[str(hold_id)], "pending"),
        )
        return {
            "status": HELD_FOR_REVIEW,
            "hold_id": str(hold_id),
            "case_id": str(case_id),
            "rule": verdict.rule,
            "transaction_id": str(transaction_id),
        }

    def _watchlisted(self, account_id: UUID) -> bool:
        entry = self.others.get(watchlist_entry_id(account_id))
        return isinstance(entry, WatchlistEntry) and entry.listed

    def _review_case(self, case_id: UUID | None, hold: PendingHold) -> AlertCase:
        assert hold.review is not None
        if case_id is None or str(case_id) != hold.review["case_id"]:
            raise CaseNotFound(f"hold {hold.hold_id} is reviewed in case {hold.review['case_id']}")
        case = self.cases.get(case_id) or self.others.get(case_id)
        if not isinstance(case, AlertCase):
            raise CaseNotFound(f"case {case_id} does not exist")
        return case

    def _decide_review(self, command: DecideReview, stamp: Stamp) -> dict[str, Any]:
        """Release: post the held command under its own transaction id; reject: void it.
        Either closes the case; every check comes before any event."""
        account = self.account(command.account_id)
        if command.hold_id is None:
            case = self.others.get(command.case_id)
            if not isinstance(case, AlertCase):
                raise CaseNotFound(f"case {command.case_id} does not exist")
            raise InvalidTransition(
                f"case {command.case_id} holds nothing for review any more"
                if case.allows(CaseAction.CLOSE)
                else f"case {command.case_id} is {case.status.value}"
            )
        hold_id = str(command.hold_id)
        hold = account._hold_for(hold_id, review=True)
        case = self._review_case(command.case_id, hold)
        if not case.allows(CaseAction.CLOSE):
            raise InvalidTransition(f"case {case.id} is {case.status.value}")
        review = hold.review
        assert review is not None
        posted = replace(stamp, transaction_id=review["transaction_id"])
        held = review["command"]
        money = Money(hold.amount_minor, hold.currency)
        payee = None if command.to_account_id is None else self.account(command.to_account_id)
        outcome: dict[str, Any]
        if command.action == "reject":
            account.void_hold(hold_id, command.note, stamp, review_outcome="rejected")
            outcome = hold_body(account, hold, HoldStatus.VOIDED.value)
        elif held["kind"] == "place_hold":
            # Released, the hold it was asked to be: the review hold gives way to it.
            account.check_can_move(money)
            account.void_hold(hold_id, command.note, posted, review_outcome="released")
            account.place_hold(
                UUID(review["transaction_id"]),
                money,
                payee.id if payee is not None else None,
                stamp.timestamp + timedelta(seconds=held["expires_in_s"]),
                hold.reference,
                posted,
            )
            outcome = hold_body(account, account.holds[review["transaction_id"]], "pending")
        else:
            _, moved = capture_hold(
                account,
                payee,
                hold_id,
                None,
                posted,
                balance_max_minor=self.terms.ceilings.balance_max_minor(hold.currency),
                review=True,
                channel=held.get("channel", "card"),
            )
            outcome = hold_body(
                account,
                hold,
                HoldStatus.CAPTURED.value,
                captured_amount=format_amount(moved.amount_minor, moved.currency),
                transaction_id=review["transaction_id"],
            )
        self.touched[account.id] = account
        if payee is not None:
            self.touched[payee.id] = payee
        if command.action == "release":
            record_id = released_id(review["transaction_id"])
            self.new_replies[record_id] = ReplyRecord(
                command_id=record_id,
                kind=RELEASED,
                subject=stamp.actor.subject,
                fingerprint=f"{RELEASED}:{review['transaction_id']}",
                body={
                    "kind": held["kind"],
                    "transaction_id": review["transaction_id"],
                    "account_id": str(account.id),
                    "to_account_id": hold.to_account_id,
                    "amount_minor": hold.amount_minor,
                    "currency": hold.currency,
                },
            )
        resolution = "released" if command.action == "release" else "rejected"
        case.close(resolution, command.note, stamp, review=True)
        self.cases[case.id] = case
        return {**case_body(case), "hold": outcome}

    def _place_hold(self, command: PlaceHold, stamp: Stamp) -> dict[str, Any]:
        account = self.account(command.account_id)
        if command.to_account_id is not None:
            # The payee must exist and can take the currency; its ceiling is checked
            # when the hold is captured, which is when it is paid.
            target = self.account(command.to_account_id)
            if target.id == account.id:
                raise ValidationFailed(
                    "a hold pays another account than its own", field="body.to_account_id"
                )
            if target.currency != command.money.currency:
                raise CurrencyMismatch(
                    f"account {target.id} holds {target.currency}, not {command.money.currency}"
                )
            target.check_open()
        account.place_hold(
            command.transaction_id,
            command.money,
            command.to_account_id,
            stamp.timestamp + timedelta(seconds=command.expires_in_s),
            command.reference,
            stamp,
        )
        self.touched[account.id] = account
        return hold_body(account, account.holds[str(command.transaction_id)], "pending")

    def _reverse(self, command: ReverseTransaction, stamp: Stamp) -> dict[str, Any]:
        original = command.original
        debit = None if original.credited is None else self.account(original.credited)
        credit = None if original.debited is None else self.account(original.debited)
        money = reverse(
            original,
            debit,
            credit,
            command.amount_minor,
            command.reason,
            stamp,
            balance_max_minor=self.terms.ceilings.balance_max_minor(original.currency),
        )
        accounts = [a for a in (credit, debit) if a is not None]
        for account in accounts:
            self.touched[account.id] = account
        return reversal_body(command.transaction_id, original, money.amount_minor, accounts)

    def _open(self, command: OpenAccount, stamp: Stamp) -> dict[str, Any]:
        if command.account_id in self.accounts:
            # Stored without a reply under its id (never by this service): not ours to reopen.
            raise TransactionConflict(f"account {command.account_id} already exists")
        account = Account.open(
            command.account_id,
            command.owner,
            command.branch,
            command.currency,
            command.overdraft_limit_minor,
            stamp,
            overdraft_max_minor=self.terms.ceilings.overdraft_max_minor(command.currency),
        )
        # A new account exists for later items of this group, and a second
        # opening under the same id loses on the primary key, as it should.
        self.accounts[account.id] = account
        self.touched[account.id] = account
        return account_body(account)


def redact_counterparty(body: dict[str, Any]) -> dict[str, Any]:
    """A transfer reply without the receiving account's state."""
    to = body["to"]
    return {**body, "to": {"account_id": to["account_id"], "version": None, "balance": None}}
