"""Signed audit exports, and their verification without the database.

`export_events` writes a complete, ordered export of the events stamped in [from, to)
(found through the event index, in notification order) as `events.jsonl` or
`events.csv`, the signing public keys as `public-keys.pem`, and `manifest.json`: range,
counts, each file's SHA-256, the chain hashes at both ends, the checkpoint covering the
last event, who exported it and when, signed with Ed25519 over the manifest's canonical
JSON (without `signature`). It streams: a server-side cursor, one event in memory at a
time, so memory stays flat however many events there are.

`verify_export` checks a directory with nothing but the files: every file's SHA-256, the
signature with the bundled key of the manifest's `key_id`, counts and total, every
event's hash recomputed from its canonical record, each aggregate's chain linking within
the export, and strictly increasing notification ids. Any change to any file fails.
"""

from __future__ import annotations

import csv
import shutil
import uuid
from collections.abc import Callable, Iterator, Mapping
from contextlib import ExitStack
from dataclasses import asdict
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any, Final

import orjson
import psycopg
from eventsourcing.persistence import StoredEvent
from psycopg import sql

from application.ledger import Ledger
from domain.errors import EventUnreadable
from domain.integrity import canonical, format_timestamp
from infrastructure.audit.access_log import (
    AccessRecord,
    prepare_audit_tables,
    record_access_sync,
    record_export_sync,
)
from infrastructure.audit.checkpoints import CHECKPOINT_COLUMNS, Checkpoint
from infrastructure.audit.export_verify import (
    CSV_COLUMNS,
    EVENT_FILES,
    KEYS_FILE,
    MANIFEST_FILE,
    ExportCheck,
    file_sha256,
    verify_export,
)
from infrastructure.audit.signing import Signer, public_key_pem, public_keys
from infrastructure.eventstore.envelopes import stored_envelope
from infrastructure.eventstore.ledger import open_ledger
from infrastructure.eventstore.schema import EVENTS_TABLE
from infrastructure.postgres.connect import connect
from infrastructure.settings import Settings

__all__ = ["ExportCheck", "ExportError", "Manifest", "export_events", "verify_export"]

Manifest = dict[str, Any]

FORMATS: Final = ("jsonl", "csv")
# Rows per FETCH from the server-side cursor; memory is this many events at most.
FETCH_ROWS: Final = 2_000
EXPORTS_SUBDIR: Final = "exports"

EXPORT_QUERY: Final = sql.SQL(
    "SELECT e.notification_id, e.originator_id, e.originator_version, e.topic, e.state "
    "FROM public.event_index i JOIN {events} e ON e.notification_id = i.notification_id "
    "WHERE i.occurred_at >= %(since)s AND i.occurred_at < %(until)s{account} "
    "ORDER BY i.notification_id"
)
# Stored events the index has no row for (of the account, for an account's export). The
# recorder writes both in one transaction, so such an event was written other than through
# Vigil (or before the index existed): an export found through the index would leave it out
# and still call itself complete. One pass over the ids of both tables, per export.
UNINDEXED: Final = sql.SQL(
    "SELECT count(*), min(e.notification_id) FROM {events} e WHERE NOT EXISTS "
    "(SELECT 1 FROM public.event_index i WHERE i.notification_id = e.notification_id){account}"
)
TABLE_PRESENT: Final = "SELECT to_regclass(%s) IS NOT NULL"
# The checkpoint the export ends on: the first signed one that covers its last event.
CHECKPOINT_COVERING: Final = (
    f"SELECT {CHECKPOINT_COLUMNS} FROM public.audit_checkpoints WHERE notification_id >= %s "
    "ORDER BY notification_id LIMIT 1"
)

Progress = Callable[[int], None]


class ExportError(RuntimeError):
    """An export that cannot be made as asked (bad range, no index, directory taken)."""


def default_export_root(settings: Settings) -> Path:
    return settings.export_dir or settings.var_dir / EXPORTS_SUBDIR


