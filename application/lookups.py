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
from domain.account import Account, Original, check_reversible
from domain.errors import HoldNotFound, TransactionNotFound, Unavailable
from domain.money import parse_amount


@dataclass(frozen=True, slots=True)
class HoldRef:
    hold_id: UUID
    account_id: UUID
    to_account_id: UUID | None
    currency: str


def find_reply(ledger: Ledger, command_id: UUID) -> ReplyRecord | None:
    cached = ledger.options.reply_cache.get_many([command_id])
    if command_id in cached:
        return cached[command_id]
    return ledger.loader.load_group({}, (), [command_id]).replies.get(command_id)


def find_hold(ledger: Ledger, hold_id: UUID) -> HoldRef:
    record = find_reply(ledger, hold_id)
    if record is None or record.kind != "place_hold":
        raise HoldNotFound(f"hold {hold_id} does not exist")
    body = record.body
    payee = body.get("to_account_id")
    return HoldRef(
        hold_id, UUID(body["account_id"]), None if payee is None else UUID(payee), body["currency"]
    )


def find_original(ledger: Ledger, transaction_id: UUID) -> Original:
    """The transaction to reverse; `transaction_not_found`, or `not_reversible` for what
    moved no money or was itself a reversal."""
    record = find_reply(ledger, transaction_id)
    if record is None:
        raise TransactionNotFound(f"transaction {transaction_id} does not exist")
    check_reversible(record.kind)
    body = record.body
    tid = str(transaction_id)
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


def _amount_at(ledger: Ledger, account_id: UUID, version: int) -> tuple[int, str]:
    """The amount of the movement an account recorded at `version`."""
    stored = ledger.recorder.select_events(account_id, gt=version - 1, lte=version, limit=1)
    if not stored:
        raise Unavailable(f"the event of account {account_id} at version {version} is missing")
    event = ledger.mapper.to_domain_event(stored[0])
    if not isinstance(event, Account.Movement):
        raise Unavailable(f"account {account_id} version {version} is not a movement")
    return event.amount_minor, event.currency
