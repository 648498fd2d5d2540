"""Signed exports on real PostgreSQL: a fresh export verifies on its own; any change to any
file fails; an export of 100,000 events streams with flat memory (measured, printed)."""

from __future__ import annotations

import csv
import hashlib
import json
import re
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from uuid import UUID, uuid4

import psycopg
import pytest

from application.commands import ChangeStatus, Deposit, OpenAccount, Transfer, Withdraw
from application.ledger import Ledger
from domain.account import Account
from domain.integrity import Actor, Stamp
from domain.money import Money
from infrastructure.audit.checkpoints import CheckpointWriter
from infrastructure.audit.export import ExportError, export_events, verify_export
from infrastructure.audit.signing import Signer
from infrastructure.eventstore.ledger import open_ledger
from infrastructure.settings import Settings
from tests.ceilings import BALANCE_MAX_MINOR, OVERDRAFT_MAX_MINOR
from tests.conftest import ROOT, settings_env
from tests.integration.support import Clock, run_group

pytestmark = pytest.mark.integration

TELLER = Actor("alice", "teller")
AUDITOR = {"subject": "audrey", "role": "auditor"}
T0 = datetime(2026, 6, 1, 9, 0, tzinfo=UTC)
EVERYTHING = (T0 - timedelta(days=1), T0 + timedelta(days=3650))
EVENTS_FILE = {"jsonl": "events.jsonl", "csv": "events.csv"}

BULK_EVENTS = 100_000
BULK_ACCOUNTS = 300
# Deposits per account between saves: one save is about 3,000 events.
BULK_ROUNDS_PER_SAVE = 10
RSS_GROWTH_BYTES_MAX = 100 * 1024 * 1024


@pytest.fixture
def settings(settings_factory) -> Settings:  # type: ignore[no-untyped-def]
    return settings_factory()


@pytest.fixture
def ledger(settings: Settings) -> Iterator[Ledger]:
    app = open_ledger(settings)
    app.options.clock = Clock()
    yield app
    app.close()


def small_history(ledger: Ledger) -> tuple[UUID, UUID]:
    a, b = uuid4(), uuid4()
    run_group(
        ledger,
        OpenAccount(a, "Ada", "001", "GBP", 0),
        OpenAccount(b, 'Bob \u00e9\u00e8 "quoted", comma', "001", "GBP", 0),
        Deposit(a, Money(10_000, "GBP"), uuid4(), reference="line\nbreak, comma"),
        Transfer(a, b, Money(2_500, "GBP"), uuid4(), reference="rent"),
        Withdraw(b, Money(500, "GBP"), uuid4(), channel="card"),
        ChangeStatus(a, "freeze", "review"),
        ChangeStatus(a, "unfreeze", "cleared"),
        Deposit(b, Money(1, "GBP"), uuid4()),
    )
    return a, b


def export(settings: Settings, tmp_path: Path, fmt: str = "jsonl", **kwargs: Any) -> Path:
    out = tmp_path / f"export-{fmt}-{uuid4().hex[:6]}"
    since, until = kwargs.pop("span", EVERYTHING)
    export_events(settings, since, until, kwargs.pop("account_id", None), fmt, out, AUDITOR)
    return out


def test_export_files_are_readable_by_their_owner_alone(
    settings: Settings, ledger: Ledger, tmp_path: Path
) -> None:
    small_history(ledger)
    out = export(settings, tmp_path / "exports")
    assert (out.stat().st_mode & 0o777, out.parent.stat().st_mode & 0o777) == (0o700, 0o700)
    modes = {path.name: path.stat().st_mode & 0o777 for path in out.iterdir()}
    assert modes == dict.fromkeys(modes, 0o600)
    assert len(modes) == 3, modes


@pytest.mark.parametrize("fmt", ["jsonl", "csv"])
def test_a_fresh_export_verifies_on_its_own(
    settings: Settings, ledger: Ledger, tmp_path: Path, fmt: str
) -> None:
    small_history(ledger)
    out = export(settings, tmp_path, fmt)
    assert verify_export(out).problems == []
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["total"] == 9
    assert manifest["counts"] == {
        "AccountOpened": 2,
        "Deposited": 2,
        "Frozen": 1,
        "TransferredIn": 1,
        "TransferredOut": 1,
        "Unfrozen": 1,
        "Withdrawn": 1,
    }
    assert set(manifest["files"]) == {EVENTS_FILE[fmt], "public-keys.pem"}
    assert manifest["chain"]["first"] == {"notification_id": 1, "previous_hash": "0" * 64}
    assert manifest["chain"]["last"]["notification_id"] == 9
    assert manifest["exported_by"] == AUDITOR
    assert manifest["format"] == fmt


