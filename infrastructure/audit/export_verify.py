"""`vigil audit verify-export`: an export checked on its own, without the database and
without any secret (the bundled public keys and the files are all it needs).

Problems are sentences naming the file, line, aggregate, version and notification id.
The signature covers the manifest, the manifest covers every file's SHA-256: so any
change to any file fails, and the per-event checks say where the change is.
"""

from __future__ import annotations

import csv
import hashlib
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final

import orjson

from domain.integrity import GENESIS_HASH, canonical, chain_hash, chain_record
from infrastructure.audit.checkpoints import Checkpoint
from infrastructure.audit.signing import PublicKeys, key_id, public_key_from_pem, verify_signature

MANIFEST_FILE: Final = "manifest.json"
KEYS_FILE: Final = "public-keys.pem"
EVENT_FILES: Final = {"jsonl": "events.jsonl", "csv": "events.csv"}
CSV_COLUMNS: Final = (
    "notification_id",
    "aggregate_type",
    "aggregate_id",
    "account_id",
    "version",
    "event_type",
    "timestamp",
    "actor_subject",
    "actor_role",
    "correlation_id",
    "transaction_id",
    "payload",
    "hash",
    "previous_hash",
    "mac",
    "mac_kid",
)
# Exports written before `mac_kid` had a column still verify: the check needs hashes, not kids.
CSV_COLUMNS_WITHOUT_KID: Final = CSV_COLUMNS[:-1]
MANIFEST_KEYS: Final = (
    "export_id",
    "range",
    "account_id",
    "format",
    "counts",
    "total",
    "files",
    "chain",
    "checkpoint",
    "exported_by",
    "exported_at",
    "key_id",
    "signature",
)
# Past this many, the rest are counted, not listed: one bad file must not flood a terminal.
PROBLEMS_MAX: Final = 100
MANIFEST_BYTES_MAX: Final = 1_048_576
HASH_CHUNK_BYTES: Final = 1_048_576
TIMESTAMP_FORMAT: Final = "%Y-%m-%dT%H:%M:%S.%fZ"
PEM_BLOCK = re.compile(rb"-----BEGIN PUBLIC KEY-----.+?-----END PUBLIC KEY-----\s*", re.DOTALL)


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as data:
        while chunk := data.read(HASH_CHUNK_BYTES):
            digest.update(chunk)
    return digest.hexdigest()


@dataclass(frozen=True)
class ExportCheck:
    """What `verify_export` found: no problem means the export verifies."""

    problems: list[str]  # at most PROBLEMS_MAX, in the order found
    unlisted: int  # problems past PROBLEMS_MAX, counted only
    manifest: dict[str, Any] | None  # as read, when it could be read and is well-formed

    @property
    def verified(self) -> bool:
        return not self.problems


class Problems:
    def __init__(self) -> None:
        self.items: list[str] = []
        self.dropped = 0

    def add(self, text: str) -> None:
        if len(self.items) < PROBLEMS_MAX:
            self.items.append(text)
        else:
            self.dropped += 1

    def result(self, manifest: dict[str, Any] | None) -> ExportCheck:
        return ExportCheck(self.items, self.dropped, manifest)


def verify_export(directory: Path) -> ExportCheck:
    """Every problem found in the export at `directory`; none means it verifies."""
    problems = Problems()
    manifest = _load_manifest(directory, problems)
    if manifest is None:
        return problems.result(None)
    _check_files(directory, manifest, problems)
    _check_signature(directory, manifest, problems)
    events_file = EVENT_FILES.get(manifest["format"])
    if events_file is None:
        problems.add(f"{MANIFEST_FILE}: unknown format {manifest['format']!r}")
    elif (directory / events_file).is_file():
        _check_events(directory / events_file, manifest, problems)
    return problems.result(manifest)


def _load_manifest(directory: Path, problems: Problems) -> dict[str, Any] | None:
    path = directory / MANIFEST_FILE
    if not path.is_file():
        problems.add(f"{MANIFEST_FILE} is missing")
        return None
    if path.stat().st_size > MANIFEST_BYTES_MAX:
        problems.add(f"{MANIFEST_FILE} is too large to be a manifest")
        return None
    try:
        manifest = orjson.loads(path.read_bytes())
    except orjson.JSONDecodeError as error:
        problems.add(f"{MANIFEST_FILE} is not JSON: {error}")
        return None
    if not isinstance(manifest, dict):
        problems.add(f"{MANIFEST_FILE} is not a JSON object")
        return None
    missing = [key for key in MANIFEST_KEYS if key not in manifest]
    if missing:
        problems.add(f"{MANIFEST_FILE} lacks {', '.join(missing)}")
        return None
    if not _well_formed(manifest):
        problems.add(f"{MANIFEST_FILE}: a field has the wrong type")
        return None
    return manifest


