"""`vigil audit verify` and `GET /v1/audit/verify`: prove the event store was not changed
behind the application's back.

One pass over the whole store in notification order, a page at a time (memory: one
entry per aggregate, plus what was found). For every event: the stored `hash` must
recompute from its fields, its `mac` must match with the audit MAC key, its version must
follow the aggregate's previous one and its `previous_hash` must be that event's hash.
The rolling hash of all events is compared with every signed checkpoint at its
notification id, each checkpoint's Ed25519 signature is checked, and the checkpoints in
the table are compared with those in the checkpoint file (outside the database).

The database is read in one REPEATABLE READ snapshot, and the file only up to the size
it had before the snapshot began, so a live checkpointer causes no false alarms.
`--from/--to` only filter what is reported (by event or checkpoint time): chains are
always checked from the start, since a chain cannot be judged from its middle.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from datetime import datetime, timedelta
from typing import Any, Final

import psycopg

from application.ledger import Ledger
from infrastructure.audit.checkpoints import checkpoint_file, stored_events_page
from infrastructure.audit.signing import public_keys
from infrastructure.audit.verify_chains import (
    INDEX_NAMED_MAX,
    Finding,
    IndexLookup,
    StoreAudit,
    TimeWindow,
)
from infrastructure.audit.verify_checkpoints import CheckpointPair, checkpoint_pairs
from infrastructure.eventstore.ledger import open_ledger
from infrastructure.postgres.connect import connect
from infrastructure.settings import Settings

__all__ = ["Finding", "VerifyReport", "verify_store"]

EVENT_INDEX: Final = "public.event_index"


@dataclass
class VerifyReport:
    clean: bool
    findings: list[Finding]
    findings_total: int
    counts: dict[str, int]
    events: int
    aggregates: int
    checkpoints: int
    head: int
    last_checkpoint: int | None
    events_after_last_checkpoint: int
    since: str | None
    until: str | None
    elapsed_s: float
    rate_events_per_s: float
    summary: str = ""

    def as_json(self) -> dict[str, Any]:
        return asdict(self)


def _index_lookup(conn: psycopg.Connection[Any]) -> IndexLookup | None:
    """The event index, when there is one: written with the events, so it names removed
    events unless the attacker edited it too (then they stay unnamed, still reported)."""
    row = conn.execute("SELECT to_regclass(%s) IS NOT NULL", (EVENT_INDEX,)).fetchone()
    if row is None or not row[0]:
        return None

    def lookup(low: int, high: int) -> list[tuple[int, object, int]]:
        rows = conn.execute(
            f"SELECT notification_id, aggregate_id, version FROM {EVENT_INDEX} "
            "WHERE notification_id > %s AND notification_id <= %s "
            "ORDER BY notification_id LIMIT %s",
            (low, high, INDEX_NAMED_MAX),
        ).fetchall()
        return [(int(nid), aggregate_id, int(version)) for nid, aggregate_id, version in rows]

    return lookup


def verify_store(
    settings: Settings,
    *,
    since: datetime | None = None,
    until: datetime | None = None,
    ledger: Ledger | None = None,
) -> VerifyReport:
    """Verify the whole store; `ledger` (for its mapper) is opened and closed if not given."""
    own_ledger = ledger is None
    ledger = ledger or open_ledger(settings)
    try:
        return _verify(settings, ledger, TimeWindow(since, until))
    finally:
        if own_ledger:
            ledger.close()


def _verify(settings: Settings, ledger: Ledger, window: TimeWindow) -> VerifyReport:
    started = time.monotonic()
    path = checkpoint_file(settings)
    # Before the snapshot: every checkpoint in the file so far is in the table by then.
    file_size = path.stat().st_size if path.exists() else 0
    audit = StoreAudit(ledger, settings.audit_mac_keys_resolved(), public_keys(settings), window)
    page_size = settings.verify_page_events
    with connect(settings, "verify") as conn:
        conn.isolation_level = psycopg.IsolationLevel.REPEATABLE_READ
        conn.read_only = True
        with conn.transaction():
            grace = timedelta(seconds=max(30.0, 10 * settings.checkpoint_interval_s))
            audit.index = _index_lookup(conn)
            pairs = checkpoint_pairs(conn, path, file_size, page_size, grace, audit.report)
            pending = next(pairs, None)
            after = 0
            while page := stored_events_page(conn, after, page_size):
                for nid, stored in page:
                    while pending is not None and pending.notification_id < nid:
                        audit.checkpoint(pending)
                        pending = next(pairs, None)
                    audit.event(nid, stored)
                after = page[-1][0]
            beyond: list[CheckpointPair] = []
            while pending is not None:
                beyond_head = pending.notification_id > audit.last_id
                audit.checkpoint(pending, beyond_head=beyond_head)
                if beyond_head:
                    beyond.append(pending)
                pending = next(pairs, None)
            audit.truncated(beyond)
            audit.finish_chains()
    return _report(audit, window, time.monotonic() - started)


def _report(audit: StoreAudit, window: TimeWindow, elapsed_s: float) -> VerifyReport:
    counts = {kind: n for kind, n in sorted(audit.counts.items()) if n > 0}
    total = sum(counts.values())
    rate = audit.events / elapsed_s if elapsed_s > 0 else 0.0
    checked_to = audit.last_checkpoint or 0
    report = VerifyReport(
        clean=total == 0,
        # In store order; the ones without a place last.
        findings=sorted(audit.findings, key=_place),
        findings_total=total,
        counts=counts,
        events=audit.events,
        aggregates=len(audit.chains),
        checkpoints=audit.checkpoints,
        head=audit.last_id,
        last_checkpoint=audit.last_checkpoint,
        events_after_last_checkpoint=audit.events - _events_upto(audit, checked_to),
        since=None if window.since is None else window.since.isoformat(),
        until=None if window.until is None else window.until.isoformat(),
        elapsed_s=round(elapsed_s, 3),
        rate_events_per_s=round(rate, 1),
    )
    report.summary = _summary(report)
    return report


def _place(finding: Finding) -> int:
    return finding.notification_id if finding.notification_id is not None else 2**63


def _events_upto(audit: StoreAudit, nid: int) -> int:
    if nid >= audit.last_id:
        return audit.events
    # Ids run 1..last_id minus the gaps; count the gaps' ids at or below `nid`.
    absent = sum(max(0, min(last, nid) - first + 1) for first, last in audit.gaps if first <= nid)
    return max(0, nid - absent)


def _summary(report: VerifyReport) -> str:
    verdict = (
        "clean"
        if report.clean
        else f"{report.findings_total} findings ("
        + ", ".join(f"{kind} {n}" for kind, n in report.counts.items())
        + ")"
    )
    return (
        f"verified {report.events} events of {report.aggregates} aggregates and "
        f"{report.checkpoints} checkpoints in {report.elapsed_s:.1f} s "
        f"({report.rate_events_per_s:,.0f} events/s): {verdict}"
    )
