"""Deterministic ids, so a retried request names the same transaction."""

from __future__ import annotations

from uuid import UUID, uuid5

# uuid5(NAMESPACE_DNS, "vigil.ledger"): fixed forever; clients may compute ids with it.
NAMESPACE = UUID("dfe5cc1e-19d8-5d0e-b581-34b49d199699")


def id_from_idempotency_key(subject: str, key: str) -> UUID:
    return uuid5(NAMESPACE, f"{subject}:{key}")


def batch_item_id(subject: str, key: str, index: int) -> UUID:
    return uuid5(NAMESPACE, f"{subject}:{key}:{index}")