def export_events(
    settings: Settings,
    since: datetime,
    until: datetime,
    account_id: uuid.UUID | None,
    fmt: str,
    out_dir: Path,
    who: Mapping[str, str],
    *,
    ledger: Ledger | None = None,
    export_id: uuid.UUID | None = None,
    correlation_id: str | None = None,
    progress: Progress | None = None,
) -> Manifest:
    """Write the export into `out_dir` (which must not exist yet), record it in
    `public.audit_exports` and the access log, and return the signed manifest."""
    _check_request(since, until, fmt, out_dir)
    export_id = export_id or uuid.uuid4()
    signer = Signer.from_settings(settings)
    keys_pem = "".join(public_key_pem(key) for _, key in sorted(public_keys(settings).items()))
    prepare_audit_tables(settings)
    partial = out_dir.with_name(f".{out_dir.name}.partial-{export_id}")
    with ExitStack() as stack:
        if ledger is None:
            ledger = open_ledger(settings)
            stack.callback(ledger.close)
        # Owners' names and amounts: readable by the exporting service's user alone.
        out_dir.parent.mkdir(parents=True, exist_ok=True, mode=EXPORT_DIR_MODE)
        partial.mkdir(mode=EXPORT_DIR_MODE)
        stack.callback(shutil.rmtree, partial, ignore_errors=True)
        summary = _write_events(settings, ledger, since, until, account_id, fmt, partial, progress)
        (partial / KEYS_FILE).write_text(keys_pem)
        manifest: Manifest = {
            "export_id": str(export_id),
            "range": {"from": format_timestamp(since), "to": format_timestamp(until)},
            "account_id": None if account_id is None else str(account_id),
            "format": fmt,
            "counts": dict(sorted(summary.counts.items())),
            "total": summary.total,
            "files": {name: file_sha256(partial / name) for name in (EVENT_FILES[fmt], KEYS_FILE)},
            "chain": summary.chain(),
            "checkpoint": summary.checkpoint,
            "exported_by": {"subject": who["subject"], "role": who["role"]},
            "exported_at": format_timestamp(datetime.now(UTC)),
            "key_id": signer.key_id,
        }
        signed_by, signature = signer.sign(canonical(manifest))
        assert signed_by == manifest["key_id"], "the manifest names the key that signs it"
        manifest["signature"] = signature
        (partial / MANIFEST_FILE).write_bytes(orjson.dumps(manifest, option=orjson.OPT_INDENT_2))
        for written in partial.iterdir():
            written.chmod(EXPORT_FILE_MODE)
        partial.rename(out_dir)
    _register(settings, manifest, out_dir, correlation_id)
    return manifest


EXPORT_DIR_MODE = 0o700
EXPORT_FILE_MODE = 0o600


def _check_request(since: datetime, until: datetime, fmt: str, out_dir: Path) -> None:
    if since.tzinfo is None or until.tzinfo is None:
        raise ExportError("--from and --to need a time zone")
    if since >= until:
        raise ExportError("--from must be before --to")
    if fmt not in FORMATS:
        raise ExportError(f"format must be one of {FORMATS}, not {fmt!r}")
    if out_dir.exists():
        raise ExportError(f"{out_dir} exists; an export goes into a new directory")


class _Summary:
    """What the manifest says of the events written, gathered as they stream past."""

    def __init__(self) -> None:
        self.counts: dict[str, int] = {}
        self.total = 0
        self.first: dict[str, Any] | None = None
        self.last: dict[str, Any] | None = None
        self.checkpoint: dict[str, Any] | None = None

    def add(self, item: Mapping[str, Any]) -> None:
        self.counts[item["event_type"]] = self.counts.get(item["event_type"], 0) + 1
        self.total += 1
        if self.first is None:
            self.first = {
                "notification_id": item["notification_id"],
                "previous_hash": item["previous_hash"],
            }
        self.last = {"notification_id": item["notification_id"], "hash": item["hash"]}

    def chain(self) -> dict[str, Any] | None:
        if self.first is None:
            return None
        return {"first": self.first, "last": self.last}


def _write_events(
    settings: Settings,
    ledger: Ledger,
    since: datetime,
    until: datetime,
    account_id: uuid.UUID | None,
    fmt: str,
    directory: Path,
    progress: Progress | None,
) -> _Summary:
    """Stream the range from one REPEATABLE READ snapshot into the events file."""
    summary = _Summary()
    with (
        connect(settings, "export") as conn,
        conn.transaction(),
        (directory / EVENT_FILES[fmt]).open("w", encoding="utf-8", newline="") as out,
    ):
        conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ READ ONLY")
        if not _present(conn, "public.event_index"):
            raise ExportError("the event index does not exist; run `vigil audit reindex`")
        _check_indexed(conn, account_id)
        write = _jsonl_writer(out) if fmt == "jsonl" else _csv_writer(out)
        for item in _stored_items(conn, ledger, since, until, account_id):
            write(item)
            summary.add(item)
            if progress is not None and summary.total % FETCH_ROWS == 0:
                progress(summary.total)
        if summary.last is not None and _present(conn, "public.audit_checkpoints"):
            summary.checkpoint = _checkpoint(conn, summary.last["notification_id"])
    if progress is not None:
        progress(summary.total)
    return summary


