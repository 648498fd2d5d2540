"""An alert's evidence, rebuilt from the event store alone and re-scored.

The alerts projection scored the account's events one by one with a window it kept in
PostgreSQL. Here the same window is rebuilt from nothing: the account's stored events up
to the one that completed the pattern, decoded by the ledger's own mapper, go through the
same pure `step` with the configuration version the alert names and the watchlist as it
was at each event. If the re-run hit has the alert's positions and explanation, the
decision is reproduced; the read model's copy of the window is never consulted.

Shared by the evidence route and back-testing; synchronous (psycopg) so callers run it in
a worker thread.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping
from typing import Any, Final, cast
from uuid import UUID

import structlog
from eventsourcing.persistence import InterfaceError, OperationalError, StoredEvent
from psycopg import Connection
from psycopg.rows import dict_row, tuple_row

from application.ledger import Ledger
from domain.errors import Unavailable
from domain.ids import watchlist_entry_id
from domain.rules.engine import Hit
from domain.rules.window import AccountWindow
from infrastructure.eventstore.envelopes import stored_envelope
from infrastructure.eventstore.recorder import VigilRecorder
from infrastructure.eventstore.schema import EVENTS_TABLE
from infrastructure.logging import describe
from infrastructure.monitoring.alerts import LISTED_EVENTS
from infrastructure.monitoring.rules_config import config_from_parameters
from infrastructure.readmodels.quarantine import QUARANTINED_RULE
from infrastructure.readmodels.readstore import STATEMENT_TIMEOUT_MS
from projections.alerts import movement_of, step
from projections.envelope import Envelope

log = structlog.get_logger("vigil.evidence")

# Events read per round trip: memory stays bounded however long the account's history.
EVENTS_PAGE_SIZE: Final = 1_000
# The envelope fields an evidence item shows (the API contract: audit events carry the chain).
EVIDENCE_FIELDS: Final = (
    "notification_id",
    "version",
    "event_type",
    "timestamp",
    "transaction_id",
    "payload",
    "hash",
    "previous_hash",
    "actor",
    "correlation_id",
)

EVENTS_PAGE: Final = (
    f"SELECT originator_version, topic, state, notification_id FROM {EVENTS_TABLE} "
    "WHERE originator_id = %(account_id)s AND notification_id <= %(upto)s "
    "AND originator_version > %(after)s ORDER BY originator_version LIMIT %(limit)s"
)
WATCHLIST_AS_OF: Final = (
    f"SELECT topic FROM {EVENTS_TABLE} WHERE originator_id = %s AND notification_id < %s "
    "ORDER BY originator_version DESC LIMIT 1"
)


def watchlisted_before_sync(
    conn: Connection[Any], account_id: str | None, notification_id: int
) -> bool:
    """What `alerts_store.WatchlistHistory` tells the alerts projection for a whole batch,
    for one event: whether the account was on the watchlist just before it, by the
    store's order of notification ids."""
    if account_id is None:
        return False
    # Tuples whatever the connection's row factory (the ledger's pool gives dicts).
    with conn.cursor(row_factory=tuple_row) as cursor:
        cursor.execute(WATCHLIST_AS_OF, (watchlist_entry_id(account_id), notification_id))
        row = cursor.fetchone()
    return row is not None and str(row[0]).endswith(LISTED_EVENTS)


def stored_envelopes(
    ledger: Ledger, conn: Connection[Any], account_id: UUID, upto_notification_id: int
) -> Iterator[dict[str, Any]]:
    """The account's events with notification ids up to `upto_notification_id`, in version
    order, as envelopes (the API contract's Kafka value), decoded by the ledger's mapper;
    one that cannot be decoded is left out, as the pipeline left it out."""
    after = 0
    while True:
        with conn.cursor(row_factory=dict_row) as cursor:
            cursor.execute(
                EVENTS_PAGE,
                {
                    "account_id": account_id,
                    "upto": upto_notification_id,
                    "after": after,
                    "limit": EVENTS_PAGE_SIZE,
                },
            )
            rows = cursor.fetchall()
        for row in rows:
            stored = StoredEvent(
                originator_id=account_id,
                originator_version=row["originator_version"],
                topic=row["topic"],
                state=bytes(row["state"]),
            )
            try:
                body = stored_envelope(ledger, int(row["notification_id"]), stored)
            except Exception as error:  # whatever decoding raises: the event is what is wrong
                # The relay set it aside too (quarantined, never published), so the rules
                # never saw it: the re-run leaves it out as the live run did.
                log.warning(
                    "evidence_event_unreadable",
                    notification_id=int(row["notification_id"]),
                    error=describe(error),
                )
                continue
            assert body["aggregate_type"] == "account", "an account's stream holds account events"
            yield body
        if len(rows) < EVENTS_PAGE_SIZE:
            return
        after = rows[-1]["originator_version"]