def _well_formed(manifest: Mapping[str, Any]) -> bool:
    span = manifest["range"]
    return (
        isinstance(manifest["files"], dict)
        and all(isinstance(v, str) for v in manifest["files"].values())
        and isinstance(manifest["counts"], dict)
        and isinstance(span, dict)
        and isinstance(span.get("from"), str)
        and isinstance(span.get("to"), str)
        and isinstance(manifest["format"], str)
        and isinstance(manifest["key_id"], str)
        and isinstance(manifest["total"], int)
        and (manifest["account_id"] is None or isinstance(manifest["account_id"], str))
    )


def _check_files(directory: Path, manifest: Mapping[str, Any], problems: Problems) -> None:
    listed = manifest["files"]
    for name, expected in sorted(listed.items()):
        path = directory / name
        if "/" in name or "\\" in name or name in ("", ".", ".."):
            problems.add(f"{MANIFEST_FILE} lists {name!r}, not a plain file name")
        elif not path.is_file():
            problems.add(f"{name} is missing")
        elif file_sha256(path) != expected:
            problems.add(f"{name}: SHA-256 differs from the manifest (the file was changed)")
    present = {p.name for p in directory.iterdir()}
    for name in sorted(present - set(listed) - {MANIFEST_FILE}):
        problems.add(f"{name} is not part of the export")
    if EVENT_FILES.get(manifest["format"]) not in listed or KEYS_FILE not in listed:
        problems.add(f"{MANIFEST_FILE} does not cover the events file and the public keys")


def bundled_keys(path: Path) -> PublicKeys:
    keys: PublicKeys = {}
    for block in PEM_BLOCK.findall(path.read_bytes()):
        key = public_key_from_pem(block)
        keys[key_id(key)] = key
    return keys


def _check_signature(directory: Path, manifest: Mapping[str, Any], problems: Problems) -> None:
    try:
        keys = bundled_keys(directory / KEYS_FILE)
    except (OSError, ValueError) as error:
        problems.add(f"{KEYS_FILE} cannot be read: {error}")
        return
    signed = {name: value for name, value in manifest.items() if name != "signature"}
    if manifest["key_id"] not in keys:
        problems.add(f"{KEYS_FILE} holds no key with id {manifest['key_id']}")
    elif not isinstance(manifest["signature"], str) or not verify_signature(
        keys, manifest["key_id"], canonical(signed), manifest["signature"]
    ):
        problems.add(f"{MANIFEST_FILE}: the signature does not verify (the manifest was changed)")
    _check_checkpoint(manifest, keys, problems)


def _check_checkpoint(manifest: Mapping[str, Any], keys: PublicKeys, problems: Problems) -> None:
    """The checkpoint the export ends on carries its own signature: check it, and that it
    covers the last exported event."""
    if manifest["checkpoint"] is None:
        return
    try:
        checkpoint = Checkpoint.from_json(manifest["checkpoint"])
    except ValueError as error:
        problems.add(f"{MANIFEST_FILE}: the checkpoint is malformed ({error})")
        return
    if not verify_signature(keys, checkpoint.key_id, checkpoint.payload(), checkpoint.signature):
        problems.add(
            f"{MANIFEST_FILE}: checkpoint {checkpoint.notification_id}'s signature does not verify"
        )
    chain = manifest["chain"]
    ends = chain.get("last") if isinstance(chain, dict) else None
    last = ends.get("notification_id") if isinstance(ends, dict) else None
    if not isinstance(last, int) or checkpoint.notification_id < last:
        problems.add(f"{MANIFEST_FILE}: the checkpoint does not cover the last exported event")


def _check_events(path: Path, manifest: Mapping[str, Any], problems: Problems) -> None:
    counts: dict[str, int] = {}
    heads: dict[str, tuple[int, str]] = {}
    previous_id = 0
    first: dict[str, Any] | None = None
    last: dict[str, Any] | None = None
    for line, event in _events(path, manifest["format"], problems):
        where = f"{path.name} line {line}"
        try:
            record = _record(event)
            notification_id = int(event["notification_id"])
        except (KeyError, TypeError, ValueError) as error:
            problems.add(f"{where}: not an event ({type(error).__name__}: {error})")
            continue
        where += (
            f" (aggregate {record['aggregate_id']}, version {record['version']}, "
            f"notification {notification_id})"
        )
        if chain_hash(record) != event["hash"]:
            problems.add(f"{where}: hash does not recompute from the event's fields")
        if notification_id <= previous_id:
            problems.add(f"{where}: notification ids must increase (after {previous_id})")
        previous_id = max(previous_id, notification_id)
        _check_link(where, record, event["hash"], heads, problems)
        _check_scope(where, record, manifest, problems)
        counts[record["event_type"]] = counts.get(record["event_type"], 0) + 1
        if first is None:
            first = {"notification_id": notification_id, "previous_hash": record["previous_hash"]}
        last = {"notification_id": notification_id, "hash": event["hash"]}
    if counts != manifest["counts"]:
        problems.add(f"{path.name}: counts per event type {counts} differ from the manifest")
    if sum(counts.values()) != manifest["total"]:
        problems.add(
            f"{path.name}: {sum(counts.values())} events, the manifest says {manifest['total']}"
        )
    chain = None if first is None else {"first": first, "last": last}
    if chain != manifest["chain"]:
        problems.add(f"{path.name}: the chain ends {chain} differ from the manifest")


