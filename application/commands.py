"""Commands the ledger takes, their fingerprints, and the replies they earn."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from typing import Any, Literal
from uuid import UUID

from domain.account import Account, Original, PendingHold
from domain.case import AlertCase
from domain.errors import DomainError
from domain.ids import watchlist_entry_id
from domain.integrity import Actor, canonical, format_timestamp
from domain.money import Money, format_amount


@dataclass(frozen=True, slots=True)
class OpenAccount:
    account_id: UUID
    owner: str
    branch: str
    currency: str
    overdraft_limit_minor: int
    kind: Literal["open_account"] = "open_account"


@dataclass(frozen=True, slots=True)
class Deposit:
    account_id: UUID
    money: Money
    transaction_id: UUID
    channel: str = "cash"
    reference: str | None = None
    kind: Literal["deposit"] = "deposit"


@dataclass(frozen=True, slots=True)
class Withdraw:
    account_id: UUID
    money: Money
    transaction_id: UUID
    channel: str = "cash"
    reference: str | None = None
    kind: Literal["withdrawal"] = "withdrawal"


@dataclass(frozen=True, slots=True)
class Transfer:
    from_account_id: UUID
    to_account_id: UUID
    money: Money
    transaction_id: UUID
    reference: str | None = None
    kind: Literal["transfer"] = "transfer"


@dataclass(frozen=True, slots=True)
class ChangeStatus:
    account_id: UUID
    action: Literal["freeze", "unfreeze", "close"]
    reason: str
    kind: Literal["change_status"] = "change_status"


@dataclass(frozen=True, slots=True)
class PlaceHold:
    """Reserve money on an account; `transaction_id` is the hold's id."""

    account_id: UUID
    money: Money
    transaction_id: UUID
    expires_in_s: int
    to_account_id: UUID | None = None
    reference: str | None = None
    kind: Literal["place_hold"] = "place_hold"


@dataclass(frozen=True, slots=True)
class CaptureHold:
    """Capture a hold (all, or `amount_minor` of it); the movement's id is
    `transaction_id`. The accounts come from the hold's placing, as stored."""

    hold_id: UUID
    account_id: UUID
    to_account_id: UUID | None
    transaction_id: UUID
    amount_minor: int | None = None
    kind: Literal["capture_hold"] = "capture_hold"


@dataclass(frozen=True, slots=True)
class VoidHold:
    hold_id: UUID
    account_id: UUID
    transaction_id: UUID
    reason: str
    kind: Literal["void_hold"] = "void_hold"


@dataclass(frozen=True, slots=True)
class ExpireHold:
    """The sweep's: expire the hold if it is still pending and due (else nothing); a hold
    held for review closes its case (`case_id`) as expired."""

    hold_id: UUID
    account_id: UUID
    case_id: UUID | None = None
    kind: Literal["expire_hold"] = "expire_hold"


@dataclass(frozen=True, slots=True)
class DecideReview:
    """Compliance releases (posts the held command under its own transaction id) or
    rejects (voids) a hold screening made, and closes its case. `transaction_id` is the
    decision's own id; `hold_id` None: the case's hold is no longer pending."""

    case_id: UUID
    account_id: UUID
    to_account_id: UUID | None
    hold_id: UUID | None
    transaction_id: UUID
    action: Literal["release", "reject"]
    note: str
    kind: Literal["review_decision"] = "review_decision"


@dataclass(frozen=True, slots=True)
class ReverseTransaction:
    """Reverse all that is left of `original`, or `amount_minor` of it."""

    original: Original
    transaction_id: UUID
    reason: str
    amount_minor: int | None = None
    kind: Literal["reversal"] = "reversal"


Command = (
    OpenAccount
    | Deposit
    | Withdraw
    | Transfer
    | ChangeStatus
    | PlaceHold
    | CaptureHold
    | VoidHold
    | ExpireHold
    | ReverseTransaction
    | DecideReview
)


@dataclass(frozen=True, slots=True)
class Submission:
    """A command with who sent it. `branch_scope` is the teller's branch, else None."""

    command: Command
    actor: Actor
    correlation_id: str
    branch_scope: str | None = None


