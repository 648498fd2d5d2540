"""Compliance's projections: `cases` (each case and its history) and `watchlist`.

Pure functions of one event, like the ledger's. Neither touches alerts: an alert's
status is derived at query time from its case (closed case, closed alert).
"""

from __future__ import annotations

from datetime import datetime
from uuid import UUID

from projections.envelope import Envelope
from projections.rows import (
    AlertSuppressedRow,
    CaseEventRow,
    Row,
    SuppressionChanged,
    WatchlistChanged,
)

CASE = "case"
WATCHLIST = "watchlist"
SUPPRESSION = "suppression"
ROUTING = "routing"
# The state each case event leads to (domain/case.py's workflow); others leave it as it is.
CASE_STATUSES = {
    "CaseOpened": "open",
    "CaseAcknowledged": "acknowledged",
    "CaseEscalated": "escalated",
    "CaseClosed": "closed",
}
WATCHLIST_LISTED = {
    "WatchlistEntryAdded": True,
    "WatchlistEntryRestored": True,
    "WatchlistEntryRemoved": False,
}


def cases(event: Envelope) -> list[Row]:
    """Case steps; and, for the alerts' status, suppressions and the alerts they held back."""
    if event.aggregate_type == SUPPRESSION:
        return [_suppression(event)]
    if event.aggregate_type == ROUTING and event.event_type == "AlertSuppressed":
        payload = event.payload
        return [
            AlertSuppressedRow(
                alert_id=UUID(payload["alert_id"]),
                suppression_id=UUID(payload["suppression_id"]),
                account_id=UUID(payload["account_id"]),
                at=event.timestamp,
                notification_id=event.notification_id,
            )
        ]
    if event.aggregate_type != CASE:
        return []
    details = {k: v for k, v in event.payload.items() if k != "note"}
    return [
        CaseEventRow(
            case_id=event.aggregate_id,
            version=event.version,
            event_type=event.event_type,
            status=CASE_STATUSES.get(event.event_type),
            actor_subject=event.actor["subject"],
            actor_role=event.actor["role"],
            note=event.payload.get("note"),
            details=details,
            at=event.timestamp,
            notification_id=event.notification_id,
        )
    ]


def _suppression(event: Envelope) -> SuppressionChanged:
    payload = event.payload
    created = event.event_type == "SuppressionCreated"
    return SuppressionChanged(
        suppression_id=event.aggregate_id,
        account_id=UUID(payload["account_id"]),
        rule=payload["rule"] if created else None,
        until=datetime.fromisoformat(payload["until"]) if created else None,
        reason=payload["reason"],
        revoked=not created,
        actor_subject=event.actor["subject"],
        at=event.timestamp,
        version=event.version,
        notification_id=event.notification_id,
    )


def watchlist(event: Envelope) -> list[Row]:
    if event.aggregate_type != WATCHLIST or event.event_type not in WATCHLIST_LISTED:
        return []
    return [
        WatchlistChanged(
            account_id=UUID(event.payload["account_id"]),
            listed=WATCHLIST_LISTED[event.event_type],
            reason=event.payload["reason"],
            version=event.version,
            at=event.timestamp,
            actor_subject=event.actor["subject"],
            actor_role=event.actor["role"],
            notification_id=event.notification_id,
        )
    ]
