"""The alerts projection's pure core: one account event through the rules. Shared by the
alerts worker, the evidence route (which re-runs it from the event store) and back-testing."""

from __future__ import annotations

from dataclasses import replace

from domain.rules.config import RulesConfig
from domain.rules.engine import Hit, evaluate, opened
from domain.rules.window import AccountWindow, Movement
from domain.screening import SCREENING_SEVERITIES
from projections.envelope import Envelope

MOVEMENT_KINDS = {
    "Deposited": "deposit",
    "Withdrawn": "withdrawal",
    "TransferredIn": "transfer_in",
    "TransferredOut": "transfer_out",
}


def movement_of(event: Envelope) -> Movement | None:
    kind = MOVEMENT_KINDS.get(event.event_type)
    if kind is None or not event.is_account_event:
        return None
    payload = event.payload
    return Movement(
        notification_id=event.notification_id,
        transaction_id=event.transaction_id,
        at=event.timestamp,
        kind=kind,
        direction="credit" if kind in ("deposit", "transfer_in") else "debit",
        amount_minor=payload["amount_minor"],
        currency=payload["currency"],
        channel=payload.get("channel"),
        counterparty_account_id=payload.get("counterparty_account_id"),
    )


def screening_hit(event: Envelope) -> Hit:
    """The alert of a command screening held: its verdict is in the hold event (the rule,
    the configuration's sha256, the figures compared), recorded when it was made."""
    review = event.payload["review"]
    figures = ", ".join(f"{k}={v}" for k, v in sorted(review["figures"].items()))
    return Hit(
        rule=review["rule"],
        severity=SCREENING_SEVERITIES[review["rule"]],
        account_id=str(event.aggregate_id),
        evidence=(),
        explanation=(
            f"held for review before posting ({figures}; rules {review['config_sha256'][:12]})"
        ),
        raised_at=event.timestamp,
        notification_id=event.notification_id,
        alert_id=review["alert_id"],
        held_transaction_id=review["transaction_id"],
    )


def step(
    config: RulesConfig, window: AccountWindow, event: Envelope, watchlisted: bool
) -> tuple[list[Hit], AccountWindow]:
    """One account event through the rules: the pure core shared by the projection,
    the evidence route and back-testing."""
    if event.event_type == "AccountOpened":
        return [], opened(window, event.timestamp, event.payload["branch"], event.version)
    if event.event_type == "HoldPlaced" and event.payload["review"] is not None:
        return [screening_hit(event)], replace(window, version=event.version)
    movement = movement_of(event)
    if movement is None:
        return [], replace(window, version=event.version)
    return evaluate(config, window, movement, event.version, counterparty_watchlisted=watchlisted)
