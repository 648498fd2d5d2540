"""The Account aggregate: public commands check, then trigger; events only assign."""

from __future__ import annotations

from enum import StrEnum
from typing import Any, ClassVar, TypeVar
from uuid import UUID

from eventsourcing.domain import Aggregate

from domain.chained import ChainedAggregate
from domain.errors import (
    AccountClosed,
    AccountFrozen,
    AccountNotEmpty,
    AccountNotFrozen,
    BalanceLimitExceeded,
    CurrencyMismatch,
    InsufficientFunds,
    InvalidAmount,
    ValidationFailed,
)
from domain.integrity import Stamp
from domain.money import Money, exponent_of, format_amount

CHANNELS = ("cash", "card", "wire")


class AccountStatus(StrEnum):
    OPEN = "open"
    FROZEN = "frozen"
    CLOSED = "closed"


TEvent = TypeVar("TEvent", bound="Account.Event")


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
        if self.balance_minor != 0:
            balance = format_amount(self.balance_minor, self.currency)
            raise AccountNotEmpty(f"account {self.id} holds {balance} {self.currency}")
        self._trigger(self.Closed, stamp, reason=reason)

    # Queries ------------------------------------------------------------------------------

    @property
    def available_minor(self) -> int:
        return self.balance_minor + self.overdraft_limit_minor

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
        if self.balance_minor - money.amount_minor < -self.overdraft_limit_minor:
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
