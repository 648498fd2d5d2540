"""`vigil quarantine list|retry`: the events a projection or the relay set aside, and
applying them again once the cause is fixed (exit 1 while any still fails)."""

from __future__ import annotations

import argparse
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from infrastructure.settings import Settings
from interfaces.cli.wording import plural

T = TypeVar("T")


def run_list_cli(args: argparse.Namespace, settings: Settings) -> int:
    """`vigil quarantine list [--all] [--json]`: one entry (or JSON object) each."""
    import asyncio
    import json

    from infrastructure.ops.quarantine import list_quarantined

    items = asyncio.run(_with_connection(settings, lambda c: list_quarantined(c, args.all)))
    if args.json:
        for item in items:
            print(json.dumps({**vars(item)}, default=str))
        return 0
    if not items:
        print("no quarantined events" + ("" if args.all else " waiting"))
        return 0
    for item in items:
        state = "resolved" if item.resolved_at else "waiting"
        where = f"notification {item.notification_id}" if item.notification_id else "message"
        print(
            f"{item.quarantined_at:%Y-%m-%dT%H:%M:%SZ}  {item.consumer:<12} {where}  "
            f"{item.event_type}  {item.aggregate_id or '-'} v{item.version or '-'}  {state}"
        )
        print(f"    {item.error}")
    waiting = plural(len(items), "quarantined event")
    print(f"{waiting}; `vigil quarantine retry` once the cause is fixed")
    return 0


def run_retry_cli(args: argparse.Namespace, settings: Settings) -> int:
    """`vigil quarantine retry [--consumer] [--id]`: each outcome, then the tally."""
    import asyncio

    from infrastructure.eventstore.ledger import open_ledger
    from infrastructure.ops.quarantine import RetryOutcome, retry_quarantined

    def say(outcome: RetryOutcome) -> None:
        verdict = "applied" if outcome.resolved else f"still failing: {outcome.error}"
        print(f"{outcome.consumer} notification {outcome.notification_id}: {verdict}", flush=True)

    ledger = open_ledger(settings)
    try:
        outcomes = asyncio.run(
            _with_connection(
                settings,
                lambda c: retry_quarantined(settings, ledger, c, args.consumer, args.id, say),
            )
        )
    finally:
        ledger.close()
    failed = sum(1 for o in outcomes if not o.resolved)
    print(f"{len(outcomes) - failed} applied, {failed} still quarantined")
    return 1 if failed else 0


async def _with_connection(settings: Settings, use: Callable[[Any], Awaitable[T]]) -> T:
    from infrastructure.postgres.connect import connect_async

    async with await connect_async(settings, "cli", autocommit=True) as conn:
        return await use(conn)
