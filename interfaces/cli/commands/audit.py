"""`vigil audit verify|reindex|export|verify-export`: tamper evidence and exports, for
auditors. Exit 0 when all is well, 1 when something was found, 2 for a refused request."""

from __future__ import annotations

import argparse
import getpass
import json
import os
import sys
import time
import uuid
from typing import TYPE_CHECKING

from infrastructure.settings import Settings
from interfaces.cli.parsing import UsageError
from interfaces.cli.wording import plural

if TYPE_CHECKING:
    from infrastructure.audit.verify import VerifyReport
    from infrastructure.eventstore.index import ReindexProgress

# How often `vigil audit export` says how far it is, on stderr.
EXPORT_PROGRESS_EVERY_S = 1.0


def run_verify_cli(args: argparse.Namespace, settings: Settings) -> int:
    """`vigil audit verify [--from] [--to] [--json]`: exit 0 clean, 1 with findings."""
    from infrastructure.audit.verify import verify_store

    report = verify_store(settings, since=args.since, until=args.until)
    if args.json:
        print(json.dumps(report.as_json(), indent=2))
    else:
        print("\n".join(describe(report)))
    return 0 if report.clean else 1


def describe(report: VerifyReport) -> list[str]:
    """The report for people: each finding, what the range leaves out, then the summary."""
    lines = [
        f"{f.kind}: aggregate {f.aggregate_id or '-'} version {f.version or '-'} "
        f"notification {f.notification_id or '-'}: {f.detail}"
        for f in report.findings
    ]
    if report.findings_total > len(report.findings):
        lines.append(f"... and {report.findings_total - len(report.findings)} more")
    if report.since or report.until:
        lines.append(
            f"reported: events and checkpoints from {report.since or 'the start'} "
            f"to {report.until or 'the end'} (chains checked from the start)"
        )
    if report.events_after_last_checkpoint:
        lines.append(
            f"{report.events_after_last_checkpoint} events after the last checkpoint "
            "are not yet covered by a signature"
        )
    lines.append(report.summary)
    return lines


def run_reindex_cli(args: argparse.Namespace, settings: Settings) -> int:
    """`vigil audit reindex`: fill the event index from the store; prints the rows added.
    Exit 1, naming it, at an event that cannot be decoded."""
    from domain.errors import EventUnreadable
    from infrastructure.eventstore.index import rebuild_index

    try:
        rebuilt = rebuild_index(settings, progress=_say_reindex)
    except EventUnreadable as error:
        print(f"reindex stopped: {error}", file=sys.stderr)
        return 1
    print(
        f"added {rebuilt.rows_added:,} rows; store head {rebuilt.store_head:,}, "
        f"index head {rebuilt.index_head or 0:,}"
    )
    return 0


def _say_reindex(progress: ReindexProgress) -> None:
    rate = progress.events_read / max(progress.elapsed_s, 1e-9)
    if progress.stage == "started":
        line = "rebuilding the event index from the event store…"
    elif progress.stage == "running":
        line = (
            f"  indexed up to {progress.indexed_up_to:,} of {progress.head:,} "
            f"({rate:,.0f} events/s)"
        )
    else:
        line = (
            f"reindex: {progress.events_read:,} events without a row, "
            f"{progress.rows_added:,} rows added in {progress.elapsed_s:.1f} s "
            f"({rate:,.0f} events/s)"
        )
    print(line, flush=True)


def cli_actor() -> dict[str, str]:
    """Who runs `vigil audit export` from a shell: the operating-system user."""
    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = f"uid-{os.getuid()}"
    return {"subject": f"cli:{user}", "role": "cli"}


def run_export_cli(args: argparse.Namespace, settings: Settings) -> int:
    """`vigil audit export --from --to [--account] [--format] --out DIR`."""
    from domain.errors import EventUnreadable
    from infrastructure.audit.export import ExportError, export_events

    started = time.monotonic()
    last_said = [started]

    def say(done: int) -> None:
        now = time.monotonic()
        if now - last_said[0] >= EXPORT_PROGRESS_EVERY_S:
            last_said[0] = now
            rate = done / max(now - started, 1e-9)
            print(f"  exported {done:,} events ({rate:,.0f} events/s)", file=sys.stderr)

    account_id = None if args.account is None else uuid.UUID(args.account)
    try:
        manifest = export_events(
            settings,
            args.since,
            args.until,
            account_id,
            args.format,
            args.out,
            cli_actor(),
            progress=say,
        )
    except ExportError as error:
        print(f"export refused: {error}", file=sys.stderr)
        return 2
    except EventUnreadable as error:
        print(f"export failed: {error}", file=sys.stderr)
        return 1
    elapsed_s = time.monotonic() - started
    total = manifest["total"]
    print(
        f"exported {total:,} events to {args.out} in {elapsed_s:.1f} s "
        f"({total / max(elapsed_s, 1e-9):,.0f} events/s); "
        f"manifest signed by key {manifest['key_id']}"
    )
    return 0


def run_verify_export_cli(args: argparse.Namespace, settings: Settings) -> int:
    """`vigil audit verify-export DIR`: OK and exit 0, or every problem and exit 1."""
    from infrastructure.audit.export import verify_export

    if not args.directory.is_dir():
        raise UsageError(f"{args.directory}: no such directory (give the export's directory)")
    check = verify_export(args.directory)
    if not check.verified:
        unlisted = [f"... and {plural(check.unlisted, 'more problem')}"] if check.unlisted else []
        problems = [*check.problems, *unlisted]
        for problem in problems:
            print(f"PROBLEM {problem}")
        print(f"FAILED: {plural(len(problems), 'problem')} in {args.directory}")
        return 1
    assert check.manifest is not None, "an export that verifies has a manifest"
    print(
        f"OK: {check.manifest['total']:,} events, every file matches its SHA-256, every hash "
        f"recomputes, the manifest signature verifies with key {check.manifest['key_id']} "
        "(compare it with the bank's published key id)"
    )
    return 0
