"""Postings across two accounts (transfers, hold captures, reversals): every check on
both sides comes before either account changes, and money is conserved."""

from __future__ import annotations

from domain.account import Account, Original, PendingHold
from domain.errors import (
    HoldExpired,
    InvalidAmount,
    NotReversible,
    ReversalExceedsOriginal,
    ValidationFailed,
)
from domain.integrity import Stamp, format_timestamp
from domain.money import Money, format_amount


def transfer(
    source: Account,
    target: Account,
    money: Money,
    reference: str | None,
    stamp: Stamp,
    *,
    balance_max_minor: int,
) -> None:
    """Move money between two accounts: both sides are checked before either changes."""
    if source.id == target.id:
        raise ValidationFailed(
            "a transfer needs two different accounts", field="body.to_account_id"
        )
    source.check_can_send(money)
    target.check_can_receive(money, balance_max_minor=balance_max_minor)
    before = source.balance_minor + target.balance_minor
    source.transfer_out(money, target.id, reference, stamp)
    target.transfer_in(money, source.id, reference, stamp, balance_max_minor=balance_max_minor)
    assert source.balance_minor + target.balance_minor == before, "transfers conserve money"


def capture_hold(
    source: Account,
    target: Account | None,
    hold_id: str,
    amount_minor: int | None,
    stamp: Stamp,
    *,
    balance_max_minor: int,
    review: bool = False,
    channel: str = "card",
) -> tuple[PendingHold, Money]:
    """Capture a pending hold, all of it or part (the rest is released): a transfer to the
    hold's target, or a card withdrawal without one. Every check comes before any event.
    `review`: a compliance release, the only capture a review hold takes."""
    hold = source._hold_for(hold_id, review=review)
    if hold.is_due(stamp.timestamp):
        raise HoldExpired(f"hold {hold_id} expired at {format_timestamp(hold.expires_at)}")
    captured = hold.amount_minor if amount_minor is None else amount_minor
    if not 0 < captured <= hold.amount_minor:
        raise InvalidAmount(
            f"a capture takes more than zero and at most the held "
            f"{format_amount(hold.amount_minor, hold.currency)} {hold.currency}"
        )
    money = Money(captured, hold.currency)
    source._check_movement(money)
    if (target is None) != (hold.to_account_id is None) or (
        target is not None and str(target.id) != hold.to_account_id
    ):
        raise ValidationFailed(f"hold {hold_id} pays {hold.to_account_id}", "path.hold_id")
    if target is not None:
        target.check_can_receive(money, balance_max_minor=balance_max_minor)
    source._trigger(
        source.HoldCaptured,
        stamp,
        hold_id=hold_id,
        amount_minor=captured,
        currency=hold.currency,
        released_minor=hold.amount_minor - captured,
        held_after_minor=source.held_minor - hold.amount_minor,
        review_outcome="released" if review else None,
    )
    # The hold reserved the money: with it ended, the movement's own checks pass.
    if target is None:
        source.withdraw(money, channel, hold.reference, stamp)
    else:
        transfer(source, target, money, hold.reference, stamp, balance_max_minor=balance_max_minor)
    return hold, money


def reverse(
    original: Original,
    debit: Account | None,
    credit: Account | None,
    amount_minor: int | None,
    reason: str,
    stamp: Stamp,
    *,
    balance_max_minor: int,
) -> Money:
    """Undo all or part of `original`: take the money back from the account it credited
    (`debit` here) and give it back to the account it debited (`credit` here). Reversals of
    one original add up to at most its amount. Every check comes before any event."""
    involved = [account for account in (debit, credit) if account is not None]
    assert [a.id for a in involved] == [
        i for i in (original.credited, original.debited) if i is not None
    ], "the accounts are the original's"
    done = max(account.reversed_minor.get(original.transaction_id, 0) for account in involved)
    left = original.amount_minor - done
    amount = left if amount_minor is None else amount_minor
    if left <= 0:
        raise ReversalExceedsOriginal(f"transaction {original.transaction_id} is fully reversed")
    if amount > left:
        raise ReversalExceedsOriginal(
            f"transaction {original.transaction_id} has "
            f"{format_amount(left, original.currency)} {original.currency} left to reverse"
        )
    money = Money(amount, original.currency)
    if debit is not None:
        debit.check_can_send(money)
    if credit is not None:
        credit.check_can_receive(money, balance_max_minor=balance_max_minor)
    for account, event_class, other, sign in (
        (debit, Account.ReversalDebited, credit, -1),
        (credit, Account.ReversalCredited, debit, 1),
    ):
        if account is None:
            continue
        account._trigger(
            event_class,
            stamp,
            amount_minor=amount,
            currency=money.currency,
            reverses=original.transaction_id,
            counterparty_account_id=None if other is None else str(other.id),
            reason=reason,
            reference=None,
            balance_after_minor=account.balance_minor + sign * amount,
            reversed_total_minor=done + amount,
        )
    return money


def check_reversible(kind: str) -> None:
    """Only money movements are reversed; a reversal, an opening or a hold is not."""
    if kind not in REVERSIBLE_KINDS:
        raise NotReversible(f"a {kind.replace('_', ' ')} cannot be reversed")


REVERSIBLE_KINDS = frozenset({"deposit", "withdrawal", "transfer", "capture_hold"})