def test_an_export_in_jsonl_carries_every_stored_event_in_notification_order(
    settings: Settings, ledger: Ledger, tmp_path: Path
) -> None:
    small_history(ledger)
    out = export(settings, tmp_path)
    lines = [json.loads(line) for line in (out / "events.jsonl").read_text().splitlines()]
    assert [e["notification_id"] for e in lines] == list(range(1, 10))
    for line in lines:
        assert {"hash", "previous_hash", "mac", "actor", "payload", "timestamp"} <= set(line)
    notifications = ledger.recorder.select_notifications(start=None, limit=100)
    assert [n.id for n in notifications] == [e["notification_id"] for e in lines]


def test_csv_and_jsonl_carry_the_same_events_with_the_kid_of_each_mac(
    settings: Settings, ledger: Ledger, tmp_path: Path
) -> None:
    small_history(ledger)
    jsonl = export(settings, tmp_path / "j")
    as_json = [json.loads(line) for line in (jsonl / "events.jsonl").read_text().splitlines()]
    out = export(settings, tmp_path / "c", "csv")
    with (out / "events.csv").open(newline="") as data:
        rows = list(csv.DictReader(data))
    assert [r["notification_id"] for r in rows] == [str(e["notification_id"]) for e in as_json]
    assert [(r["mac"], r["mac_kid"]) for r in rows] == [(e["mac"], e["mac_kid"]) for e in as_json]
    assert all(r["mac_kid"] for r in rows)


def test_a_csv_export_without_the_kid_column_still_verifies(
    settings: Settings, ledger: Ledger, tmp_path: Path
) -> None:
    """Exports written before the column existed: the signature covers the file as written,
    so the old layout is checked as such rather than refused by its header."""
    small_history(ledger)
    out = export(settings, tmp_path, "csv")
    with (out / "events.csv").open(newline="") as data:
        rows = list(csv.reader(data))
    assert rows[0][-1] == "mac_kid"
    with (out / "events.csv").open("w", newline="") as data:
        csv.writer(data, lineterminator="\n").writerows(row[:-1] for row in rows)
    problems = verify_export(out).problems
    # The file changed under its signature and digest; no header or cell-count complaint.
    assert problems, "an edited file must not verify"
    assert not any("header" in p or "cells" in p for p in problems), problems


def test_a_range_and_an_account_export_only_their_events(
    settings: Settings, ledger: Ledger, tmp_path: Path
) -> None:
    a, _ = small_history(ledger)
    # Stamped 09:01 .. 09:08: [09:03, 09:07) holds the deposit, the transfer (2 events),
    # the withdrawal and the freeze.
    span = (T0 + timedelta(minutes=3), T0 + timedelta(minutes=7))
    out = export(settings, tmp_path, span=span)
    assert verify_export(out).problems == []
    assert json.loads((out / "manifest.json").read_text())["total"] == 5
    out = export(settings, tmp_path, "csv", account_id=a)
    assert verify_export(out).problems == []
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["account_id"] == str(a)
    assert manifest["total"] == 5  # opened, deposit, transfer out, freeze, unfreeze


@pytest.mark.parametrize("fmt", ["jsonl", "csv"])
def test_changing_one_byte_of_the_events_fails_verification(
    settings: Settings, ledger: Ledger, tmp_path: Path, fmt: str
) -> None:
    small_history(ledger)
    out = export(settings, tmp_path, fmt)
    path = out / EVENTS_FILE[fmt]
    data = bytearray(path.read_bytes())
    # The deposit's 10000 becomes 90000: still well-formed, so the hash check names it.
    # Not next to a hex digit or a hyphen: hashes and ids may hold "10000" too.
    match = re.search(rb"(?<![0-9a-f-])10000(?![0-9a-f-])", data)
    assert match is not None
    at = match.start()
    data[at] = ord("9")
    path.write_bytes(bytes(data))
    problems = verify_export(out).problems
    assert any("SHA-256 differs" in p for p in problems), problems
    assert any("hash does not recompute" in p and "version 2" in p for p in problems), problems


