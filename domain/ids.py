"""Deterministic ids, so a retried request names the same transaction."""

from __future__ import annotations

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


def watchlist_entry_id(account_id: UUID | str) -> UUID:
    return uuid5(NAMESPACE, f"watchlist:{account_id}")


def derived_id(name: str) -> UUID:
    """An id named after another: `f"{hold_id}:capture"` is a capture's when the client
    gives none, so a retried capture names the same movement."""
    return uuid5(NAMESPACE, name)