@dataclass(frozen=True, slots=True)
class Outcome:
    """One command's result: the reply body, or the refusal. Exactly one is set."""

    body: dict[str, Any] | None = None
    error: DomainError | None = None
    replayed: bool = False

    def __post_init__(self) -> None:
        assert (self.body is None) != (self.error is None), "an outcome is a reply or an error"


@dataclass(frozen=True, slots=True)
class ReplyRecord:
    """What PostgreSQL keeps per command id, in the same transaction as the events."""

    command_id: UUID
    kind: str
    subject: str
    fingerprint: str
    body: dict[str, Any] = field(hash=False)


def command_id(command: Command) -> UUID | None:
    """The id whose uniqueness PostgreSQL enforces; status changes have none."""
    match command:
        case OpenAccount(account_id=account_id):
            return account_id
        case (
            Deposit(transaction_id=tid)
            | Withdraw(transaction_id=tid)
            | Transfer(transaction_id=tid)
            | PlaceHold(transaction_id=tid)
            | CaptureHold(transaction_id=tid)
            | VoidHold(transaction_id=tid)
            | ReverseTransaction(transaction_id=tid)
            | DecideReview(transaction_id=tid)
        ):
            return tid
        case ChangeStatus() | ExpireHold():
            return None


def account_ids(command: Command) -> tuple[UUID, ...]:
    """The accounts a command may change."""
    match command:
        case Transfer(from_account_id=source, to_account_id=target):
            return (source, target)
        case (
            PlaceHold(account_id=source, to_account_id=target)
            | CaptureHold(account_id=source, to_account_id=target)
            | DecideReview(account_id=source, to_account_id=target)
        ):
            # A hold's target is read when placed (it must exist) and paid when captured.
            return (source,) if target is None else (source, target)
        case ReverseTransaction(original=original):
            return tuple(i for i in (original.credited, original.debited) if i is not None)
        case (
            OpenAccount(account_id=account_id)
            | Deposit(account_id=account_id)
            | Withdraw(account_id=account_id)
            | ChangeStatus(account_id=account_id)
            | VoidHold(account_id=account_id)
            | ExpireHold(account_id=account_id)
        ):
            return (account_id,)


def other_ids(command: Command, *, watchlist: bool) -> tuple[UUID, ...]:
    """The aggregates other than accounts a command reads or changes: the watchlist entries
    of the accounts screening looks at (`watchlist`: it checks the watchlist), the case a
    review decision or an expiry closes."""
    match command:
        case Transfer() | Withdraw() | PlaceHold():
            if not watchlist:
                return ()
            return tuple(watchlist_entry_id(i) for i in account_ids(command))
        case DecideReview(case_id=case_id) | ExpireHold(case_id=case_id) if case_id is not None:
            return (case_id,)
        case _:
            return ()


def fingerprint(submission: Submission) -> str:
    """Same id and same fingerprint is a replay; same id, other fingerprint is a conflict."""
    command = submission.command
    # The role too: a token of another role reusing the subject and key is a conflict,
    # never a replay of someone else's reply.
    described: dict[str, Any] = {
        "kind": command.kind,
        "subject": submission.actor.subject,
        "role": submission.actor.role,
    }
    match command:
        case OpenAccount():
            described |= {
                "owner": command.owner,
                "branch": command.branch,
                "currency": command.currency,
                "overdraft_limit_minor": command.overdraft_limit_minor,
            }
        case Deposit() | Withdraw():
            described |= {
                "account_id": str(command.account_id),
                "amount_minor": command.money.amount_minor,
                "currency": command.money.currency,
                "channel": command.channel,
                "reference": command.reference,
            }
        case Transfer():
            described |= {
                "from_account_id": str(command.from_account_id),
                "to_account_id": str(command.to_account_id),
                "amount_minor": command.money.amount_minor,
                "currency": command.money.currency,
                "reference": command.reference,
            }
        case PlaceHold():
            described |= {
                "account_id": str(command.account_id),
                "amount_minor": command.money.amount_minor,
                "currency": command.money.currency,
                "to_account_id": _optional_id(command.to_account_id),
                "expires_in_s": command.expires_in_s,
                "reference": command.reference,
            }
        case CaptureHold():
            described |= {"hold_id": str(command.hold_id), "amount_minor": command.amount_minor}
        case VoidHold():
            described |= {"hold_id": str(command.hold_id), "reason": command.reason}
        case ReverseTransaction():
            described |= {
                "reverses": command.original.transaction_id,
                "amount_minor": command.amount_minor,
                "reason": command.reason,
            }
        case DecideReview():
            described |= {
                "case_id": str(command.case_id),
                "action": command.action,
                "note": command.note,
            }
        case ChangeStatus() | ExpireHold():
            raise AssertionError("status changes and expiries carry no command id")
    return hashlib.sha256(_escaped_json(described)).hexdigest()


