"""`make bench`: what users of Vigil feel on this machine, beside a baseline measured in the
same run.

Starts the system under `var/bench/run-<time>/` on free ports, process by process as `vigil up`
does (embedded PostgreSQL, Redis and broker; both APIs, the relay, the projection workers, the
case opener; the monitoring rules of load/bench_rules.toml), then runs these phases, each
starting only once every projection has caught up (`GET /v1/projections`, every position at
the head):

1. baseline: a plain `eventsourcing` application saving one transfer per transaction
   (bench_baseline.py), on a fresh database of the same PostgreSQL, while Vigil sits idle;
2. setup: opens --accounts accounts (branch 001, GBP) and funds each;
3. capacity (the headline): an open-loop load over the accounts (80 % transfers, 10 % deposits,
   10 % withdrawals; 30 % of them single commands, 70 % in batches of 100) offered at each of
   --rates transfers/s for --step-s, stopping at the first step that does not hold: balances
   and alerts lag p95 under 1 s, at most 1 % of its requests failed or not sent on time;
4. ingestion: --batch-clients clients sending `POST /v1/batches` of 1,000 transfers for
   --ingestion-s, with the relay and the workers stopped;
5. catch-up: the relay and the workers started again, until every projection holds that backlog;
6. single: single commands of the same mix, open loop, at each of --single-rates commands/s;
7. storm: the workers started again with load/bench_storm_rules.toml (every movement alerts),
   the capacity load at --storm-rate for --storm-s.

Every phase reports CPU per transfer of each process and alerts and cases per 1,000 transfers.
It prints progress lines and a table, writes JSON in the API contract's shape to --out, and
stops everything it started, also on Ctrl-C, SIGTERM or an error. Loopback only.

    python load/bench.py [--quick] [--out var/bench/latest.json]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import shutil
import signal
import sys
import time
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
import psycopg
import uvloop

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_baseline import run_baseline
from bench_figures import (
    Sample,
    alert_rates,
    build_result,
    capacity,
    catch_up_rate,
    cpu_us_per_transfer,
    lag_stats,
    latency_ms,
    step_verdict,
)
from bench_load import (
    AMOUNT_MINOR_MAX,
    BATCH_ITEMS,
    BRANCH,
    CURRENCY,
    FUNDING_AMOUNT,
    FUNDINGS,
    LARGE_AMOUNT,
    LARGE_SHARE,
    Stream,
    Tally,
    batch_load,
    fund_accounts,
    mixed_streams,
    open_accounts,
    open_loop,
)
from bench_options import parse_args
from bench_report import loadavg, machine, print_table
from bench_system import (
    BENCH_RATE_LIMITS,
    OWN_VARIABLES,
    TRANSPORT_ERRORS,
    BenchFailed,
    Http,
    System,
    baseline_database,
    cpu_percent,
    reply_code,
)

from infrastructure.readmodels.schema import SCHEMA
from infrastructure.runtime import tune_gc
from infrastructure.settings import Settings, load_settings
from interfaces.api.http.tokens import issue_token

HERE = Path(__file__).resolve().parent
RULES, STORM_RULES = HERE / "bench_rules.toml", HERE / "bench_storm_rules.toml"
PIPELINE_PROJECTIONS = ("balances", "alerts")
SETUP_TIMEOUT_S = 300.0
BACKLOG_CATCH_UP_MAX_S = 300.0  # the catch-up phase's own bound
SAMPLE_INTERVAL_S = 0.25
PROGRESS_EVERY_S = 5.0
TOKEN_TTL_S = 4 * 3600  # longer than any run can last
BASELINE_THREADS, BASELINE_ACCOUNTS = 4, 1_000


# Projections: positions sampled, lag derived ---------------------------------------------------


@dataclass
class Pipeline:
    """Samples `GET /v1/projections` every SAMPLE_INTERVAL_S for the whole run; the lag is
    derived from the samples (bench_figures.lag_stats)."""

    query: Http
    samples: list[Sample] = field(default_factory=list)
    errors: Counter[str] = field(default_factory=Counter)

    async def run(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            sent_s = time.monotonic()
            try:
                status, reply = await self.query.request("GET", "/v1/projections")
            except TRANSPORT_ERRORS as error:
                self.errors[type(error).__name__] += 1
            else:
                if status == 200:
                    self.samples.append(_sample(reply, (sent_s + time.monotonic()) / 2))
                else:
                    self.errors[reply_code(status, reply)] += 1
            pause_s = SAMPLE_INTERVAL_S - (time.monotonic() - sent_s)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), max(0.0, pause_s))
        self.query.close()

    async def catch_up(self, after_s: float, timeout_s: float) -> bool:
        """Until every projection holds everything written before `after_s`, or timeout_s."""
        deadline_s = time.monotonic() + timeout_s
        while time.monotonic() < deadline_s:
            later = [s for s in self.samples if s.t_s > after_s]
            if later and later[-1].slowest >= later[0].head:
                return True
            await asyncio.sleep(0.05)
        return False

    def lag_now_s(self) -> float:
        """How long ago the newest head the balances and alerts position has reached was seen."""
        if not self.samples:
            return 0.0
        last = self.samples[-1]
        seen = [s.t_s for s in self.samples if s.head <= last.position]
        return max(0.0, last.t_s - max(seen)) if seen else last.t_s - self.samples[0].t_s


def _sample(reply: bytes, t_s: float) -> Sample:
    data = orjson.loads(reply)
    positions = {item["name"]: int(item["position"]) for item in data["items"]}
    position = min(positions.get(name, 0) for name in PIPELINE_PROJECTIONS)
    return Sample(t_s, int(data["head"]), position, min(positions.values(), default=0))


# Phases ----------------------------------------------------------------------------------------


def _say(line: str = "") -> None:
    print(line, flush=True)


@dataclass
class Run:
    """What every phase needs: the system, its sampler, the accounts, the tokens."""

    system: System
    pipeline: Pipeline
    args: argparse.Namespace
    api: str
    teller: str
    ids: list[str]

    def counts(self) -> tuple[int, int]:
        """Alerts and cases in the read models so far."""
        url = str(self.system.info["database_url"])
        with psycopg.connect(url, connect_timeout=5) as conn:
            alerts = conn.execute(f"SELECT count(*) FROM {SCHEMA}.alerts").fetchone()
            cases = conn.execute(f"SELECT count(*) FROM {SCHEMA}.cases").fetchone()
        return int(alerts[0] if alerts else 0), int(cases[0] if cases else 0)

    async def measured(
        self,
        label: str,
        load: Callable[[Tally], Awaitable[None]],
        seconds: float,
        *,
        catch_up: bool = True,
    ) -> dict[str, Any]:
        """Run one load, wait for the projections, and give its figures."""
        tally = Tally()
        alerts_before, cases_before = self.counts()
        cpu_before, started_s = self.system.cpu_seconds(), time.monotonic()
        progress = asyncio.create_task(self._progress(label, tally, started_s, seconds))
        try:
            await load(tally)
        finally:
            progress.cancel()
        ended_s = time.monotonic()
        cpu_after = self.system.cpu_seconds()
        caught = True
        if catch_up:
            caught = await self.pipeline.catch_up(ended_s, self.args.catch_up_max_s)
        alerts_after, cases_after = self.counts()
        wall_s = ended_s - started_s
        failed = sum(tally.errors.values())
        return {
            "transfers_per_s": round(tally.transfers / wall_s, 1),
            "transfers": tally.transfers,
            "items_ok": tally.ok,
            "requests": tally.requests,
            "scheduled": tally.scheduled,
            "late": tally.late,
            "late_unsent": tally.unsent,
            "failed": failed,
            **latency_ms(tally.latencies_ms),
            "seconds": round(wall_s, 3),
            "refused": dict(tally.refused),
            "errors": dict(tally.errors),
            **lag_stats(self.pipeline.samples, started_s, ended_s),
            "caught_up": caught,
            "cpu_percent": cpu_percent(cpu_before, cpu_after, wall_s),
            "cpu_us_per_transfer": cpu_us_per_transfer(cpu_before, cpu_after, tally.transfers),
            "alerts": alerts_after - alerts_before,
            "cases": cases_after - cases_before,
            **alert_rates(
                alerts_after - alerts_before, cases_after - cases_before, tally.transfers
            ),
        }

    async def _progress(self, label: str, tally: Tally, started_s: float, seconds: float) -> None:
        while True:
            await asyncio.sleep(PROGRESS_EVERY_S)
            elapsed_s = time.monotonic() - started_s
            _say(
                f"  {label}: {elapsed_s:.0f}/{seconds:.0f} s, {tally.transfers / elapsed_s:,.0f}"
                f" transfers/s accepted, lag now {self.pipeline.lag_now_s():.1f} s"
                + (f", {_late(tally.late, tally.unsent)}" if tally.late else "")
                + (f", {sum(tally.errors.values())} failed" if tally.errors else "")
            )

    def open_loop(
        self, streams: list[Stream], seconds: float
    ) -> Callable[[Tally], Awaitable[None]]:
        return lambda tally: open_loop(self.api, self.teller, self.ids, streams, seconds, tally)


def _late(late: int, unsent: int) -> str:
    """`N late`, and how many of them found every connection waiting for a reply."""
    return f"{late} late ({unsent} with no connection free)" if unsent else f"{late} late"


def _describe(phase: dict[str, Any]) -> str:
    problems = {**phase["refused"], **phase["errors"]}
    return (
        f"{phase['transfers']:,} transfers ({phase['transfers_per_s']:,.0f}/s), p95"
        f" {phase['p95_ms']} ms, lag p95 {phase.get('lag_p95_s')} s, "
        f"{phase['alerts_per_1000_transfers']} alerts per 1,000 transfers"
        + (f", {_late(phase['late'], phase['late_unsent'])}" if phase["late"] else "")
        + (f"; refused/failed {problems}" if problems else "")
        + ("" if phase["caught_up"] else "; projections not caught up")
    )


async def run_capacity(run: Run) -> dict[str, Any]:
    steps: list[dict[str, Any]] = []
    for rate in run.args.rates:
        seconds = run.args.step_s
        _say(f"capacity: step {len(steps) + 1}, {rate:,} transfers/s offered, {seconds:.0f} s")
        load = run.open_loop(mixed_streams(rate), seconds)
        step = await run.measured(f"capacity {rate:,}/s", load, seconds)
        held, why = step_verdict(step)
        steps.append({"offered_transfers_per_s": rate, **step, "held": held, "verdict": why})
        _say(f"  {_describe(step)}: {why}")
        if not held:
            break
    return capacity(steps)


async def run_ingestion(run: Run) -> dict[str, Any]:
    args = run.args
    _say("ingestion: relay and workers stopped")
    run.system.stop("relay")
    run.system.stop("workers")
    clients, seconds = args.batch_clients, args.ingestion_s
    _say(f"ingestion: {clients} clients, batches of {BATCH_ITEMS:,} transfers, {seconds:.0f} s")

    async def load(tally: Tally) -> None:
        deadline_s = time.monotonic() + args.ingestion_s
        await batch_load(run.api, run.teller, run.ids, args.batch_clients, deadline_s, tally)

    phase = await run.measured("ingestion", load, args.ingestion_s, catch_up=False)
    phase = {k: v for k, v in phase.items() if not k.startswith("lag_") and k != "catch_up_s"}
    phase |= {"clients": args.batch_clients, "items_per_batch": BATCH_ITEMS}
    rate = f"{phase['transfers_per_s']:,.0f}/s"
    _say(f"  {phase['transfers']:,} transfers ({rate}), p99 {phase['p99_ms']} ms per batch")
    return phase


async def run_catch_up(run: Run, transfers: int) -> dict[str, Any]:
    _say("catch-up: relay and workers started again, nothing else running")
    system = run.system
    alerts_before, cases_before = run.counts()
    cpu_before, started_s = system.cpu_seconds(), time.monotonic()
    await asyncio.to_thread(system.start, "relay")
    ready_s = await asyncio.to_thread(system.start, "workers")
    caught = await _caught_up_with_progress(run, BACKLOG_CATCH_UP_MAX_S)
    ended_s = time.monotonic()
    cpu_after = system.cpu_seconds()
    alerts_after, cases_after = run.counts()
    rate = catch_up_rate(run.pipeline.samples, ready_s)
    phase = rate | {
        "caught_up": caught,
        "workers_ready_after_s": round(ready_s - started_s, 2),
        "seconds_with_start": round(ended_s - started_s, 2),
        "transfers": transfers,
        "cpu_percent": cpu_percent(cpu_before, cpu_after, ended_s - started_s),
        "cpu_us_per_transfer": cpu_us_per_transfer(cpu_before, cpu_after, transfers),
        "alerts": alerts_after - alerts_before,
        "cases": cases_after - cases_before,
        **alert_rates(alerts_after - alerts_before, cases_after - cases_before, transfers),
    }
    _say(f"  {phase['events']:,} events in {phase['seconds']} s: {phase['events_per_s']} events/s")
    return phase


async def _caught_up_with_progress(run: Run, timeout_s: float) -> bool:
    started_s = time.monotonic()
    while time.monotonic() - started_s < timeout_s:
        if await run.pipeline.catch_up(time.monotonic(), min(PROGRESS_EVERY_S, timeout_s)):
            return True
        last = run.pipeline.samples[-1] if run.pipeline.samples else None
        if last is not None:
            _say(f"  catch-up: {last.head - last.slowest:,} events behind")
    return False


async def run_single(run: Run) -> list[dict[str, Any]]:
    runs = []
    for rate in run.args.single_rates:
        _say(f"single: {rate:,} commands/s offered, open loop, {run.args.single_s:.0f} s")
        seconds = run.args.single_s
        load = run.open_loop([Stream(rate, 1)], seconds)
        phase = await run.measured(f"single {rate:,}/s", load, seconds)
        achieved = round(phase["items_ok"] / phase["seconds"], 1)
        runs.append({"offered_per_s": rate, "achieved_per_s": achieved, **phase})
        _say(
            f"  {achieved:,.0f} commands/s, p50 {phase['p50_ms']} ms, p95 {phase['p95_ms']} ms,"
            f" p99 {phase['p99_ms']} ms (from the scheduled send)"
        )
    return runs


async def run_storm(run: Run) -> dict[str, Any]:
    args = run.args
    _say(f"storm: workers started again with {STORM_RULES.name} (every movement alerts)")
    run.system.stop("workers")
    await asyncio.to_thread(run.system.start, "workers", STORM_RULES)
    await run.pipeline.catch_up(time.monotonic(), args.catch_up_max_s)
    _say(f"storm: {args.storm_rate:,} transfers/s offered, {args.storm_s:.0f} s")
    streams = mixed_streams(args.storm_rate)
    phase = await run.measured("storm", run.open_loop(streams, args.storm_s), args.storm_s)
    phase = {"offered_transfers_per_s": args.storm_rate, **phase}
    _say(f"  {_describe(phase)}, {phase['cases_per_1000_transfers']} cases per 1,000")
    return phase


async def measure(system: System, settings: Settings, args: argparse.Namespace) -> dict[str, Any]:
    run_id = uuid.uuid4().hex[:8]
    subject = f"bench-{run_id}"
    teller = issue_token(settings, role="teller", branch=BRANCH, subject=subject, ttl_s=TOKEN_TTL_S)
    admin = issue_token(settings, role="admin", subject=subject, ttl_s=TOKEN_TTL_S)
    api = str(system.info["command_api"])
    pipeline = Pipeline(Http(str(system.info["query_api"]), admin))
    stop = asyncio.Event()
    sampler = asyncio.create_task(pipeline.run(stop))
    try:
        funding = f"{FUNDINGS} deposits of {FUNDING_AMOUNT} {CURRENCY}"
        _say(f"setup: {args.accounts:,} accounts, each funded with {funding}")
        started_s = time.monotonic()
        try:
            opening = open_accounts(api, teller, args.accounts, run_id)
            ids = await asyncio.wait_for(opening, SETUP_TIMEOUT_S)
            await asyncio.wait_for(fund_accounts(api, teller, ids), SETUP_TIMEOUT_S)
        except TimeoutError:
            raise BenchFailed(f"setup took longer than {SETUP_TIMEOUT_S:.0f} s") from None
        await pipeline.catch_up(time.monotonic(), SETUP_TIMEOUT_S)
        setup_s = time.monotonic() - started_s
        _say(f"  done in {setup_s:.1f} s")
        run = Run(system, pipeline, args, api, teller, ids)
        phases: dict[str, Any] = {"capacity": await run_capacity(run)}
        phases["ingestion"] = await run_ingestion(run)
        phases["catch_up"] = await run_catch_up(run, phases["ingestion"]["transfers"])
        phases["single"] = await run_single(run)
        phases["storm"] = await run_storm(run)
    finally:
        stop.set()
        sampler.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await sampler
    return phases | {"setup_s": setup_s, "sampler_errors": dict(pipeline.errors)}


# Main ------------------------------------------------------------------------------------------


def _baseline(system: System, seconds: float) -> dict[str, Any]:
    _say(f"baseline: plain eventsourcing, {BASELINE_THREADS} threads, {seconds:.0f} s")
    url = baseline_database(str(system.info["database_url"]), system.postgres.admin_url)
    before, started_s = system.cpu_seconds(), time.monotonic()
    result = run_baseline(url, seconds, BASELINE_THREADS, BASELINE_ACCOUNTS)
    # Includes opening and funding its accounts; its rate does not.
    result["cpu_percent"] = cpu_percent(before, system.cpu_seconds(), time.monotonic() - started_s)
    _say(f"  {result['transfers']:,} transfers, {result['transfers_per_s']:,.0f}/s")
    return result


def _conditions(args: argparse.Namespace, setup_s: float) -> dict[str, Any]:
    return {
        "accounts": args.accounts,
        "quick": args.quick,
        "rates": list(args.rates),
        "step_s": args.step_s,
        "ingestion_s": args.ingestion_s,
        "single_rates": list(args.single_rates),
        "single_s": args.single_s,
        "storm_rate": args.storm_rate,
        "storm_s": args.storm_s,
        "baseline_s": args.baseline_s,
        "command_workers": args.command_workers,
        "workers_processes": args.workers_processes,
        "mix": "80 % transfers, 10 % deposits, 10 % withdrawals; 30 % single commands, 70 % in"
        " batches of 100 (capacity, storm); single commands only (single); batches of 1,000"
        " transfers (ingestion)",
        "funding": f"{FUNDINGS} deposits of {FUNDING_AMOUNT} {CURRENCY} per account",
        "amounts": f"0.01 to {AMOUNT_MINOR_MAX / 100:.2f} {CURRENCY}; {LARGE_SHARE:.0%} of "
        f"transfers {LARGE_AMOUNT}",
        "alert_rules": f"{RULES.name}: {LARGE_SHARE:.0%} of transfers alert (large_transaction"
        f" at {LARGE_AMOUNT} {CURRENCY}); storm: {STORM_RULES.name}",
        # Set by the benchmark (0: off) unless the environment sets them.
        "rate_limits": {
            name: os.environ.get(name, value) for name, value in BENCH_RATE_LIMITS.items()
        },
        "setup_s": round(setup_s, 1),
        "phase_order": [
            "baseline", "setup", "capacity", "ingestion", "catch_up", "single", "storm"
        ],
        "lag_method": (
            f"GET /v1/projections every {SAMPLE_INTERVAL_S} s; a sample's lag is the time until "
            "the lower of the balances and alerts positions reached that sample's head "
            "(interpolated between samples)"
        ),
        "vigil_settings_from_environment": sorted(
            k for k in os.environ if k.startswith("VIGIL_") and k not in OWN_VARIABLES
        ),
    }  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv, (__doc__ or "").split("\n\n")[0])
    # SIGTERM and SIGHUP end the run as Ctrl-C does: through every `finally` below.
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    signal.signal(signal.SIGHUP, signal.default_int_handler)
    # The load generator shares the cores with what it measures: it collects garbage as
    # seldom as the system's own processes do.
    tune_gc()
    started_at = datetime.now(UTC)
    run_dir = (Path("var/bench") / f"run-{started_at:%Y%m%d-%H%M%S}").resolve()
    loadavg_before, started_s = loadavg(), time.monotonic()
    system = System(run_dir, RULES, args.command_workers, args.workers_processes)
    _say(f"starting the system in {run_dir}")
    try:
        with system.running():
            info = system.info
            _say(f"  up: command API {info['command_api']}, query API {info['query_api']}")
            settings = load_settings(var_dir=run_dir, env="development")
            baseline = _baseline(system, args.baseline_s)
            # uvloop, as the servers' own event loops: the load generator spends less of
            # the cores it shares with what it measures.
            with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
                measured = runner.run(measure(system, settings, args))
    except BenchFailed as error:
        print(f"bench: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("bench: interrupted; everything it started is stopped", file=sys.stderr)
        return 130
    finally:
        if system.leftovers:
            print(f"bench: could not stop {', '.join(system.leftovers)}", file=sys.stderr)
        if not args.keep:
            for data in ("pgdata", "redis", "broker"):
                shutil.rmtree(run_dir / data, ignore_errors=True)
    result = build_result(measured, baseline) | {
        "machine": machine() | {"loadavg_before": loadavg_before, "loadavg_after": loadavg()},
        "conditions": _conditions(args, measured["setup_s"]),
        "started_at": started_at.isoformat(timespec="seconds"),
        "duration_s": round(time.monotonic() - started_s, 1),
        "run_dir": str(run_dir),
        "sampler_errors": measured["sampler_errors"],
        "leftover_processes": system.leftovers,
    }
    print_table(result)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    _say(f"written to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
