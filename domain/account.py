"""The Account aggregate: public commands check, then trigger; events only assign."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Any, ClassVar, TypeVar
from uuid import UUID

from eventsourcing.domain import Aggregate

from domain.chained import ChainedAggregate
from domain.errors import (
    AccountClosed,
    AccountFrozen,
    AccountHasHolds,
    AccountNotEmpty,
    AccountNotFrozen,
    BalanceLimitExceeded,
    CurrencyMismatch,
    HoldExpired,
    HoldNotPending,
    HoldUnderReview,
    InsufficientFunds,
    InvalidAmount,
    ValidationFailed,
)
from domain.integrity import Stamp, format_timestamp
from domain.money import Money, exponent_of, format_amount
from domain.text import BRANCH_PATTERN, TextRefused, acceptable_text

CHANNELS = ("cash", "card", "wire")
# An owner's name as the record keeps it: acceptable text of at most this many characters.
OWNER_CHARS_MAX = 200


class AccountStatus(StrEnum):
    OPEN = "open"
    FROZEN = "frozen"
    CLOSED = "closed"


TEvent = TypeVar("TEvent", bound="Account.Event")


class HoldStatus(StrEnum):
    PENDING = "pending"
    CAPTURED = "captured"
    VOIDED = "voided"
    EXPIRED = "expired"


@dataclass(frozen=True, slots=True)
class PendingHold:
    """Money reserved on an account: it lowers the available balance, not the balance.

    `review`: set when compliance screening turned the command into this hold (the rule,
    the configuration's sha256, the figures compared); only a release or a reject may end
    such a hold, or its expiry."""

    hold_id: str
    amount_minor: int
    currency: str
    to_account_id: str | None
    expires_at: datetime
    reference: str | None
    review: dict[str, Any] | None

    def is_due(self, now: datetime) -> bool:
        return now >= self.expires_at


@dataclass(frozen=True, slots=True)
class Original:
    """A transaction to reverse, as the store recorded it: the account it debited and the
    account it credited (either may be absent: a deposit debits none), and its amount."""

    transaction_id: str
    amount_minor: int
    currency: str
    debited: UUID | None
    credited: UUID | None

    def __post_init__(self) -> None:
        assert self.amount_minor > 0, self
        assert self.debited or self.credited, self


class Account(ChainedAggregate):
    """A customer account in one currency, with an optional overdraft."""

    class Event(ChainedAggregate.Event):
        """Every account event says who, why, and how it chains to the one before."""

    class AccountOpened(Event, Aggregate.Created):
        PAYLOAD = ("owner", "branch", "currency", "overdraft_limit_minor")

        owner: str
        branch: str
        currency: str
        overdraft_limit_minor: int

    class Movement(Event):
        """A change of balance; `balance_after_minor` lets an auditor check the sum."""

        amount_minor: int
        currency: str
        reference: str | None
        balance_after_minor: int

        def apply(self, aggregate: Any) -> None:
            super().apply(aggregate)
            aggregate.balance_minor = self.balance_after_minor
            aggregate.last_transaction_at = self.timestamp

    class Deposited(Movement):
        PAYLOAD = ("amount_minor", "currency", "channel", "reference", "balance_after_minor")
        channel: str

    class Withdrawn(Movement):
        PAYLOAD = ("amount_minor", "currency", "channel", "reference", "balance_after_minor")
        channel: str

    class TransferredOut(Movement):
        PAYLOAD = (
            "amount_minor",
            "currency",
            "counterparty_account_id",
            "reference",
            "balance_after_minor",
        )
        counterparty_account_id: str

    class TransferredIn(Movement):
        PAYLOAD = (
            "amount_minor",
            "currency",
            "counterparty_account_id",
            "reference",
            "balance_after_minor",
        )
        counterparty_account_id: str

    class ReversalDebited(Movement):
        """Money taken back from the account an original transaction credited."""

        PAYLOAD = (
            "amount_minor",
            "currency",
            "reverses",
            "counterparty_account_id",
            "reason",
            "reference",
            "balance_after_minor",
            "reversed_total_minor",
        )
        reverses: str
        counterparty_account_id: str | None
        reason: str
        # All reversed of `reverses` so far, this reversal included.
        reversed_total_minor: int

        def apply(self, aggregate: Any) -> None:
            super().apply(aggregate)
            aggregate.reversed_minor[self.reverses] = self.reversed_total_minor

    class ReversalCredited(ReversalDebited):
        """Money given back to the account an original transaction debited."""

    class HoldPlaced(Event):
        PAYLOAD = (
            "hold_id",
            "amount_minor",
            "currency",
            "to_account_id",
            "expires_at",
            "reference",
            "review",
            "held_after_minor",
        )
        hold_id: str
        amount_minor: int
        currency: str
        to_account_id: str | None
        expires_at: str
        reference: str | None
        review: dict[str, Any] | None
        # What the account's pending holds reserve after this event (as balance_after_minor
        # for movements): a read model sets it, it never sums.
        held_after_minor: int

        def apply(self, aggregate: Any) -> None:
            super().apply(aggregate)
            aggregate.holds[self.hold_id] = PendingHold(
                hold_id=self.hold_id,
                amount_minor=self.amount_minor,
                currency=self.currency,
                to_account_id=self.to_account_id,
                expires_at=datetime.fromisoformat(self.expires_at),
                reference=self.reference,
                review=self.review,
            )
            aggregate.held_minor = self.held_after_minor

    class HoldEnded(Event):
        """A pending hold no longer reserves money: captured, voided or expired."""

        PAYLOAD: ClassVar[tuple[str, ...]] = (
            "hold_id",
            "currency",
            "released_minor",
            "held_after_minor",
            "review_outcome",
        )
        hold_id: str
        currency: str
        released_minor: int
        held_after_minor: int
        # A hold screening made: how its review ended (released, rejected, expired).
        review_outcome: str | None

        def apply(self, aggregate: Any) -> None:
            super().apply(aggregate)
            del aggregate.holds[self.hold_id]
            aggregate.held_minor = self.held_after_minor

    class HoldCaptured(HoldEnded):
        """The captured part moves in the movement events that follow, under the
        capture's transaction id; the rest (`released_minor`) is available again."""

        PAYLOAD = (
            "hold_id",
            "amount_minor",
            "currency",
            "released_minor",
            "held_after_minor",
            "review_outcome",
        )
        amount_minor: int

    class HoldVoided(HoldEnded):
        PAYLOAD = (
            "hold_id",
            "reason",
            "currency",
            "released_minor",
            "held_after_minor",
            "review_outcome",
        )
        reason: str

    class HoldExpired(HoldEnded):
        def apply(self, aggregate: Any) -> None:
            super().apply(aggregate)
            aggregate.expired_holds.add(self.hold_id)

    class StatusChanged(Event):
        STATUS: ClassVar[AccountStatus] = AccountStatus.OPEN
        PAYLOAD = ("reason",)
        reason: str

        def apply(self, aggregate: Any) -> None:
            super().apply(aggregate)
            aggregate.status = self.STATUS

    class Frozen(StatusChanged):
        STATUS = AccountStatus.FROZEN

    class Unfrozen(StatusChanged):
        STATUS = AccountStatus.OPEN

    class Closed(StatusChanged):
        STATUS = AccountStatus.CLOSED

    def __init__(
        self,
        owner: str,
        branch: str,
        currency: str,
        overdraft_limit_minor: int,
        hash: str,
    ) -> None:
        self.owner = owner
        self.branch = branch
        self.currency = currency
        self.overdraft_limit_minor = overdraft_limit_minor
        self.balance_minor = 0
        self.status = AccountStatus.OPEN
        self.last_hash = hash
        self.last_transaction_at: Any = None
        # Pending holds by id, and their sum; holds that ended by expiry (so a late
        # capture is told `hold_expired`, not just `hold_not_pending`).
        self.holds: dict[str, PendingHold] = {}
        self.held_minor = 0
        self.expired_holds: set[str] = set()
        # Amounts reversed so far, by the reversed transaction's id.
        self.reversed_minor: dict[str, int] = {}

    # Commands ---------------------------------------------------------------------------

    @classmethod
    def open(
        cls,
        account_id: UUID,
        owner: str,
        branch: str,
        currency: str,
        overdraft_limit_minor: int,
        stamp: Stamp,
        *,
        overdraft_max_minor: int,
    ) -> Account:
        """`overdraft_max_minor`: the operator's ceiling in this currency (the domain reads
        no settings), so no balance can go below it and the read models can hold it."""
        exponent_of(currency)  # refuses unknown currencies
        assert overdraft_max_minor >= 0, overdraft_max_minor
        _check_owner(owner)
        if not BRANCH_PATTERN.fullmatch(branch):
            raise ValidationFailed("branch must be 1 to 16 letters or digits", "body.branch")
        if overdraft_limit_minor < 0:
            raise InvalidAmount("overdraft limit must not be negative")
        if overdraft_limit_minor > overdraft_max_minor:
            raise InvalidAmount(
                f"overdraft limit {format_amount(overdraft_limit_minor, currency)} {currency} "
                f"exceeds the ceiling of {format_amount(overdraft_max_minor, currency)} {currency}"
            )
        fields: dict[str, Any] = {
            "owner": owner,
            "branch": branch,
            "currency": currency,
            "overdraft_limit_minor": overdraft_limit_minor,
        }
        return cls._start(cls.AccountOpened, account_id, fields, stamp)

    def deposit(
        self,
        money: Money,
        channel: str,
        reference: str | None,
        stamp: Stamp,
        *,
        balance_max_minor: int,
    ) -> None:
        self.check_can_receive(money, balance_max_minor=balance_max_minor)
        assert channel in CHANNELS, channel
        self._trigger(
            self.Deposited,
            stamp,
            amount_minor=money.amount_minor,
            currency=money.currency,
            channel=channel,
            reference=reference,
            balance_after_minor=self.balance_minor + money.amount_minor,
        )

    def withdraw(self, money: Money, channel: str, reference: str | None, stamp: Stamp) -> None:
        self._check_movement(money)
        self._check_funds(money)
        assert channel in CHANNELS, channel
        self._trigger(
            self.Withdrawn,
            stamp,
            amount_minor=money.amount_minor,
            currency=money.currency,
            channel=channel,
            reference=reference,
            balance_after_minor=self.balance_minor - money.amount_minor,
        )

    def check_can_move(self, money: Money) -> None:
        """Refuses a closed or frozen account, another currency, a non-positive amount."""
        self._check_movement(money)

    def check_open(self) -> None:
        """Refuses a closed account (a frozen one may be unfrozen)."""
        self._check_not_closed()

    def check_can_send(self, money: Money) -> None:
        self._check_movement(money)
        self._check_funds(money)

    def check_can_receive(self, money: Money, *, balance_max_minor: int) -> None:
        """`balance_max_minor`: the operator's ceiling in this currency, passed in (the
        domain reads no settings); it keeps every balance inside what the read models hold."""
        self._check_movement(money)
        self._check_ceiling(money, balance_max_minor)

    def transfer_out(
        self, money: Money, to_account_id: UUID, reference: str | None, stamp: Stamp
    ) -> None:
        self.check_can_send(money)
        self._trigger(
            self.TransferredOut,
            stamp,
            amount_minor=money.amount_minor,
            currency=money.currency,
            counterparty_account_id=str(to_account_id),
            reference=reference,
            balance_after_minor=self.balance_minor - money.amount_minor,
        )

    def transfer_in(
        self,
        money: Money,
        from_account_id: UUID,
        reference: str | None,
        stamp: Stamp,
        *,
        balance_max_minor: int,
    ) -> None:
        self.check_can_receive(money, balance_max_minor=balance_max_minor)
        self._trigger(
            self.TransferredIn,
            stamp,
            amount_minor=money.amount_minor,
            currency=money.currency,
            counterparty_account_id=str(from_account_id),
            reference=reference,
            balance_after_minor=self.balance_minor + money.amount_minor,
        )

    def freeze(self, reason: str, stamp: Stamp) -> None:
        self._check_not_closed()
        if self.status is AccountStatus.FROZEN:
            raise AccountFrozen(f"account {self.id} is already frozen")
        self._trigger(self.Frozen, stamp, reason=reason)

    def unfreeze(self, reason: str, stamp: Stamp) -> None:
        self._check_not_closed()
        if self.status is not AccountStatus.FROZEN:
            raise AccountNotFrozen(f"account {self.id} is not frozen")
        self._trigger(self.Unfrozen, stamp, reason=reason)

    def close(self, reason: str, stamp: Stamp) -> None:
        self._check_not_closed()
        if self.holds:
            raise AccountHasHolds(f"account {self.id} has {len(self.holds)} pending holds")
        if self.balance_minor != 0:
            balance = format_amount(self.balance_minor, self.currency)
            raise AccountNotEmpty(f"account {self.id} holds {balance} {self.currency}")
        self._trigger(self.Closed, stamp, reason=reason)

    # Queries ------------------------------------------------------------------------------

    @property
    def available_minor(self) -> int:
        """Balance plus overdraft limit, less what pending holds reserve."""
        return self.balance_minor + self.overdraft_limit_minor - self.held_minor

    def pending_hold(self, hold_id: str) -> PendingHold:
        """The hold if pending; `hold_expired` or `hold_not_pending` otherwise (the caller
        knows the hold exists: its placing is stored)."""
        hold = self.holds.get(hold_id)
        if hold is not None:
            return hold
        if hold_id in self.expired_holds:
            raise HoldExpired(f"hold {hold_id} expired")
        raise HoldNotPending(f"hold {hold_id} is not pending")

    def due_holds(self, now: datetime) -> list[PendingHold]:
        return [hold for hold in self.holds.values() if hold.is_due(now)]

    def next_expiry(self) -> datetime | None:
        return min((hold.expires_at for hold in self.holds.values()), default=None)

    # Holds --------------------------------------------------------------------------------

    def place_hold(
        self,
        hold_id: UUID,
        money: Money,
        to_account_id: UUID | None,
        expires_at: datetime,
        reference: str | None,
        stamp: Stamp,
        *,
        review: dict[str, Any] | None = None,
    ) -> None:
        """Reserve `money` until `expires_at`; a capture later moves it (to `to_account_id`,
        or out as a card withdrawal without one)."""
        self._check_movement(money)
        if str(hold_id) in self.holds:
            raise HoldNotPending(f"hold {hold_id} is already placed")
        if expires_at <= stamp.timestamp:
            raise ValidationFailed("a hold must expire after it is placed", "body.expires_in_s")
        self._check_funds(money)
        self._trigger(
            self.HoldPlaced,
            stamp,
            hold_id=str(hold_id),
            amount_minor=money.amount_minor,
            currency=money.currency,
            to_account_id=None if to_account_id is None else str(to_account_id),
            expires_at=format_timestamp(expires_at),
            reference=reference,
            review=review,
            held_after_minor=self.held_minor + money.amount_minor,
        )

    def void_hold(
        self, hold_id: str, reason: str, stamp: Stamp, *, review_outcome: str | None = None
    ) -> None:
        """End a pending hold without moving money. `review_outcome`: how compliance ended a
        hold screening made (rejected, or released as the hold it was asked to be), the
        only void such a hold takes."""
        hold = self._hold_for(hold_id, review=review_outcome is not None)
        self._trigger(
            self.HoldVoided,
            stamp,
            hold_id=hold_id,
            reason=reason,
            currency=hold.currency,
            released_minor=hold.amount_minor,
            held_after_minor=self.held_minor - hold.amount_minor,
            review_outcome=review_outcome,
        )

    def expire_hold(self, hold_id: str, stamp: Stamp) -> bool:
        """Expire the hold if it is pending and due at the stamp's time; else change nothing
        (another sweep, a capture or a void got there first). Whether it expired."""
        hold = self.holds.get(hold_id)
        if hold is None or not hold.is_due(stamp.timestamp):
            return False
        self._trigger(
            self.HoldExpired,
            stamp,
            hold_id=hold_id,
            currency=hold.currency,
            released_minor=hold.amount_minor,
            held_after_minor=self.held_minor - hold.amount_minor,
            review_outcome=None if hold.review is None else "expired",
        )
        return True

    def _hold_for(self, hold_id: str, *, review: bool) -> PendingHold:
        hold = self.pending_hold(hold_id)
        if (hold.review is not None) != review:
            if hold.review is not None:
                raise HoldUnderReview(
                    f"hold {hold_id} is held for compliance review: only a release or a "
                    "reject ends it"
                )
            raise HoldNotPending(f"hold {hold_id} is not held for review")
        return hold

    # Guards -------------------------------------------------------------------------------

    def _check_not_closed(self) -> None:
        if self.status is AccountStatus.CLOSED:
            raise AccountClosed(f"account {self.id} is closed")

    def _check_movement(self, money: Money) -> None:
        self._check_not_closed()
        if self.status is AccountStatus.FROZEN:
            raise AccountFrozen(f"account {self.id} is frozen")
        if money.currency != self.currency:
            raise CurrencyMismatch(f"account {self.id} holds {self.currency}, not {money.currency}")
        if money.amount_minor <= 0:
            raise InvalidAmount("amount must be greater than zero")

    def _check_funds(self, money: Money) -> None:
        if money.amount_minor > self.available_minor:
            raise InsufficientFunds(
                f"account {self.id} has {format_amount(self.available_minor, self.currency)} "
                f"{self.currency} available, {money} requested"
            )

    def _check_ceiling(self, money: Money, balance_max_minor: int) -> None:
        assert balance_max_minor > 0, balance_max_minor
        if self.balance_minor + money.amount_minor > balance_max_minor:
            raise BalanceLimitExceeded(
                f"account {self.id} holds {format_amount(self.balance_minor, self.currency)} "
                f"{self.currency}; {money} more would exceed the ceiling of "
                f"{format_amount(balance_max_minor, self.currency)} {self.currency}"
            )


def _check_owner(owner: str) -> None:
    """The edge normalises an owner's name before it decides; the aggregate refuses one
    that is not already as the record keeps it, so no caller can put into the permanent
    record a name that a consumer downstream could not store or show."""
    try:
        kept = acceptable_text(owner, chars_max=OWNER_CHARS_MAX)
    except TextRefused as refused:
        raise ValidationFailed(f"owner {refused}", "body.owner") from None
    if kept != owner:
        raise ValidationFailed("owner must be normalised (NFC) and trimmed", "body.owner")