def _check_indexed(conn: psycopg.Connection[Any], account_id: uuid.UUID | None) -> None:
    account = sql.SQL(" AND e.originator_id = %(account_id)s" if account_id else "")
    query = UNINDEXED.format(events=sql.Identifier(EVENTS_TABLE), account=account)
    row = conn.execute(query, {"account_id": account_id}).fetchone()
    missing, first = (0, None) if row is None else (int(row[0]), row[1])
    if missing:
        raise ExportError(
            f"{missing:,} stored event(s) have no row in the event index (the first at "
            f"notification id {first}): written other than through Vigil, or before the "
            "index existed. An export found through the index would leave them out; "
            "check them with `vigil audit verify`, then index them with `vigil audit reindex`"
        )


def _stored_items(
    conn: psycopg.Connection[Any],
    ledger: Ledger,
    since: datetime,
    until: datetime,
    account_id: uuid.UUID | None,
) -> Iterator[dict[str, Any]]:
    # Through the stored events' (originator_id, originator_version) index.
    account = sql.SQL(" AND e.originator_id = %(account_id)s" if account_id else "")
    query = EXPORT_QUERY.format(events=sql.Identifier(EVENTS_TABLE), account=account)
    params = {"since": since, "until": until, "account_id": account_id}
    with conn.cursor(name="vigil_export") as cursor:
        cursor.itersize = FETCH_ROWS
        cursor.execute(query, params)
        for notification_id, originator_id, version, topic, state in cursor:
            stored = StoredEvent(
                originator_id=originator_id,
                originator_version=version,
                topic=topic,
                state=bytes(state),
            )
            try:
                item = stored_envelope(ledger, int(notification_id), stored)
            except Exception as error:  # whatever decoding raises: the event is what is wrong
                raise EventUnreadable.of(
                    f"notification id {notification_id}",
                    error,
                    "and a signed export cannot vouch for it",
                ) from error
            yield item


def _jsonl_writer(out: IO[str]) -> Callable[[Mapping[str, Any]], None]:
    def write(item: Mapping[str, Any]) -> None:
        out.write(orjson.dumps(item).decode())
        out.write("\n")

    return write


def _csv_writer(out: IO[str]) -> Callable[[Mapping[str, Any]], None]:
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(CSV_COLUMNS)

    def write(item: Mapping[str, Any]) -> None:
        # Nullable ids leave as empty cells; the payload as canonical JSON, so a reader
        # recomputes the hash from exactly the fields that were hashed.
        row = dict(item)
        row["actor_subject"] = item["actor"]["subject"]
        row["actor_role"] = item["actor"]["role"]
        row["payload"] = canonical(item["payload"]).decode()
        writer.writerow(["" if row[c] is None else row[c] for c in CSV_COLUMNS])

    return write


def _present(conn: psycopg.Connection[Any], table: str) -> bool:
    row = conn.execute(TABLE_PRESENT, (table,)).fetchone()
    return bool(row and row[0])


def _checkpoint(conn: psycopg.Connection[Any], last_notification_id: int) -> dict[str, Any] | None:
    row = conn.execute(CHECKPOINT_COVERING, (last_notification_id,)).fetchone()
    return None if row is None else asdict(Checkpoint.from_row(row))


def _register(
    settings: Settings, manifest: Manifest, out_dir: Path, correlation_id: str | None
) -> None:
    """The export's row and its access-log entry, in one transaction."""
    who = manifest["exported_by"]
    access = AccessRecord(
        subject=who["subject"],
        role=who["role"],
        action="audit.export",
        detail={
            "export_id": manifest["export_id"],
            "from": manifest["range"]["from"],
            "to": manifest["range"]["to"],
            "account_id": manifest["account_id"],
            "format": manifest["format"],
            "total": manifest["total"],
        },
        correlation_id=correlation_id,
    )
    with (
        connect(settings, "export") as conn,
        conn.transaction(),
    ):
        record_export_sync(
            conn,
            {
                "export_id": manifest["export_id"],
                "range_from": manifest["range"]["from"],
                "range_to": manifest["range"]["to"],
                "account_id": manifest["account_id"],
                "format": manifest["format"],
                "total": manifest["total"],
                "subject": who["subject"],
                "role": who["role"],
                "exported_at": manifest["exported_at"],
                "directory": str(out_dir.resolve()),
                "manifest": manifest,
            },
        )
        record_access_sync(conn, access)
