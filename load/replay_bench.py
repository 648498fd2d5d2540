"""How fast `vigil replay` rebuilds every read model from a store of
busy accounts, the case an auditor meets (a day of each account's movements in its rule
window).

Starts a PostgreSQL of its own under `var/replay-bench/run-<time>/`, writes --events
stored events with COPY (--accounts accounts opened, then deposits into them in turn, a
few milliseconds apart, so every account's window holds all its movements), and times a
replay of every projection into the shadow schema. Prints progress, then events/s, and
writes JSON to --out (default var/replay-bench/latest.json).

    python load/replay_bench.py [--events 200000] [--accounts 1000]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import shutil
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from uuid import uuid4

import psycopg

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench import RULES
from bench_system import start_tool

from domain.account import Account
from domain.integrity import Actor, Stamp
from domain.money import Money, minor_units
from infrastructure.eventstore.ledger import open_ledger
from infrastructure.eventstore.schema import EVENTS_TABLE
from infrastructure.ops.postgres_server import start_postgres
from infrastructure.ops.replay import SHADOW_SCHEMA, ReplayProgress, replay
from infrastructure.readmodels.schema import ALL_PROJECTIONS
from infrastructure.settings import Settings, load_settings
from infrastructure.workers.projections import migrate_read_models

TELLER_SUBJECT = "replay-bench"
STEP = timedelta(milliseconds=5)  # between deposits: 200,000 of them within 17 minutes


def _say(line: str = "") -> None:
    print(line, flush=True)


def bulk_load(settings: Settings, events: int, accounts: int) -> int:
    """`events` stored events written with COPY, as the ledger's mapper encodes them:
    `accounts` accounts opened, then deposited into in turn. Returns how many."""
    ledger = open_ledger(settings)
    mac_key = settings.audit_mac_key_resolved()
    actor = Actor(TELLER_SUBJECT, "teller")
    moment = datetime.now(UTC) - timedelta(hours=1)
    balance_max = minor_units(settings.balance_max, "GBP")
    overdraft_max = minor_units(settings.overdraft_max, "GBP")
    opened = [
        Account.open(
            uuid4(),
            "Ada",
            "001",
            "GBP",
            0,
            Stamp(actor, moment, "bulk", None, mac_key),
            overdraft_max_minor=overdraft_max,
        )
        for _ in range(accounts)
    ]
    written = 0
    columns = "originator_id, originator_version, topic, state"
    try:
        with (
            psycopg.connect(settings.resolved_database_url()) as conn,
            conn.cursor() as cursor,
            cursor.copy(f"COPY {EVENTS_TABLE} ({columns}) FROM STDIN") as copy,
        ):
            for round_number in range(max(1, events // accounts)):
                for index, account in enumerate(opened):
                    if round_number:
                        moment += STEP
                        stamp = Stamp(actor, moment, "bulk", str(uuid4()), mac_key)
                        amount = Money(100 + index, "GBP")
                        account.deposit(amount, "cash", None, stamp, balance_max_minor=balance_max)
                    (event,) = account.collect_events()
                    stored = ledger.mapper.to_stored_event(event)
                    version = stored.originator_version
                    copy.write_row((stored.originator_id, version, stored.topic, stored.state))
                    written += 1
                if round_number % 20 == 0:
                    _say(f"  loaded {written:,} events")
    finally:
        ledger.close()
    return written


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="replay_bench", description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=200_000)
    parser.add_argument("--accounts", type=int, default=1_000)
    parser.add_argument("--keep", action="store_true", help="keep the run's data directory")
    parser.add_argument("--out", type=Path, default=Path("var/replay-bench/latest.json"))
    args = parser.parse_args(argv)
    if not 1 <= args.accounts <= 100_000 or not args.accounts <= args.events <= 5_000_000:
        parser.error("--accounts 1 .. 100,000; --events from --accounts to 5,000,000")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    started_at, run_dir = start_tool("replay-bench")
    run_dir.mkdir(parents=True)
    _say(f"starting PostgreSQL in {run_dir}")
    postgres = start_postgres(run_dir)
    try:
        settings = load_settings(
            var_dir=run_dir, env="development", database_url=postgres.url, rules_config=RULES
        )
        settings.dev_keys()
        asyncio.run(migrate_read_models(settings))
        _say(f"loading {args.events:,} events over {args.accounts:,} accounts")
        began = time.monotonic()
        events = bulk_load(settings, args.events, args.accounts)
        _say(f"loaded in {time.monotonic() - began:.1f} s; replaying every projection")

        def progress(p: ReplayProgress) -> None:
            if p.stage == "running":
                rate = p.events / p.elapsed_s if p.elapsed_s else 0.0
                _say(f"  {p.events:,} of {p.head:,} events, {rate:,.0f}/s")

        began = time.monotonic()
        replayed = replay(settings, ALL_PROJECTIONS, SHADOW_SCHEMA, progress)
        seconds = time.monotonic() - began
    finally:
        postgres.stop()
        if not args.keep:
            with contextlib.suppress(OSError):
                shutil.rmtree(run_dir)
    result = {
        "started_at": started_at.isoformat(timespec="seconds"),
        "events": events,
        "accounts": args.accounts,
        "replayed": replayed,
        "seconds": round(seconds, 1),
        "events_per_s": round(replayed / seconds, 1) if seconds else 0.0,
    }
    _say(f"replayed {replayed:,} events in {seconds:.1f} s: {result['events_per_s']:,}/s")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    _say(f"written to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
