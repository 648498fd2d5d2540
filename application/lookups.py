"""Finding what a hold or reversal command acts on, from what the store recorded.

A hold's id is the id of the command that placed it, so its stored reply names its
account, its payee and its currency; a transaction's stored reply names the accounts it
moved money on, and the event at the version the reply shows holds its amount. The
client names only the id: every other fact comes from the store, never from the body.
"""

from __future__ import annotations

from dataclasses import dataclass
from uuid import UUID

from application.commands import ReplyRecord
from application.ledger import Ledger
from application.terms import HELD_FOR_REVIEW, REVIEW_HOLD, released_id
from domain.account import Account, Original
from domain.errors import HoldNotFound, TransactionNotFound, Unavailable
from domain.money import parse_amount
from domain.postings import check_reversible

# What is stored under a hold's id: its placing, or the hold screening made for review.
HOLD_KINDS = frozenset({"place_hold", REVIEW_HOLD})


@dataclass(frozen=True, slots=True)
class HoldRef:
    hold_id: UUID
    account_id: UUID
    to_account_id: UUID | None
    currency: str


def find_reply(ledger: Ledger, command_id: UUID) -> ReplyRecord | None:
    """A committed reply: the reply cache's, else the store's, then cached (a committed
    reply never changes; one not found is not cached, it may commit later)."""
    cache = ledger.options.reply_cache
    cached = cache.get_many([command_id])
    if command_id in cached:
        return cached[command_id]
    record = ledger.loader.load_group({}, (), [command_id]).replies.get(command_id)
    if record is not None:
        cache.put_many({command_id: record})
    return record


def find_hold(ledger: Ledger, hold_id: UUID) -> HoldRef:
    record = _posted(ledger, find_reply(ledger, hold_id))
    if record is None or record.kind not in HOLD_KINDS:
        raise HoldNotFound(f"hold {hold_id} does not exist")
    body = record.body
    payee = body.get("to_account_id")
    return HoldRef(
        hold_id, UUID(body["account_id"]), None if payee is None else UUID(payee), body["currency"]
    )


def find_original(ledger: Ledger, transaction_id: UUID) -> Original:
    """The transaction to reverse; `transaction_not_found`, or `not_reversible` for what
    moved no money or was itself a reversal."""
    record = _posted(ledger, find_reply(ledger, transaction_id))
    if record is None:
        raise TransactionNotFound(f"transaction {transaction_id} does not exist or has not posted")
    check_reversible(record.kind)
    body = record.body
    tid = str(transaction_id)
    if record.kind in RELEASED_KINDS and "amount_minor" in body:
        # Held for review, then released: what posted is in the release's record.
        payee = body["to_account_id"]
        source = UUID(body["account_id"])
        target = None if payee is None else UUID(payee)
        amount, currency = body["amount_minor"], body["currency"]
        if record.kind == "transfer":
            return Original(tid, amount, currency, source, target)
        return Original(tid, amount, currency, debited=source, credited=None)
    match record.kind:
        case "deposit":
            account_id = UUID(body["account_id"])
            amount, currency = _amount_at(ledger, account_id, body["version"])
            return Original(tid, amount, currency, debited=None, credited=account_id)
        case "withdrawal":
            account_id = UUID(body["account_id"])
            amount, currency = _amount_at(ledger, account_id, body["version"])
            return Original(tid, amount, currency, debited=account_id, credited=None)
        case "transfer":
            source = UUID(body["from"]["account_id"])
            amount, currency = _amount_at(ledger, source, body["from"]["version"])
            return Original(tid, amount, currency, source, UUID(body["to"]["account_id"]))
        case "capture_hold":
            payee = body.get("to_account_id")
            money = parse_amount(body["captured_amount"], body["currency"], zero_allowed=False)
            return Original(
                tid,
                money.amount_minor,
                money.currency,
                debited=UUID(body["account_id"]),
                credited=None if payee is None else UUID(payee),
            )
    raise AssertionError(f"reversible kind without a lookup: {record.kind}")


# Commands screening may hold whose release posts a movement to reverse.
RELEASED_KINDS = frozenset({"transfer", "withdrawal"})


def _posted(ledger: Ledger, record: ReplyRecord | None) -> ReplyRecord | None:
    """The record of what a command posted: its own reply, or, for a command screening
    held for review (its reply a 202), what the release posted under its id (None if it
    was not released: nothing posted)."""
    if record is None or record.body.get("status") != HELD_FOR_REVIEW:
        return record
    released = find_reply(ledger, released_id(record.command_id))
    if released is None:
        return None
    # The released command's kind, with what posted.
    return ReplyRecord(
        command_id=record.command_id,
        kind=released.body["kind"],
        subject=released.subject,
        fingerprint=released.fingerprint,
        body=released.body,
    )


def _amount_at(ledger: Ledger, account_id: UUID, version: int) -> tuple[int, str]:
    """The amount of the movement an account recorded at `version`."""
    stored = ledger.recorder.select_events(account_id, gt=version - 1, lte=version, limit=1)
    if not stored:
        raise Unavailable(f"the event of account {account_id} at version {version} is missing")
    event = ledger.mapper.to_domain_event(stored[0])
    if not isinstance(event, Account.Movement):
        raise Unavailable(f"account {account_id} version {version} is not a movement")
    return event.amount_minor, event.currency
