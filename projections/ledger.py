"""The ledger's projections: each a pure function of one event to read-model rows.

`balances` keeps the accounts read model, `statements` one line per movement, `kpis`
hourly and per-branch totals. Every projection sees every event; those it does not
care about give no rows (their notification ids are still tracked).
"""

from __future__ import annotations

from collections.abc import Callable

from projections import compliance
from projections.envelope import Envelope
from projections.rows import (
    AccountOpenedRow,
    BalanceChanged,
    BranchKnown,
    KpiIncrement,
    Row,
    StatementLine,
    StatusChanged,
)

MOVEMENTS = {
    "Deposited": ("credit", "deposit"),
    "Withdrawn": ("debit", "withdrawal"),
    "TransferredIn": ("credit", "transfer"),
    "TransferredOut": ("debit", "transfer"),
}
STATUSES = {"Frozen": "frozen", "Unfrozen": "open", "Closed": "closed"}
KPI_METRICS = {"Deposited": "deposits", "Withdrawn": "withdrawals", "TransferredOut": "transfers"}

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
    return []


def statements(event: Envelope) -> list[Row]:
    if not event.is_account_event or event.event_type not in MOVEMENTS:
        return []
    direction, kind = MOVEMENTS[event.event_type]
    payload = event.payload
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
        )
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
    if metric is None:
        return []
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
