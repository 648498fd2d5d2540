"""`vigil audit verify|reindex|export|verify-export`: tamper evidence and exports, for
auditors. Exit 0 when all is well, 1 when something was found, 2 for a refused request."""

from __future__ import annotations

import argparse
import json
from typing import TYPE_CHECKING

from infrastructure.settings import Settings
from interfaces.cli.parsing import UsageError

if TYPE_CHECKING:
    from infrastructure.audit.verify import VerifyReport
    from infrastructure.eventstore.index import ReindexProgress


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
    """`vigil audit reindex`: fill the event index from the store; prints the rows added."""
    from infrastructure.eventstore.index import rebuild_index

    rebuilt = rebuild_index(settings, progress=_say_reindex)
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


def run_export_cli(args: argparse.Namespace, settings: Settings) -> int:
    """`vigil audit export --from --to [--account] [--format] --out DIR`."""
    from infrastructure.audit.export import run_export_cli

    return run_export_cli(args, settings)


def run_verify_export_cli(args: argparse.Namespace, settings: Settings) -> int:
    """`vigil audit verify-export DIR`: OK and exit 0, or every problem and exit 1."""
    from infrastructure.audit.export import run_verify_export_cli

    if not args.directory.is_dir():
        raise UsageError(f"{args.directory}: no such directory (give the export's directory)")
    return run_verify_export_cli(args, settings)
