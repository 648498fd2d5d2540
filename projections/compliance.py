"""Compliance's projections: `cases` (each case and its history) and `watchlist`.

Pure functions of one event, like the ledger's. Neither touches alerts: an alert's
status is derived at query time from its case (closed case, closed alert).
"""

from __future__ import annotations

from uuid import UUID

from projections.envelope import Envelope
from projections.rows import CaseEventRow, Row, WatchlistChanged

CASE = "case"
WATCHLIST = "watchlist"
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