def _optional_id(value: UUID | None) -> str | None:
    return None if value is None else str(value)


def _escaped_json(described: dict[str, Any]) -> bytes:
    """Sorted compact JSON with non-ASCII escaped. The canonical encoder (orjson on the
    command path) writes exactly these bytes whenever they come out ASCII, DEL apart: the
    standard library escapes it (`\\u007f`), orjson does not."""
    try:
        encoded = canonical(described)
        if encoded.isascii() and b"\x7f" not in encoded:
            return encoded
    except UnicodeEncodeError:  # a lone surrogate: only the escaped form can carry it
        pass
    return json.dumps(described, sort_keys=True, separators=(",", ":")).encode()


def account_body(account: Account) -> dict[str, Any]:
    return {
        "account_id": str(account.id),
        "owner": account.owner,
        "branch": account.branch,
        "version": account.version,
        "balance": format_amount(account.balance_minor, account.currency),
        "available_balance": format_amount(account.available_minor, account.currency),
        "overdraft_limit": format_amount(account.overdraft_limit_minor, account.currency),
        "currency": account.currency,
        "status": account.status.value,
    }


def movement_body(transaction_id: UUID, account: Account) -> dict[str, Any]:
    return {
        "transaction_id": str(transaction_id),
        "account_id": str(account.id),
        "version": account.version,
        "balance": format_amount(account.balance_minor, account.currency),
        "currency": account.currency,
    }


def transfer_body(transaction_id: UUID, source: Account, target: Account) -> dict[str, Any]:
    def side(account: Account) -> dict[str, Any]:
        return {
            "account_id": str(account.id),
            "version": account.version,
            "balance": format_amount(account.balance_minor, account.currency),
        }

    return {
        "transaction_id": str(transaction_id),
        "currency": source.currency,
        "from": side(source),
        "to": side(target),
    }


def hold_body(
    account: Account,
    hold: PendingHold,
    status: str,
    **extra: Any,
) -> dict[str, Any]:
    """A hold as the API shows it, with its account's state after the command."""
    return {
        "hold_id": hold.hold_id,
        "account_id": str(account.id),
        "to_account_id": hold.to_account_id,
        "amount": format_amount(hold.amount_minor, hold.currency),
        "currency": hold.currency,
        "status": status,
        "expires_at": format_timestamp(hold.expires_at),
        "version": account.version,
        "balance": format_amount(account.balance_minor, account.currency),
        "available_balance": format_amount(account.available_minor, account.currency),
        **extra,
    }


def reversal_body(
    transaction_id: UUID, original: Original, amount_minor: int, accounts: list[Account]
) -> dict[str, Any]:
    return {
        "transaction_id": str(transaction_id),
        "reverses": original.transaction_id,
        "amount": format_amount(amount_minor, original.currency),
        "currency": original.currency,
        "accounts": [
            {
                "account_id": str(account.id),
                "version": account.version,
                "balance": format_amount(account.balance_minor, account.currency),
            }
            for account in accounts
        ],
    }


def case_body(case: AlertCase) -> dict[str, Any]:
    """The command API's reply for a case (the API contract's case fields)."""
    return {
        "case_id": str(case.id),
        "alert_id": case.alert_id,
        "account_id": case.account_id,
        "branch": case.branch,
        "rule": case.rule,
        "severity": case.severity,
        "status": case.status.value,
        "assignee": case.assignee,
        "resolution": case.resolution,
        "explanation": case.explanation,
        "version": case.version,
        "opened_at": format_timestamp(case.created_on),
        "updated_at": format_timestamp(case.modified_on),
        "closed_at": None if case.closed_at is None else format_timestamp(case.closed_at),
    }
