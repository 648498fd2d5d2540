"""Request bodies of the command API: strict, unknown fields refused, amounts as strings.

Turning a body into a command happens here, at the edge: amounts are parsed into
`Money` (raising `invalid_amount` / `unknown_currency`), ids are resolved from
`transaction_id` or `Idempotency-Key`.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal
from uuid import UUID, uuid4

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, TypeAdapter

from application.commands import Deposit, OpenAccount, PlaceHold, Transfer, Withdraw
from domain.errors import ValidationFailed
from domain.ids import batch_item_id, id_from_idempotency_key
from domain.money import exponent_of, parse_limit, parse_money
from interfaces.api.http.text import Branch, Owner, Reference, StatusReason

Amount = Annotated[str, StringConstraints(min_length=1, max_length=40)]
Currency = Annotated[str, StringConstraints(min_length=1, max_length=8)]
IdempotencyKey = Annotated[str, StringConstraints(min_length=1, max_length=200)]


class Body(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class OpenAccountIn(Body):
    owner: Owner
    branch: Branch
    currency: Currency
    overdraft_limit: Amount | None = None

    def to_command(self, account_id: UUID, overdraft_max_major: int) -> OpenAccount:
        overdraft_minor = 0
        if self.overdraft_limit is not None:
            overdraft_minor = parse_limit(
                self.overdraft_limit, self.currency, limit_max_major=overdraft_max_major
            ).amount_minor
        else:
            exponent_of(self.currency)
        return OpenAccount(account_id, self.owner, self.branch, self.currency, overdraft_minor)


class MovementIn(Body):
    amount: Amount
    currency: Currency
    transaction_id: UUID | None = None
    reference: Reference | None = None
    channel: Literal["cash", "card", "wire"] = "cash"


class TransferIn(Body):
    from_account_id: UUID
    to_account_id: UUID
    amount: Amount
    currency: Currency
    transaction_id: UUID | None = None
    reference: Reference | None = None

    def to_command(self, transaction_id: UUID, amount_max_major: int) -> Transfer:
        money = parse_money(self.amount, self.currency, amount_max_major=amount_max_major)
        return Transfer(
            self.from_account_id, self.to_account_id, money, transaction_id, self.reference
        )


class StatusChangeIn(Body):
    reason: StatusReason


HOLD_EXPIRES_IN_MAX_S = 2_592_000  # 30 days
HOLD_EXPIRES_IN_DEFAULT_S = 604_800  # 7 days


class HoldIn(Body):
    account_id: UUID
    amount: Amount
    currency: Currency
    to_account_id: UUID | None = None
    expires_in_s: int = Field(default=HOLD_EXPIRES_IN_DEFAULT_S, ge=1, le=HOLD_EXPIRES_IN_MAX_S)
    transaction_id: UUID | None = None
    reference: Reference | None = None

    def to_command(self, hold_id: UUID, amount_max_major: int) -> PlaceHold:
        money = parse_money(self.amount, self.currency, amount_max_major=amount_max_major)
        return PlaceHold(
            self.account_id,
            money,
            hold_id,
            self.expires_in_s,
            self.to_account_id,
            self.reference,
        )


class CaptureIn(Body):
    amount: Amount | None = None
    transaction_id: UUID | None = None


class VoidIn(Body):
    reason: StatusReason
    transaction_id: UUID | None = None


class ReversalIn(Body):
    reason: StatusReason
    amount: Amount | None = None
    transaction_id: UUID | None = None


class DepositItem(MovementIn):
    type: Literal["deposit"]
    account_id: UUID


class WithdrawalItem(MovementIn):
    type: Literal["withdrawal"]
    account_id: UUID


class TransferItem(TransferIn):
    type: Literal["transfer"]


BatchItem = Annotated[DepositItem | WithdrawalItem | TransferItem, Field(discriminator="type")]
batch_item_adapter: TypeAdapter[DepositItem | WithdrawalItem | TransferItem] = TypeAdapter(
    BatchItem,  # type: ignore[arg-type, unused-ignore]  # an Annotated union is valid here
)


class BatchIn(Body):
    # Items stay raw here so that one malformed item fails alone, as its own
    # `validation_error`, instead of failing the whole batch.
    items: list[dict[str, Any]] = Field(min_length=1)


def movement_command(
    kind: Literal["deposit", "withdrawal"],
    account_id: UUID,
    body: MovementIn,
    transaction_id: UUID,
    amount_max_major: int,
) -> Deposit | Withdraw:
    money = parse_money(body.amount, body.currency, amount_max_major=amount_max_major)
    command = Deposit if kind == "deposit" else Withdraw
    return command(account_id, money, transaction_id, body.channel, body.reference)


def resolve_id(given: UUID | None, idempotency_key: str | None, subject: str) -> UUID:
    """The client's id, or the one its Idempotency-Key names, or a new one."""
    from_key = id_from_idempotency_key(subject, idempotency_key) if idempotency_key else None
    if given is not None and from_key is not None and given != from_key:
        raise ValidationFailed(
            "transaction_id and Idempotency-Key name different ids; send one or make them agree",
            field="body.transaction_id",
        )
    return given or from_key or uuid4()


def resolve_item_id(
    given: UUID | None, idempotency_key: str | None, subject: str, index: int
) -> UUID:
    if given is not None:
        return given
    if idempotency_key:
        return batch_item_id(subject, idempotency_key, index)
    return uuid4()