def rebuild_evidence(
    ledger: Ledger,
    conn: Connection[Any],
    alert_row: Mapping[str, Any],
    parameters: dict[str, Any],
) -> dict[str, Any]:
    """Re-score the alert's account from the event store with the alert's configuration.

    `alert_row` is the `readmodel.alerts` row (rule, account_id, notification_id,
    positions, explanation, chain_head, rule_config_version); `parameters` that version's
    `public.rule_configs.parameters`. Returns the rule configuration, the stored events
    the alert names as its evidence, whether the chain head matches, and the verdict.
    """
    if alert_row["rule"] == QUARANTINED_RULE:
        return _quarantine_evidence(ledger, conn, alert_row, parameters)
    config = config_from_parameters(parameters)
    account_id = UUID(str(alert_row["account_id"]))
    scored_at = int(alert_row["notification_id"])
    claimed = [int(p) for p in alert_row["positions"]]
    wanted = set(claimed)
    window = AccountWindow(str(account_id))
    hit: Hit | None = None
    completing: dict[str, Any] | None = None
    shown: dict[int, dict[str, Any]] = {}
    for value in stored_envelopes(ledger, conn, account_id, scored_at):
        event = Envelope.from_json(value)
        if event.notification_id in wanted:
            shown[event.notification_id] = {name: value[name] for name in EVIDENCE_FIELDS}
        movement = movement_of(event)
        watchlisted = movement is not None and watchlisted_before_sync(
            conn, movement.counterparty_account_id, event.notification_id
        )
        hits, window = step(config, window, event, watchlisted)
        if event.notification_id == scored_at:
            completing = value
            hit = next((h for h in hits if h.rule == alert_row["rule"]), None)
    return {
        "rule_config_version": int(alert_row["rule_config_version"]),
        "rule_config": parameters,
        "evidence": [shown[p] for p in claimed if p in shown],
        "chain_head_matches": completing is not None
        and completing["hash"] == alert_row["chain_head"],
        "verdict": verdict(alert_row, hit),
    }


def _quarantine_evidence(
    ledger: Ledger, conn: Connection[Any], alert_row: Mapping[str, Any], parameters: dict[str, Any]
) -> dict[str, Any]:
    """No rule raised it: its evidence is the one event a consumer set aside, as the store
    holds it (nothing, if it still cannot be decoded), and its verdict whether that event
    is where the alert says."""
    scored_at = int(alert_row["notification_id"])
    with conn.cursor(row_factory=dict_row) as cursor:
        cursor.execute(
            f"SELECT originator_id, originator_version, topic, state FROM {EVENTS_TABLE} "
            "WHERE notification_id = %s",
            (scored_at,),
        )
        row = cursor.fetchone()
    shown: list[dict[str, Any]] = []
    if row is not None:
        stored = StoredEvent(
            originator_id=row["originator_id"],
            originator_version=row["originator_version"],
            topic=row["topic"],
            state=bytes(row["state"]),
        )
        with contextlib.suppress(Exception):  # still undecodable: shown as missing
            body = stored_envelope(ledger, scored_at, stored)
            shown.append({name: body[name] for name in EVIDENCE_FIELDS})
    present = row is not None and str(row["originator_id"]) == str(alert_row["account_id"])
    return {
        "rule_config_version": int(alert_row["rule_config_version"]),
        "rule_config": parameters,
        "evidence": shown,
        "chain_head_matches": bool(shown) and shown[0]["hash"] == alert_row["chain_head"],
        "verdict": {
            "reproduced": present,
            "rule": QUARANTINED_RULE,
            "positions": [scored_at] if present else [],
            "transaction_ids": list(alert_row["transaction_ids"]) if present else [],
            "explanation": alert_row["explanation"] if present else None,
        },
    }


def verdict(alert_row: Mapping[str, Any], hit: Hit | None) -> dict[str, Any]:
    """Reproduced: the re-run raised the alert's rule with exactly its evidence and words."""
    if hit is None:
        return {
            "reproduced": False,
            "rule": alert_row["rule"],
            "positions": [],
            "transaction_ids": [],
            "explanation": None,
        }
    positions = hit.notification_ids
    reproduced = positions == [int(p) for p in alert_row["positions"]] and (
        hit.explanation == alert_row["explanation"]
    )
    return {
        "reproduced": reproduced,
        "rule": hit.rule,
        "positions": positions,
        "transaction_ids": hit.transaction_ids,
        "explanation": hit.explanation,
    }


def rebuild_in_snapshot(
    ledger: Ledger, alert_row: Mapping[str, Any], parameters: dict[str, Any]
) -> dict[str, Any]:
    """`rebuild_evidence` in one read-only snapshot of the event store, from the ledger's
    own pool (bounded), so the rebuild sees one consistent history; in a worker thread.
    503 `unavailable` when the store cannot be reached."""
    datastore = cast(VigilRecorder, ledger.recorder).datastore
    try:
        with datastore.get_connection() as conn, conn.transaction(force_rollback=True):
            conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ READ ONLY")
            conn.execute(f"SET LOCAL statement_timeout = {STATEMENT_TIMEOUT_MS}")
            return rebuild_evidence(ledger, conn, alert_row, parameters)
    except (OperationalError, InterfaceError) as error:
        raise Unavailable("the event store is not reachable; retry") from error
