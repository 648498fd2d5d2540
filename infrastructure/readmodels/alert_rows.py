"""Alerts as rows: the one form every alert takes (a rule's, or the quarantine's
`quarantined_event`), written to `alerts` and, once each, to the outbox that
`vigil relay` publishes to `vigil.alerts`, in the caller's transaction and schema."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Final
from uuid import UUID

import orjson
from psycopg import AsyncConnection
from psycopg.types.json import Jsonb

from domain.ids import alert_id, case_id_for
from domain.integrity import format_timestamp
from infrastructure.readmodels.schema import OUTBOX_CHANNEL


def _jsonb(value: Any) -> Jsonb:
    return Jsonb(value, dumps=orjson.dumps)


def alert_record(
    *,
    rule: str,
    severity: str,
    account_id: str,
    notification_id: int,
    transaction_ids: list[str],
    positions: list[int],
    explanation: str,
    raised_at: datetime,
    branch: str | None,
    chain_head: str | None,
    version: int,
    identifier: UUID | None = None,
) -> dict[str, Any]:
    """Any alert as the contract shows it, a rule's or not (`quarantined_event`).
    `identifier`: an alert named otherwise than by its rule, account and event
    (screening's, named after the hold)."""
    identifier = identifier or alert_id(rule, account_id, notification_id)
    return {
        "alert_id": str(identifier),
        "rule": rule,
        "severity": severity,
        "account_id": account_id,
        "branch": branch,
        "transaction_ids": transaction_ids,
        "positions": positions,
        "explanation": explanation,
        "raised_at": format_timestamp(raised_at),
        "scored_at_position": notification_id,
        "chain_head": chain_head,
        "status": "open",
        "case_id": str(case_id_for(identifier)),
        "rule_config_version": version,
    }


# Only the alerts not there yet get an outbox row, in the order they were raised.
RECORD_ALERTS: Final = """
WITH recorded AS (
    INSERT INTO alerts (alert_id, rule, severity, account_id, branch, transaction_ids,
        positions, explanation, raised_at, notification_id, chain_head, rule_config_version,
        case_id)
    SELECT * FROM unnest(%(alert_id)b::uuid[], %(rule)b::text[], %(severity)b::text[],
        %(account_id)b::uuid[], %(branch)b::text[], %(transaction_ids)b::jsonb[],
        %(positions)b::jsonb[], %(explanation)b::text[], %(raised_at)b::timestamptz[],
        %(notification_id)b::bigint[], %(chain_head)b::text[], %(version)b::int[],
        %(case_id)b::uuid[])
    ON CONFLICT (alert_id) DO NOTHING
    RETURNING alert_id
)
INSERT INTO alerts_outbox (alert_id, account_id, payload)
SELECT o.alert_id, o.account_id, o.payload
FROM unnest(%(alert_id)b::uuid[], %(account_id)b::uuid[], %(payload)b::jsonb[])
    WITH ORDINALITY AS o(alert_id, account_id, payload, position)
JOIN recorded USING (alert_id)
ORDER BY o.position
"""


async def insert_alerts(
    conn: AsyncConnection[Any], alerts: list[tuple[dict[str, Any], datetime]]
) -> None:
    """Alerts (`alert_record`'s form, with the time they were raised) into `alerts`, and
    those not there before into the outbox, in the transaction's schema."""
    if not alerts:
        return
    bodies = [body for body, _ in alerts]
    await conn.execute(
        RECORD_ALERTS,
        {
            "alert_id": [UUID(b["alert_id"]) for b in bodies],
            "rule": [b["rule"] for b in bodies],
            "severity": [b["severity"] for b in bodies],
            "account_id": [b["account_id"] for b in bodies],
            "branch": [b["branch"] for b in bodies],
            "transaction_ids": [_jsonb(b["transaction_ids"]) for b in bodies],
            "positions": [_jsonb(b["positions"]) for b in bodies],
            "explanation": [b["explanation"] for b in bodies],
            "raised_at": [raised_at for _, raised_at in alerts],
            "notification_id": [b["scored_at_position"] for b in bodies],
            "chain_head": [b["chain_head"] for b in bodies],
            "version": [b["rule_config_version"] for b in bodies],
            "case_id": [UUID(b["case_id"]) for b in bodies],
            "payload": [_jsonb(b) for b in bodies],
        },
    )


async def notify_outbox(conn: AsyncConnection[Any]) -> None:
    """Wake the outbox relay once the transaction commits."""
    await conn.execute("SELECT pg_notify(%s, '')", (OUTBOX_CHANNEL,))