def _check_link(
    where: str,
    record: Mapping[str, Any],
    event_hash: str,
    heads: dict[str, tuple[int, str]],
    problems: Problems,
) -> None:
    """An event links to the aggregate's previous exported event, where both are here."""
    aggregate_id, version = record["aggregate_id"], record["version"]
    head = heads.get(aggregate_id)
    if version == 1 and record["previous_hash"] != GENESIS_HASH:
        problems.add(f"{where}: a first event must link to the genesis hash")
    if head is not None:
        head_version, head_hash = head
        if version <= head_version:
            problems.add(f"{where}: version repeats or goes back (after {head_version})")
        elif version == head_version + 1 and record["previous_hash"] != head_hash:
            problems.add(f"{where}: previous_hash is not the hash of version {head_version}")
    heads[aggregate_id] = (version, event_hash)


def _check_scope(
    where: str,
    record: Mapping[str, Any],
    manifest: Mapping[str, Any],
    problems: Problems,
) -> None:
    moment = record["timestamp"]
    if not manifest["range"]["from"] <= moment < manifest["range"]["to"]:
        problems.add(f"{where}: stamped {moment}, outside the exported range")
    account_id = manifest["account_id"]
    if account_id is not None and record["aggregate_id"] != account_id:
        problems.add(f"{where}: not an event of account {account_id}")


def _record(event: Mapping[str, Any]) -> dict[str, Any]:
    """The canonical record the API contract hashes, from the exported fields alone."""
    actor = event["actor"]
    if not isinstance(actor, dict) or not isinstance(event["payload"], dict):
        raise TypeError("actor and payload must be objects")
    return chain_record(
        aggregate_id=str(event["aggregate_id"]),
        version=int(event["version"]),
        event_type=str(event["event_type"]),
        timestamp=datetime.strptime(event["timestamp"], TIMESTAMP_FORMAT).replace(tzinfo=UTC),
        transaction_id=event["transaction_id"],
        actor=actor,
        correlation_id=event["correlation_id"],
        payload=event["payload"],
        previous_hash=str(event["previous_hash"]),
    )


def _events(path: Path, fmt: str, problems: Problems) -> Iterator[tuple[int, dict[str, Any]]]:
    """(line number, event) for each event of the file, one line in memory at a time."""
    with path.open("r", encoding="utf-8", newline="") as data:
        if fmt == "jsonl":
            for line, text in enumerate(data, start=1):
                try:
                    event = orjson.loads(text)
                except orjson.JSONDecodeError as error:
                    problems.add(f"{path.name} line {line}: not JSON ({error})")
                    continue
                if isinstance(event, dict):
                    yield line, event
                else:
                    problems.add(f"{path.name} line {line}: not a JSON object")
            return
        reader = csv.reader(data)
        header = next(reader, None)
        if header not in (list(CSV_COLUMNS), list(CSV_COLUMNS_WITHOUT_KID)):
            problems.add(f"{path.name}: the header is not {','.join(CSV_COLUMNS)}")
            return
        columns = tuple(header)
        for row in reader:
            line = reader.line_num
            if len(row) != len(columns):
                problems.add(f"{path.name} line {line}: {len(row)} cells, not {len(columns)}")
                continue
            try:
                yield line, _csv_event(columns, row)
            except orjson.JSONDecodeError as error:
                problems.add(f"{path.name} line {line}: payload is not JSON ({error})")


def _csv_event(columns: tuple[str, ...], row: list[str]) -> dict[str, Any]:
    cells = dict(zip(columns, row, strict=True))
    event: dict[str, Any] = {k: (v if v != "" else None) for k, v in cells.items()}
    event["actor"] = {"subject": cells["actor_subject"], "role": cells["actor_role"]}
    event["payload"] = orjson.loads(cells["payload"])
    return event
