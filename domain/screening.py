"""Screening in the money path: what stops a transfer, a withdrawal or a hold before it
posts, judged on what the command side holds (the command, the accounts, the watchlist).

Pure: the configuration, its hash and the watchlisted accounts come in as arguments, and
the verdict names the rule, the configuration's sha256 and the figures it compared, so
the decision recorded in the hold event can be re-run and reproduced.
"""

from __future__ import annotations

from collections.abc import Set as AbstractSet
from dataclasses import dataclass
from typing import Any
from uuid import UUID

from domain.money import Money, format_amount
from domain.rules.config import RulesConfig

SCREENING_SEVERITIES = {"screening_amount": "high", "screening_watchlist": "critical"}


@dataclass(frozen=True, slots=True)
class Screening:
    """The `[screening]` section in force, its configuration's sha256, and how long a
    held command waits for compliance before it expires."""

    config: RulesConfig
    config_sha256: str
    review_timeout_s: int

    @property
    def checks_watchlist(self) -> bool:
        return self.config.screening_watchlisted


@dataclass(frozen=True, slots=True)
class Verdict:
    rule: str
    figures: dict[str, Any]
    explanation: str

    @property
    def severity(self) -> str:
        return SCREENING_SEVERITIES[self.rule]


def screen(
    screening: Screening,
    money: Money,
    debited: UUID,
    credited: UUID | None,
    watchlisted: AbstractSet[UUID],
) -> Verdict | None:
    """The verdict on a movement of `money` out of `debited` (into `credited`, if any):
    the watchlist first (the graver rule), then the amount; None lets it post."""
    config = screening.config
    if config.screening_watchlisted:
        for side, account_id in (("debited", debited), ("credited", credited)):
            if account_id is not None and account_id in watchlisted:
                return Verdict(
                    "screening_watchlist",
                    {"watchlisted_account_id": str(account_id), "side": side},
                    f"the {side} account {account_id} is on the watchlist",
                )
    threshold = config.minor(config.screening_hold_at_or_above, money.currency)
    if money.amount_minor >= threshold:
        return Verdict(
            "screening_amount",
            {
                "amount_minor": money.amount_minor,
                "threshold_minor": threshold,
                "currency": money.currency,
            },
            f"{money} is at or above the screening threshold of "
            f"{format_amount(threshold, money.currency)} {money.currency}",
        )
    return None
