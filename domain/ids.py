"""Deterministic ids, so a retried request names the same transaction."""

from __future__ import annotations

from functools import lru_cache
from uuid import UUID, uuid5

# uuid5(NAMESPACE_DNS, "vigil.ledger"): fixed forever; clients may compute ids with it.
NAMESPACE = UUID("dfe5cc1e-19d8-5d0e-b581-34b49d199699")


def id_from_idempotency_key(subject: str, key: str) -> UUID:
    return uuid5(NAMESPACE, f"{subject}:{key}")


def batch_item_id(subject: str, key: str, index: int) -> UUID:
    return uuid5(NAMESPACE, f"{subject}:{key}:{index}")


def alert_id(rule: str, account_id: str, notification_id: int) -> UUID:
    """The API contract: named by the rule, the account and the event that completed the pattern."""
    return uuid5(NAMESPACE, f"{rule}:{account_id}:{notification_id}")


def case_id_for(alert_id: UUID | str) -> UUID:
    return uuid5(NAMESPACE, str(alert_id))


# Screening asks for the entry of both accounts of every transfer and withdrawal, in the
# command API and again in the alerts projection: remembered, an id costs a lookup instead
# of a SHA-1 (5.0 → 0.2 µs). About 260 bytes each, so at most about 13 MiB.
WATCHLIST_IDS_CACHED = 50_000


@lru_cache(maxsize=WATCHLIST_IDS_CACHED)
def watchlist_entry_id(account_id: UUID | str) -> UUID:
    return uuid5(NAMESPACE, f"watchlist:{account_id}")


def derived_id(name: str) -> UUID:
    """An id named after another: `f"{hold_id}:capture"` is a capture's when the client
    gives none, so a retried capture names the same movement."""
    return uuid5(NAMESPACE, name)
