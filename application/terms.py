"""What every decision is bound by (the operator's ceilings, the key that seals events,
the screening lists) and the names of the records a review hold stores: shared by the
judging (`application.decide`), the ledger that feeds it, and the look-ups of held and
released transactions."""

from __future__ import annotations

from dataclasses import dataclass
from uuid import UUID

from domain.ids import derived_id
from domain.integrity import DEFAULT_MAC_KID
from domain.money import minor_units
from domain.screening import Screening

HELD_FOR_REVIEW = "held_for_review"
# The kind of the record stored under a review hold's id.
REVIEW_HOLD = "review_hold"
# The kind of the record a release stores under `released_id(T)`: what posted under T
# (the 202 stored under T itself stays as it was: replies never change).
RELEASED = "released"


def released_id(transaction_id: UUID | str) -> UUID:
    return derived_id(f"{transaction_id}:released")


@dataclass(frozen=True, slots=True)
class MoneyCeilings:
    """The operator's ceilings in major units of any currency (from the settings). The
    domain reads no settings: each command gets them as arguments, in minor units."""

    balance_max_major: int
    overdraft_max_major: int
    teller_overdraft_max_major: int

    def __post_init__(self) -> None:
        assert self.balance_max_major > 0, self.balance_max_major
        assert 0 <= self.teller_overdraft_max_major <= self.overdraft_max_major

    def balance_max_minor(self, currency: str) -> int:
        return minor_units(self.balance_max_major, currency)

    def overdraft_max_minor(self, currency: str) -> int:
        return minor_units(self.overdraft_max_major, currency)

    def teller_overdraft_max_minor(self, currency: str) -> int:
        return minor_units(self.teller_overdraft_max_major, currency)


@dataclass(frozen=True, slots=True)
class Terms:
    """What every decision is bound by: the ceilings, and the key that seals events."""

    ceilings: MoneyCeilings
    mac_key: bytes
    mac_kid: str = DEFAULT_MAC_KID
    screening: Screening | None = None