@pytest.mark.parametrize("fmt", ["jsonl", "csv"])
def test_removing_a_line_fails_verification(
    settings: Settings, ledger: Ledger, tmp_path: Path, fmt: str
) -> None:
    small_history(ledger)
    out = export(settings, tmp_path, fmt)
    path = out / EVENTS_FILE[fmt]
    lines = path.read_text(encoding="utf-8").splitlines(keepends=True)
    # csv: the header is line 0, and one reference spans two lines: drop the last event.
    del lines[-1 if fmt == "csv" else 4]
    path.write_text("".join(lines), encoding="utf-8")
    problems = verify_export(out).problems
    assert any("SHA-256 differs" in p for p in problems), problems
    assert any("counts per event type" in p for p in problems), problems


def test_editing_the_manifest_fails_verification(
    settings: Settings, ledger: Ledger, tmp_path: Path
) -> None:
    small_history(ledger)
    out = export(settings, tmp_path)
    path = out / "manifest.json"
    manifest = json.loads(path.read_text())
    manifest["exported_by"]["subject"] = "mallory"
    path.write_text(json.dumps(manifest, indent=2))
    problems = verify_export(out).problems
    assert any("signature does not verify" in p for p in problems), problems


def test_a_consistent_forgery_without_the_signing_key_still_fails(
    settings: Settings, ledger: Ledger, tmp_path: Path
) -> None:
    """An attacker rewrites an event, its hash and the manifest's SHA-256 and counts:
    everything recomputes, except the signature they cannot make."""
    small_history(ledger)
    out = export(settings, tmp_path)
    events = out / "events.jsonl"
    text = events.read_text().replace('"amount_minor":10000', '"amount_minor":90000')
    events.write_text(text)
    path = out / "manifest.json"
    manifest = json.loads(path.read_text())
    manifest["files"]["events.jsonl"] = hashlib.sha256(events.read_bytes()).hexdigest()
    path.write_text(json.dumps(manifest))
    problems = verify_export(out).problems
    assert any("signature does not verify" in p for p in problems), problems


def test_an_export_ends_on_the_signed_checkpoint_that_covers_it(
    settings: Settings, ledger: Ledger, tmp_path: Path
) -> None:
    small_history(ledger)
    writer = CheckpointWriter(settings, ledger, Signer.from_settings(settings))
    try:
        assert writer.resume()
        checkpoint = writer.write_next()
    finally:
        writer.close()
    assert checkpoint is not None
    # One group commit saves each account's events together: A's first, then B's. Stamped
    # before 09:04: A opened (1), A's deposit (2), B opened (6).
    out = export(settings, tmp_path, span=(T0, T0 + timedelta(minutes=4)))
    manifest = json.loads((out / "manifest.json").read_text())
    assert (manifest["total"], manifest["chain"]["last"]["notification_id"]) == (3, 6)
    assert manifest["checkpoint"] == {
        "notification_id": 9,
        "rolling_hash": checkpoint.rolling_hash,
        "time": checkpoint.time,
        "key_id": checkpoint.key_id,
        "signature": checkpoint.signature,
    }
    assert verify_export(out).problems == []


def test_an_added_file_or_a_missing_key_fails_verification(
    settings: Settings, ledger: Ledger, tmp_path: Path
) -> None:
    small_history(ledger)
    out = export(settings, tmp_path)
    (out / "extra.txt").write_text("hello")
    assert any("extra.txt is not part of the export" in p for p in verify_export(out).problems)
    (out / "extra.txt").unlink()
    (out / "public-keys.pem").write_text("")
    problems = verify_export(out).problems
    assert any("holds no key" in p for p in problems), problems


def test_the_cli_verifies_an_export_without_the_database(
    settings: Settings, ledger: Ledger, tmp_path: Path
) -> None:
    small_history(ledger)
    out = export(settings, tmp_path)
    # No VIGIL_* at all: no database, no keys, only the directory.
    env = {k: v for k, v in settings_env(settings).items() if not k.startswith("VIGIL_")}
    command = [sys.executable, "-m", "interfaces.cli", "audit", "verify-export", str(out)]
    ok = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, check=False)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert ok.stdout.startswith("OK"), ok.stdout
    events = out / "events.jsonl"
    events.write_bytes(events.read_bytes().replace(b"Ada", b"Eve", 1))
    bad = subprocess.run(
        command, cwd=tmp_path, env=env, capture_output=True, text=True, check=False
    )
    assert bad.returncode == 1, bad.stdout + bad.stderr
    assert "PROBLEM" in bad.stdout


