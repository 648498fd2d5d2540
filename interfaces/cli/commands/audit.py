"""`vigil audit verify|reindex|export|verify-export`: tamper evidence and exports, for
auditors. Exit 0 when all is well, 1 when something was found, 2 for a refused request."""

from __future__ import annotations

import argparse

from infrastructure.settings import Settings
from interfaces.cli.parsing import UsageError


def run_verify_cli(args: argparse.Namespace, settings: Settings) -> int:
    """`vigil audit verify [--from] [--to] [--json]`: exit 0 clean, 1 with findings."""
    from infrastructure.audit.verify import run_verify_cli

    return run_verify_cli(args, settings)


def run_reindex_cli(args: argparse.Namespace, settings: Settings) -> int:
    """`vigil audit reindex`: fill the event index from the store; prints the rows added."""
    from infrastructure.eventstore.index import run_reindex_cli

    return run_reindex_cli(args, settings)


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
