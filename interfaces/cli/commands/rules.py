"""`vigil rules backtest`: a candidate rule configuration over the event history, and
how its alerts differ from the live configuration's."""

from __future__ import annotations

import argparse

from infrastructure.settings import Settings
from interfaces.cli.parsing import UsageError


def run_backtest_cli(args: argparse.Namespace, settings: Settings) -> int:
    """`vigil rules backtest --config FILE [--from] [--to] [--examples N]`."""
    from infrastructure.monitoring.backtest import describe, run_backtest

    if not args.config.is_file():
        raise UsageError(f"--config {args.config}: no such file")
    print(f"back-testing {args.config} against the event store…", flush=True)
    report = run_backtest(
        settings,
        args.config,
        since=args.since,
        until=args.until,
        say=lambda line: print(line, flush=True),
    )
    print("\n".join(describe(report, args.examples)))
    return 0
