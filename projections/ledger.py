"""The ledger's projections: each a pure function of one event to read-model rows.

`balances` keeps the accounts read model, `statements` one line per movement, `kpis`
hourly and per-branch totals. Every projection sees every event; those it does not
care about give no rows (their notification ids are still tracked).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import datetime
from uuid import UUID

from projections import compliance
from projections.envelope import Envelope
from projections.rows import (
    AccountOpenedRow,
    BalanceChanged,
    BranchKnown,
    HeldChanged,
    HoldEndedRow,
    HoldPlacedRow,
    KpiIncrement,
    ReversedAmount,
    Row,
    StatementLine,
    StatusChanged,
)

MOVEMENTS = {
    "Deposited": ("credit", "deposit"),
    "Withdrawn": ("debit", "withdrawal"),
    "TransferredIn": ("credit", "transfer"),
    "TransferredOut": ("debit", "transfer"),
    "ReversalDebited": ("debit", "reversal"),
    "ReversalCredited": ("credit", "reversal"),
}
REVERSALS = ("ReversalDebited", "ReversalCredited")
STATUSES = {"Frozen": "frozen", "Unfrozen": "open", "Closed": "closed"}
HOLD_ENDINGS = {"HoldCaptured": "captured", "HoldVoided": "voided", "HoldExpired": "expired"}
KPI_METRICS = {
    "Deposited": "deposits",
    "Withdrawn": "withdrawals",
    "TransferredOut": "transfers",
    "HoldPlaced": "holds_placed",
    "HoldCaptured": "holds_captured",
    "HoldVoided": "holds_voided",
    "HoldExpired": "holds_expired",
}

Projector = Callable[[Envelope], list[Row]]


def balances(event: Envelope) -> list[Row]:
    if not event.is_account_event:
        return []
    payload = event.payload
    if event.event_type == "AccountOpened":
        return [
            AccountOpenedRow(
                account_id=event.aggregate_id,
                owner=payload["owner"],
                branch=payload["branch"],
                currency=payload["currency"],
                overdraft_limit_minor=payload["overdraft_limit_minor"],
                version=event.version,
                at=event.timestamp,
                notification_id=event.notification_id,
            )
        ]
    if event.event_type in MOVEMENTS:
        return [
            BalanceChanged(
                event.aggregate_id,
                event.version,
                payload["balance_after_minor"],
                event.timestamp,
                event.notification_id,
            )
        ]
    if event.event_type in STATUSES:
        return [
            StatusChanged(
                event.aggregate_id,
                event.version,
                STATUSES[event.event_type],
                event.timestamp,
                event.notification_id,
            )
        ]
    if event.event_type == "HoldPlaced" or event.event_type in HOLD_ENDINGS:
        return [
            HeldChanged(
                event.aggregate_id,
                event.version,
                payload["held_after_minor"],
                event.timestamp,
                event.notification_id,
            ),
            _hold_row(event),
        ]
    return []


def _hold_row(event: Envelope) -> HoldPlacedRow | HoldEndedRow:
    payload = event.payload
    if event.event_type == "HoldPlaced":
        review = payload["review"]
        return HoldPlacedRow(
            hold_id=UUID(payload["hold_id"]),
            account_id=event.aggregate_id,
            to_account_id=payload["to_account_id"],
            amount_minor=payload["amount_minor"],
            currency=payload["currency"],
            reference=payload["reference"],
            review=None if review is None else json.dumps(review, sort_keys=True),
            expires_at=datetime.fromisoformat(payload["expires_at"]),
            placed_at=event.timestamp,
            version=event.version,
            notification_id=event.notification_id,
        )
    captured = event.event_type == "HoldCaptured"
    return HoldEndedRow(
        hold_id=UUID(payload["hold_id"]),
        status=HOLD_ENDINGS[event.event_type],
        ended_at=event.timestamp,
        captured_minor=payload["amount_minor"] if captured else None,
        capture_transaction_id=event.transaction_id if captured else None,
        end_reason=payload.get("reason"),
        version=event.version,
        notification_id=event.notification_id,
    )


def statements(event: Envelope) -> list[Row]:
    if not event.is_account_event or event.event_type not in MOVEMENTS:
        return []
    direction, kind = MOVEMENTS[event.event_type]
    payload = event.payload
    reverses = payload.get("reverses") if event.event_type in REVERSALS else None
    rows: list[Row] = []
    if reverses is not None:
        # The original's line on this account shows how much of it is reversed.
        rows.append(ReversedAmount(event.aggregate_id, reverses, payload["reversed_total_minor"]))
    return [
        StatementLine(
            account_id=event.aggregate_id,
            version=event.version,
            transaction_id=event.transaction_id,
            counterparty_account_id=payload.get("counterparty_account_id"),
            direction=direction,
            kind=kind,
            amount_minor=payload["amount_minor"],
            balance_after_minor=payload["balance_after_minor"],
            currency=payload["currency"],
            reference=payload.get("reference"),
            channel=payload.get("channel"),
            actor_subject=event.actor["subject"],
            actor_role=event.actor["role"],
            occurred_at=event.timestamp,
            correlation_id=event.correlation_id,
            notification_id=event.notification_id,
            reverses=reverses,
        ),
        *rows,
    ]


def kpis(event: Envelope) -> list[Row]:
    if not event.is_account_event:
        return []
    hour = event.timestamp.replace(minute=0, second=0, microsecond=0)
    payload = event.payload
    if event.event_type == "AccountOpened":
        return [
            BranchKnown(event.aggregate_id, payload["branch"]),
            KpiIncrement(hour, payload["currency"], "accounts_opened", 0, event.aggregate_id),
        ]
    metric = KPI_METRICS.get(event.event_type)
    if event.event_type == "HoldPlaced" and payload["review"] is not None:
        metric = "held_for_review"
    outcome = payload.get("review_outcome") if event.event_type in HOLD_ENDINGS else None
    if outcome is not None:
        metric = f"reviews_{outcome}"
    if event.event_type in REVERSALS and (
        # A reversal counts once: on its debit, or on its credit when nothing was debited.
        event.event_type == "ReversalDebited" or payload["counterparty_account_id"] is None
    ):
        metric = "reversals"
    if metric is None:
        return []
    if event.event_type in HOLD_ENDINGS and event.event_type != "HoldCaptured":
        # What a void or an expiry released.
        return [
            KpiIncrement(
                hour,
                payload["currency"],
                metric,
                payload["released_minor"],
                event.aggregate_id,
            )
        ]
    # A transfer counts once, on its outgoing side.
    return [
        KpiIncrement(hour, payload["currency"], metric, payload["amount_minor"], event.aggregate_id)
    ]


PROJECTORS: dict[str, Projector] = {
    "balances": balances,
    "statements": statements,
    "kpis": kpis,
    "cases": compliance.cases,
    "watchlist": compliance.watchlist,
}
