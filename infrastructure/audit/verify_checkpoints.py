"""The checkpoints `verify` judges: the table's and the file's, side by side.

The table and the file each list checkpoints in notification order; merged, each
notification id gives a pair. A checkpoint in the file but not in the table was removed
from the database; one in the table but not in the file was removed from the file,
unless it is the newest and recent (the checkpointer writes the table first, and catches
the file up after a crash). Different contents, or a signature that does not verify
with a known key, are tampering as well.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg

from infrastructure.audit.checkpoints import (
    CHECKPOINT_FIELDS,
    Checkpoint,
    file_lines,
    stored_checkpoints,
)
from infrastructure.audit.signing import PublicKeys, verify_signature

Report = Callable[[str, object, int | None, int | None, str], object]


@dataclass(frozen=True, slots=True)
class Problem:
    kind: str
    detail: str


@dataclass
class CheckpointPair:
    notification_id: int
    stored: Checkpoint | None
    filed: Checkpoint | None
    # In the table only, newer than the file's last line and recent: not yet appended.
    file_pending: bool = False
    _valid: dict[Checkpoint, bool] = field(default_factory=dict)

    def time(self) -> datetime | None:
        checkpoint = self.filed or self.stored
        assert checkpoint is not None, "a pair has at least one side"
        try:
            return datetime.fromisoformat(checkpoint.time)
        except ValueError:
            return None

    def valid(self, checkpoint: Checkpoint, keys: PublicKeys) -> bool:
        if checkpoint not in self._valid:
            self._valid[checkpoint] = verify_signature(
                keys, checkpoint.key_id, checkpoint.payload(), checkpoint.signature
            )
        return self._valid[checkpoint]

    def trusted(self, keys: PublicKeys) -> Checkpoint | None:
        """The side to compare the rolling hash with: the file's first (outside the
        database), and only a checkpoint whose signature verifies."""
        for checkpoint in (self.filed, self.stored):
            if checkpoint is not None and self.valid(checkpoint, keys):
                return checkpoint
        return None

    def problems(self, keys: PublicKeys) -> list[Problem]:
        found: list[Problem] = []
        if self.stored is not None and self.filed is not None and self.stored != self.filed:
            differ = [
                name
                for name in CHECKPOINT_FIELDS
                if getattr(self.stored, name) != getattr(self.filed, name)
            ]
            detail = f"the table's and the file's checkpoint differ in {', '.join(differ)}"
            found.append(Problem("checkpoint_altered", detail))
        elif self.stored is None:
            detail = "in the checkpoint file but not in the table: removed from the database"
            found.append(Problem("checkpoint_missing", detail))
        elif self.filed is None and not self.file_pending:
            detail = "in the table but not in the checkpoint file: removed from the file"
            found.append(Problem("checkpoint_missing", detail))
        sides = [("file", self.filed), ("table", self.stored)]
        if self.filed == self.stored:
            sides = [("file and table", self.filed)]
        for where, checkpoint in sides:
            if checkpoint is None or self.valid(checkpoint, keys):
                continue
            reason = (
                f"key {checkpoint.key_id} is not a known public key"
                if checkpoint.key_id not in keys
                else f"the signature does not verify with key {checkpoint.key_id}"
            )
            found.append(Problem("bad_signature", f"checkpoint in the {where}: {reason}"))
        return found


def checkpoint_pairs(
    conn: psycopg.Connection[Any],
    path: Path,
    file_size: int,
    page_size: int,
    grace: timedelta,
    report: Report,
) -> Iterator[CheckpointPair]:
    """Pairs in notification order; `conn` is in the verifying snapshot, and the file is
    read up to `file_size`, its size before the snapshot began."""
    row = conn.execute(
        "SELECT to_regclass('public.audit_checkpoints') IS NOT NULL, now()"
    ).fetchone()
    assert row is not None, "a SELECT without FROM returns a row"
    has_table, snapshot_at = bool(row[0]), row[1]
    stored = stored_checkpoints(conn, page_size) if has_table else iter(())
    filed = _filed(path, file_size, report)
    s, f = next(stored, None), next(filed, None)
    while s is not None or f is not None:
        if f is None or (s is not None and s[0].notification_id < f.notification_id):
            assert s is not None
            checkpoint, created_at = s
            pending = f is None and created_at > snapshot_at - grace
            yield CheckpointPair(checkpoint.notification_id, checkpoint, None, pending)
            s = next(stored, None)
        elif s is None or f.notification_id < s[0].notification_id:
            yield CheckpointPair(f.notification_id, None, f)
            f = next(filed, None)
        else:
            yield CheckpointPair(f.notification_id, s[0], f)
            s, f = next(stored, None), next(filed, None)


def _filed(path: Path, file_size: int, report: Report) -> Iterator[Checkpoint]:
    last = 0
    for number, line in file_lines(path, file_size):
        try:
            checkpoint = Checkpoint.from_json(json.loads(line))
        except ValueError as error:
            report("checkpoint_file_invalid", None, None, None, f"{path} line {number}: {error}")
            continue
        if checkpoint.notification_id <= last:
            detail = f"{path} line {number}: notification {checkpoint.notification_id} after {last}"
            report("checkpoint_file_invalid", None, None, checkpoint.notification_id, detail)
            continue
        last = checkpoint.notification_id
        yield checkpoint
