"""Quarantine: an event a consumer cannot apply is set aside, never a wall.

A projection batch that fails because of what an event holds (PostgreSQL refusing a
value, a payload the projector cannot read) is split in halves and applied again, down
to the one event that fails alone. That event is recorded in `quarantined_events`
(projection, notification id, error, time) in the same transaction as its tracking row,
so it counts as done and the mark moves on; every other event of the batch is applied.
A failure that is not the event's (a lost connection, the server shutting down) is
raised as before: the worker restarts and nothing is skipped.

The relay does the same with a stored event it cannot decode (`relay_quarantine`): it is
never published, and every projection's mark walk counts its id as done, like a gap in
the store. Both raise an alert with rule `quarantined_event` for an account's event
(critical, once per notification id, through the alerts outbox, so it opens a case):
the monitoring did not see that event.

Projections that need each account's events in version order (balances, alerts) skip a
quarantined version instead of waiting for it forever.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Final, TypeVar
from uuid import UUID

import psycopg
import structlog
from prometheus_client import Counter
from psycopg import AsyncConnection

from infrastructure.logging import describe
from projections.envelope import Envelope

log = structlog.get_logger("vigil.quarantine")

QUARANTINED_RULE: Final = "quarantined_event"
QUARANTINED_SEVERITY: Final = "critical"
RELAY: Final = "relay"
# Account events that move money: the ones whose absence blinds the rules.
MOVEMENT_EVENTS: Final = frozenset({"Deposited", "Withdrawn", "TransferredIn", "TransferredOut"})

QUARANTINED = Counter(
    "vigil_events_quarantined_total",
    "Events a consumer could not apply and set aside, by consumer (projection or relay).",
    ["consumer"],
)


def is_event_fault(error: BaseException) -> bool:
    """Whether applying failed because of what the events hold, so that setting one aside
    lets the rest through. A value PostgreSQL refuses (DataError: a NUL byte, a number out
    of range; IntegrityError: a check) or a payload our code cannot read is the event's.
    The server or the network failing is not, and neither is our own SQL being wrong
    (ProgrammingError): those fail every event alike, and quarantining them all would
    hide an outage behind thousands of set-aside events."""
    if isinstance(error, psycopg.Error):
        return isinstance(error, psycopg.DataError | psycopg.IntegrityError)
    return not isinstance(error, OSError | TimeoutError)


R = TypeVar("R")


async def apply_isolating(
    projection: str,
    events: Sequence[Envelope],
    apply: Callable[[Sequence[Envelope]], Awaitable[R]],
    quarantine: Callable[[Envelope, BaseException], Awaitable[None]],
    merge: Callable[[list[R]], R],
) -> R:
    """Apply the batch; if an event's content makes it fail, apply the halves, down to
    the events that fail alone, which are quarantined. In order: the halves go first to
    last, so a projection that needs version order still gets it."""
    try:
        return await apply(events)
    except Exception as error:
        if not is_event_fault(error):
            raise
        if len(events) == 1:
            await quarantine(events[0], error)
            return await apply(events)  # tracked now: counted as a duplicate, moves nothing
        log.warning(
            "projection_batch_isolating",
            projection=projection,
            events=len(events),
            error=describe(error),
        )
    middle = len(events) // 2
    first = await apply_isolating(projection, events[:middle], apply, quarantine, merge)
    second = await apply_isolating(projection, events[middle:], apply, quarantine, merge)
    return merge([first, second])


def announce(consumer: str, notification_id: int, **fields: Any) -> None:
    """What operators see of an event set aside, whichever consumer set it aside: the
    metric and one error line naming the notification id."""
    QUARANTINED.labels(consumer).inc()
    log.error("event_quarantined", consumer=consumer, notification_id=notification_id, **fields)


async def record_quarantine(
    conn: AsyncConnection[Any], projection: str, event: Envelope, error: BaseException
) -> bool:
    """Record `event` as quarantined by `projection`, in the caller's transaction (which
    tracks it), and raise its alert. False if it was recorded before."""
    reason = describe(error)
    cursor = await conn.execute(
        "INSERT INTO quarantined_events (projection, notification_id, event_type, "
        "aggregate_id, version, error) VALUES (%s, %s, %s, %s, %s, %s) "
        "ON CONFLICT DO NOTHING RETURNING 1",
        (
            projection,
            event.notification_id,
            event.event_type,
            event.aggregate_id,
            event.version,
            reason,
        ),
    )
    if await cursor.fetchone() is None:
        return False
    announce(
        projection,
        event.notification_id,
        event_type=event.event_type,
        account_id=str(event.aggregate_id) if event.is_account_event else None,
        version=event.version,
        correlation_id=event.correlation_id,
        error=reason,
    )
    if event.is_account_event and event.event_type in MOVEMENT_EVENTS:
        await raise_quarantine_alert(
            conn,
            QuarantinedMovement(
                account_id=event.aggregate_id,
                notification_id=event.notification_id,
                event_type=event.event_type,
                version=event.version,
                transaction_id=event.transaction_id,
                occurred_at=event.timestamp,
                chain_head=event.hash,
            ),
            f"the {projection} projection",
            reason,
        )
    return True


@dataclass(frozen=True)
class QuarantinedMovement:
    account_id: UUID
    notification_id: int
    event_type: str
    version: int
    transaction_id: str | None
    occurred_at: datetime | None  # None: the event could not be read at all
    chain_head: str | None


async def raise_quarantine_alert(
    conn: AsyncConnection[Any], movement: QuarantinedMovement, consumer: str, reason: str
) -> None:
    """The `quarantined_event` alert, in `alerts` and the outbox of the transaction's
    schema; once per notification id, whoever quarantines it first."""
    from infrastructure.readmodels.alert_rows import alert_record, insert_alerts, notify_outbox

    raised_at = movement.occurred_at or datetime.now(UTC)
    explanation = (
        f"event {movement.notification_id} ({movement.event_type}, version "
        f"{movement.version}) could not be applied by {consumer} and was set aside; the "
        f"monitoring did not see it ({reason[:200]})"
    )
    body = alert_record(
        rule=QUARANTINED_RULE,
        severity=QUARANTINED_SEVERITY,
        account_id=str(movement.account_id),
        notification_id=movement.notification_id,
        transaction_ids=[movement.transaction_id] if movement.transaction_id else [],
        positions=[movement.notification_id],
        explanation=explanation,
        raised_at=raised_at,
        branch=None,
        chain_head=movement.chain_head,
        version=await _rules_version(conn),
    )
    await insert_alerts(conn, [(body, raised_at)])
    await notify_outbox(conn)


async def _rules_version(conn: AsyncConnection[Any]) -> int:
    """The newest rules configuration: alerts name one, and this alert is no rule's."""
    cursor = await conn.execute("SELECT coalesce(max(version), 0) FROM public.rule_configs")
    row = await cursor.fetchone()
    return int(row[0]) if row else 0


async def quarantined_versions(
    conn: AsyncConnection[Any], projection: str, account_ids: Sequence[UUID]
) -> dict[UUID, set[int]]:
    """The versions of these accounts that `projection` quarantined or the relay never
    published: a projection in version order steps over them."""
    if not account_ids:
        return {}
    cursor = await conn.execute(
        "SELECT aggregate_id, version FROM quarantined_events "
        "WHERE projection = %s AND aggregate_id = ANY(%b::uuid[]) "
        "UNION ALL SELECT originator_id, originator_version FROM public.relay_quarantine "
        "WHERE originator_id = ANY(%b::uuid[])",
        (projection, list(account_ids), list(account_ids)),
    )
    skipped: dict[UUID, set[int]] = {}
    for account_id, version in await cursor.fetchall():
        skipped.setdefault(account_id, set()).add(int(version))
    return skipped


def next_version(projected: int, skipped: set[int] | None) -> int:
    """The version a projection in version order waits for after `projected`."""
    expected = projected + 1
    while skipped and expected in skipped:
        expected += 1
    return expected