def test_the_cli_exports_with_progress_and_a_rate(
    settings: Settings, ledger: Ledger, tmp_path: Path
) -> None:
    a, _ = small_history(ledger)
    out = tmp_path / "cli-export"
    command = [
        *(sys.executable, "-m", "interfaces.cli", "audit", "export"),
        *("--from", "2026-06-01T09:00:00Z", "--to", "2026-06-02T00:00:00Z"),
        *("--account", str(a), "--format", "csv", "--out", str(out)),
    ]
    done = subprocess.run(
        command, cwd=ROOT, env=settings_env(settings), capture_output=True, text=True, check=False
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "exported 5 events" in done.stdout
    assert "events/s" in done.stdout
    assert verify_export(out).problems == []
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["exported_by"]["role"] == "cli"
    again = subprocess.run(
        command, cwd=ROOT, env=settings_env(settings), capture_output=True, text=True, check=False
    )
    assert again.returncode == 2
    assert "exists" in again.stderr


def test_an_event_written_behind_the_apps_back_refuses_the_export_until_indexed(
    settings: Settings, ledger: Ledger, tmp_path: Path
) -> None:
    """A copy of a genuine stored event, inserted by SQL as a later version (a backdated
    movement, say): the index has no row for it, so an export found through the index
    would leave it out and still call itself complete. The export is refused, naming it,
    for every range and for its account; another account's export goes on. Once
    `vigil audit reindex` has indexed it, the export carries it."""
    a, b = small_history(ledger)
    with psycopg.connect(settings.resolved_database_url(), autocommit=True) as conn:
        inserted = conn.execute(
            "INSERT INTO public.ledger_events (originator_id, originator_version, topic, state) "
            "SELECT originator_id, 100, topic, state FROM public.ledger_events "
            "WHERE originator_id = %s AND originator_version = 2 RETURNING notification_id",
            (a,),
        ).fetchone()
    assert inserted is not None
    exports = tmp_path / "exports"
    for kwargs in ({}, {"account_id": a}, {"span": (T0 - timedelta(days=2), T0)}):
        with pytest.raises(ExportError, match=f"1 stored event.*notification id {inserted[0]}"):
            export(settings, exports, **kwargs)
    assert list(exports.iterdir()) == []  # nothing left of the refused exports
    assert verify_export(export(settings, exports, account_id=b)).problems == []

    reindexed = subprocess.run(
        [sys.executable, "-m", "interfaces.cli", "audit", "reindex"],
        cwd=ROOT,
        env=settings_env(settings),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert reindexed.returncode == 0, reindexed.stdout + reindexed.stderr
    out = export(settings, exports, account_id=a)
    lines = (out / EVENTS_FILE["jsonl"]).read_text().splitlines()
    assert inserted[0] in [json.loads(line)["notification_id"] for line in lines]
    # And the auditor's check of the export, with nothing but its files, sees the copy: its
    # hash covers the version it was first written at.
    problems = verify_export(out).problems
    assert len(problems) == 1, problems
    assert f"version 100, notification {inserted[0]}): hash does not recompute" in problems[0]


def test_an_export_is_recorded_and_never_overwrites(
    settings: Settings, ledger: Ledger, tmp_path: Path
) -> None:
    small_history(ledger)
    out = export(settings, tmp_path)
    manifest = json.loads((out / "manifest.json").read_text())
    with pytest.raises(ExportError):
        export_events(settings, *EVERYTHING, None, "jsonl", out, AUDITOR)
    with pytest.raises(ExportError):
        export_events(
            settings, EVERYTHING[1], EVERYTHING[0], None, "jsonl", tmp_path / "x", AUDITOR
        )
    with psycopg.connect(settings.resolved_database_url()) as conn:
        row = conn.execute(
            "SELECT total, exported_by_subject, directory FROM public.audit_exports "
            "WHERE export_id = %s",
            (manifest["export_id"],),
        ).fetchone()
        access = conn.execute(
            "SELECT subject, role, detail FROM public.audit_access_log "
            "WHERE action = 'audit.export'"
        ).fetchall()
    assert row == (9, "audrey", str(out.resolve()))
    assert [(s, r, d["export_id"]) for s, r, d in access] == [
        ("audrey", "auditor", manifest["export_id"])
    ]


# --- 100,000 events -------------------------------------------------------------------


def bulk_load(ledger: Ledger, events: int) -> tuple[datetime, datetime]:
    """Events straight through the aggregates and `save` (hash chain, MAC, index and all),
    skipping only the command layer's per-command bookkeeping, for speed."""
    moment = [T0]

    def stamp() -> Stamp:
        moment[0] += timedelta(milliseconds=10)
        return Stamp(TELLER, moment[0], "corr-bulk", str(uuid4()), ledger.options.mac_key)

    accounts = [
        Account.open(
            uuid4(), f"bulk-{i}", "001", "GBP", 0, stamp(), overdraft_max_minor=OVERDRAFT_MAX_MINOR
        )
        for i in range(BULK_ACCOUNTS)
    ]
    written = BULK_ACCOUNTS
    rounds = 0
    while written < events:
        for account in accounts[: min(BULK_ACCOUNTS, events - written)]:
            account.deposit(
                Money(100, "GBP"), "cash", None, stamp(), balance_max_minor=BALANCE_MAX_MINOR
            )
            written += 1
        rounds += 1
        if rounds % BULK_ROUNDS_PER_SAVE == 0:
            ledger.save(*accounts)
    ledger.save(*accounts)
    return T0, moment[0]


MEASURE = textwrap.dedent(
    """
    import json, resource, sys, time
    from datetime import datetime
    from pathlib import Path
    from infrastructure.audit.export import export_events
    from infrastructure.settings import load_settings

    settings = load_settings()
    since, small_until, until, out = sys.argv[1:5]
    who = {"subject": "bench", "role": "auditor"}
    begin = datetime.fromisoformat(since)
    export_events(settings, begin, datetime.fromisoformat(small_until), None, "jsonl",
                  Path(out) / "small", who)
    rss_small_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    started = time.perf_counter()
    manifest = export_events(settings, begin, datetime.fromisoformat(until), None, "jsonl",
                             Path(out) / "large", who)
    elapsed_s = time.perf_counter() - started
    rss_large_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(json.dumps({"total": manifest["total"], "elapsed_s": elapsed_s,
                      "rss_small_kib": rss_small_kib, "rss_large_kib": rss_large_kib}))
    """
)


def test_an_export_of_100000_events_streams_with_flat_memory(
    settings: Settings, ledger: Ledger, tmp_path: Path
) -> None:
    started = time.perf_counter()
    since, last = bulk_load(ledger, BULK_EVENTS)
    load_s = time.perf_counter() - started
    until = last + timedelta(seconds=1)
    # A fresh process: its peak RSS after a 1,000-event export, then after 100,000.
    small_until = since + timedelta(seconds=10)
    result = subprocess.run(
        [
            sys.executable,
            "-c",
            MEASURE,
            since.isoformat(),
            small_until.isoformat(),
            until.isoformat(),
            str(tmp_path),
        ],
        cwd=ROOT,
        env=settings_env(settings),
        capture_output=True,
        text=True,
        check=False,
        timeout=240,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    figures = json.loads(result.stdout.strip().splitlines()[-1])
    growth_bytes = (figures["rss_large_kib"] - figures["rss_small_kib"]) * 1024
    rate = figures["total"] / figures["elapsed_s"]
    verify_started = time.perf_counter()
    problems = verify_export(tmp_path / "large").problems
    verify_s = time.perf_counter() - verify_started
    print(
        f"\nbulk load: {BULK_EVENTS:,} events in {load_s:.1f} s; "
        f"export: {figures['total']:,} events in {figures['elapsed_s']:.1f} s "
        f"({rate:,.0f} events/s); peak RSS {figures['rss_small_kib'] / 1024:.0f} MiB after "
        f"1,000 events, {figures['rss_large_kib'] / 1024:.0f} MiB after {figures['total']:,} "
        f"(growth {growth_bytes / 2**20:.1f} MiB); verify-export "
        f"{figures['total'] / verify_s:,.0f} events/s"
    )
    assert figures["total"] == BULK_EVENTS
    assert problems == []
    assert growth_bytes < RSS_GROWTH_BYTES_MAX
