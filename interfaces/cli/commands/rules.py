"""`vigil rules backtest`: a candidate rule configuration over the event history, and
how its alerts differ from the live configuration's."""

from __future__ import annotations

import argparse
from collections import Counter
from typing import TYPE_CHECKING

from infrastructure.settings import Settings
from interfaces.cli.parsing import UsageError
from interfaces.cli.wording import plural

if TYPE_CHECKING:
    from infrastructure.monitoring.backtest import BacktestProgress, Report


def run_backtest_cli(args: argparse.Namespace, settings: Settings) -> int:
    """`vigil rules backtest --config FILE [--from] [--to] [--examples N]`."""
    from infrastructure.monitoring.backtest import run_backtest

    if not args.config.is_file():
        raise UsageError(f"--config {args.config}: no such file")
    print(f"back-testing {args.config} against the event store…", flush=True)
    report = run_backtest(
        settings, args.config, since=args.since, until=args.until, progress=_say_progress
    )
    print("\n".join(describe(report, args.examples)))
    return 0


def _say_progress(progress: BacktestProgress) -> None:
    rate = progress.events / progress.elapsed_s
    print(
        f"  scored {progress.scored_up_to:,} of {progress.head:,} ({rate:,.0f} events/s)",
        flush=True,
    )


def describe(report: Report, examples_max: int = 5) -> list[str]:
    """The report for people: totals, then what only one side raised, with examples."""
    from infrastructure.monitoring.backtest import SHADOW_TABLE

    rate = report.events / report.seconds if report.seconds else float(report.events)
    lines = [
        f"scored {report.events:,} events in {report.seconds:.1f} s ({rate:,.0f} events/s)",
        f"live configuration: {plural(len(report.live), 'alert')}; "
        f"candidate: {plural(len(report.candidate), 'alert')} (in {SHADOW_TABLE})",
    ]
    for title, hits in (
        ("raised by the candidate only", report.only_candidate),
        ("raised by the live configuration only", report.only_live),
    ):
        per_rule = Counter(h.rule for h in hits)
        summary = ", ".join(f"{rule} {n}" for rule, n in sorted(per_rule.items())) or "none"
        lines.append(f"{title}: {len(hits)} ({summary})")
        for hit in hits[:examples_max]:
            lines.append(
                f"  {hit.rule} account {hit.account_id} at #{hit.notification_id} "
                f"({hit.raised_at:%Y-%m-%d %H:%M:%S}): {hit.explanation}"
            )
    if not report.only_candidate and not report.only_live:
        lines.append("no difference")
    lines.append(
        f"screening would have held for review: live {report.live_screened.describe()}; "
        f"candidate {report.candidate_screened.describe()}"
    )
    return lines
