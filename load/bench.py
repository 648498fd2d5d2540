"""`make bench`: Vigil's throughput on this machine, beside a baseline measured in the same run.

Starts a fresh `vigil up` (embedded PostgreSQL, Redis and broker; both APIs, the relay, the
projection workers, the case opener) under `var/bench/run-<time>/` on free ports, then:

1. baseline: a plain `eventsourcing` application saving one transfer per transaction
   (bench_baseline.py), on a fresh database of the same PostgreSQL, while Vigil sits idle;
2. setup: opens --accounts accounts (branch 001, GBP) and funds each with one deposit;
3. pipeline: --pipeline-rate transfers/s in batches every 0.1 s: how fast events reach the
   balances and alerts read models, and how long a just-written event takes to be in both;
4. single: --single-clients clients, each sending one deposit, withdrawal or transfer at a time;
5. batch: --batch-clients clients, each sending `POST /v1/batches` of 1,000 random transfers.

Each phase lasts --seconds and then waits, at most --catch-up-max-s, for the projections to
catch up. It prints a table, writes JSON in the API contract's shape to --out, and stops everything
it started, also on Ctrl-C, SIGTERM or an error. Loopback only.

    python load/bench.py [--seconds 60] [--out var/bench/latest.json]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
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
import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_baseline import percentile_ms, run_baseline
from bench_load import (
    BATCH_ITEMS,
    BRANCH,
    CURRENCY,
    FUNDING_AMOUNT,
    PIPELINE_TICK_S,
    TRANSFER_MINOR_MAX,
    Tally,
    batch_load,
    fund_accounts,
    open_accounts,
    paced_load,
    single_load,
)
from bench_system import (
    OWN_VARIABLES,
    TRANSPORT_ERRORS,
    BenchFailed,
    Http,
    System,
    baseline_database,
    cpu_percent,
    reply_code,
)

from infrastructure.settings import Settings, load_settings
from interfaces.api.http.tokens import issue_token

SECONDS_DEFAULT, SECONDS_MIN, SECONDS_MAX = 60.0, 5.0, 300.0
ACCOUNTS_DEFAULT, ACCOUNTS_MIN, ACCOUNTS_MAX = 10_000, 100, 100_000
BATCH_CLIENTS_DEFAULT, SINGLE_CLIENTS_DEFAULT, CLIENTS_MAX = 8, 64, 256
PIPELINE_RATE_DEFAULT, PIPELINE_RATE_MAX = 5_000, 50_000
PIPELINE_PROJECTIONS = ("balances", "alerts")
SETUP_TIMEOUT_S = 300.0
CATCH_UP_MAX_S_DEFAULT, CATCH_UP_MAX_S_MAX = 30.0, 600.0
SAMPLE_INTERVAL_S = 0.5
TOKEN_TTL_S = 4 * 3600  # longer than any run can last
BASELINE_THREADS, BASELINE_ACCOUNTS = 4, 1_000
# The throughput targets, shown beside the figures.
TARGETS = {
    "batch_transfers_per_s_min": 10_000,
    "batch_p99_ms_max": 250,
    "single_commands_per_s_min": 2_500,
    "single_p95_ms_max": 50,
    "pipeline_lag_p95_s_max": 1.0,
    "speedup_vs_baseline_min": 15,
}


# Projections: positions sampled, lag derived ---------------------------------------------------


@dataclass(frozen=True)
class Sample:
    t_s: float
    head: int  # the store's highest notification id
    position: int  # the lower of the balances and alerts projections' positions


@dataclass
class Pipeline:
    """Samples `GET /v1/projections` every SAMPLE_INTERVAL_S for the whole run.

    The lag of a sample is how long after it the projections' position reached its head: the
    time a just-written event took to be in both read models, interpolated between samples.
    """

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

    async def catch_up(self, after_s: float, timeout_s: float) -> None:
        """Until the projections hold everything written before `after_s`, or timeout_s."""
        deadline_s = time.monotonic() + timeout_s
        while time.monotonic() < deadline_s:
            later = [s for s in self.samples if s.t_s > after_s]
            if later and later[-1].position >= later[0].head:
                return
            await asyncio.sleep(0.05)

    def stats(self, start_s: float, end_s: float) -> dict[str, Any]:
        window = [i for i, s in enumerate(self.samples) if start_s <= s.t_s <= end_s]
        if len(window) < 2:
            return {"samples": len(window)}
        first, last = self.samples[window[0]], self.samples[window[-1]]
        lags_s, unresolved = [], 0
        for i in window:
            crossed_s = self._crossing_s(self.samples[i].head, i)
            if crossed_s is None:
                unresolved += 1  # counted at a lower bound: until the last sample
                crossed_s = self.samples[-1].t_s
            lags_s.append(crossed_s - self.samples[i].t_s)
        after = [s for s in self.samples if s.t_s > end_s]
        end_head = after[0].head if after else last.head
        caught_s = self._crossing_s(end_head, window[-1])
        until_s = caught_s if caught_s is not None else self.samples[-1].t_s
        reached = end_head if caught_s is not None else self.samples[-1].position
        return {
            "events_per_s": round((reached - first.position) / (until_s - first.t_s), 1),
            "ingest_events_per_s": round((last.head - first.head) / (last.t_s - first.t_s), 1),
            "lag_p50_s": _seconds(percentile_ms(lags_s, 50)),
            "lag_p95_s": _seconds(percentile_ms(lags_s, 95)),
            "lag_max_s": _seconds(max(lags_s)),
            "catch_up_s": None if caught_s is None else round(max(0.0, caught_s - end_s), 2),
            "samples": len(window),
            "samples_not_caught_up": unresolved,
        }

    def _crossing_s(self, head: int, from_index: int) -> float | None:
        """When the position first reached `head`, at or after sample `from_index`."""
        samples = self.samples
        for j in range(from_index, len(samples)):
            if samples[j].position >= head:
                if j == from_index:
                    return samples[j].t_s
                a, b = samples[j - 1], samples[j]
                return a.t_s + (head - a.position) / (b.position - a.position) * (b.t_s - a.t_s)
        return None


def _sample(reply: bytes, t_s: float) -> Sample:
    data = orjson.loads(reply)
    positions = {item["name"]: int(item["position"]) for item in data["items"]}
    position = min(positions.get(name, 0) for name in PIPELINE_PROJECTIONS)
    return Sample(t_s, int(data["head"]), position)


def _seconds(value: float | None) -> float | None:
    return None if value is None else round(value, 3)


# Phases ----------------------------------------------------------------------------------------


@dataclass
class Phase:
    tally: Tally
    wall_s: float
    cpu_percent: dict[str, float]
    flow: dict[str, Any]  # what the projections did, from the phase's start until caught up
    ticks_skipped: int = 0

    def figures(self, rate_key: str, count_key: str) -> dict[str, Any]:
        tally = self.tally
        return {
            rate_key: round(tally.ok / self.wall_s, 1),
            **tally.latency(),
            count_key: tally.ok,
            "requests": tally.requests,
            "seconds": round(self.wall_s, 3),
            "refused": dict(tally.refused),
            "errors": dict(tally.errors),
            "projections": self.flow,
            "cpu_percent": self.cpu_percent,
        }


def _say(line: str = "") -> None:
    print(line, flush=True)


async def _phase(
    load: Callable[[float, Tally], Awaitable[int | None]],
    seconds: float,
    system: System,
    pipeline: Pipeline,
    catch_up_max_s: float,
) -> Phase:
    tally = Tally()
    before = system.cpu_seconds()
    started_s = time.monotonic()
    skipped = await load(started_s + seconds, tally)
    ended_s = time.monotonic()
    cpu = cpu_percent(before, system.cpu_seconds(), ended_s - started_s)
    await pipeline.catch_up(ended_s, catch_up_max_s)
    phase = Phase(tally, ended_s - started_s, cpu, pipeline.stats(started_s, ended_s), skipped or 0)
    caught = phase.flow.get("catch_up_s")
    _say(
        f"  {tally.ok:,} ok in {phase.wall_s:.1f} s ({tally.requests:,} requests, "
        f"{sum(tally.errors.values())} failed); projections "
        + (
            f"not caught up after {catch_up_max_s:.0f} s"
            if caught is None
            else f"caught up {caught} s after"
        )
    )
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
        _say(f"setup: {args.accounts:,} accounts, each funded with {FUNDING_AMOUNT} {CURRENCY}")
        started_s = time.monotonic()
        try:
            opening = open_accounts(api, teller, args.accounts, run_id)
            ids = await asyncio.wait_for(opening, SETUP_TIMEOUT_S)
            await asyncio.wait_for(fund_accounts(api, teller, ids), SETUP_TIMEOUT_S)
        except TimeoutError:
            raise BenchFailed(f"setup took longer than {SETUP_TIMEOUT_S:.0f} s") from None
        await pipeline.catch_up(time.monotonic(), args.catch_up_max_s)
        setup_s = time.monotonic() - started_s
        _say(f"  done in {setup_s:.1f} s")
        rate, single, batch = args.pipeline_rate, args.single_clients, args.batch_clients
        loads: dict[str, tuple[str, Callable[[float, Tally], Awaitable[int | None]]]] = {
            "pipeline": (
                f"{rate:,} transfers/s in batches every {PIPELINE_TICK_S} s",
                lambda end_s, tally: paced_load(api, teller, ids, rate, end_s, tally),
            ),
            "single": (
                f"{single} clients, one command each at a time",
                lambda end_s, tally: single_load(api, teller, ids, single, end_s, tally),
            ),
            "batch": (
                f"{batch} clients, batches of {BATCH_ITEMS:,} transfers",
                lambda end_s, tally: batch_load(api, teller, ids, batch, end_s, tally),
            ),
        }
        phases: dict[str, Any] = {}
        for name, (description, load) in loads.items():
            _say(f"{name}: {description}, {args.seconds:.0f} s")
            phases[name] = await _phase(load, args.seconds, system, pipeline, args.catch_up_max_s)
    finally:
        stop.set()
        sampler.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await sampler
    return phases | {"setup_s": setup_s, "sampler_errors": dict(pipeline.errors)}


# Report ----------------------------------------------------------------------------------------


def machine() -> dict[str, Any]:
    model = platform.processor()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    return {
        "cpus": os.cpu_count(),
        "cpu_model": model,
        "memory_gb": round(psutil.virtual_memory().total / 2**30, 1),
        "platform": platform.platform(),
        "python": platform.python_version(),
    }


def _loadavg() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def build_result(
    measured: dict[str, Any], baseline: dict[str, Any], args: argparse.Namespace
) -> dict[str, Any]:
    batch = measured["batch"].figures("transfers_per_s", "transfers")
    single = measured["single"].figures("commands_per_s", "commands")
    paced: Phase = measured["pipeline"]
    base_rate = baseline["transfers_per_s"]
    speedup = round(batch["transfers_per_s"] / base_rate, 1) if base_rate else None
    pipeline = {
        "events_per_s": paced.flow.get("events_per_s"),
        "lag_p95_s": paced.flow.get("lag_p95_s"),
        "projections_measured": list(PIPELINE_PROJECTIONS),
        "rate_target_transfers_per_s": args.pipeline_rate,
        "ticks_skipped": paced.ticks_skipped,
        **paced.figures("transfers_per_s", "transfers"),
        "lag_method": (
            f"GET /v1/projections every {SAMPLE_INTERVAL_S} s; a sample's lag is the time until "
            "the lower of the balances and alerts positions reached that sample's head "
            "(interpolated between samples); events_per_s is that position's advance from "
            "the phase's start until it held everything written in the phase"
        ),
    }
    met = {
        "batch_transfers_per_s": _at_least(batch["transfers_per_s"], "batch_transfers_per_s_min"),
        "batch_p99_ms": _below(batch["p99_ms"], "batch_p99_ms_max"),
        "single_commands_per_s": _at_least(single["commands_per_s"], "single_commands_per_s_min"),
        "single_p95_ms": _below(single["p95_ms"], "single_p95_ms_max"),
        "pipeline_lag_p95_s": _below(pipeline["lag_p95_s"], "pipeline_lag_p95_s_max"),
        "speedup_vs_baseline": _at_least(speedup, "speedup_vs_baseline_min"),
    }
    return {
        "batch": batch | {"clients": args.batch_clients, "items_per_batch": BATCH_ITEMS},
        "single": single
        | {"clients": args.single_clients, "mix": "a third each: deposits, withdrawals, transfers"},
        "pipeline": pipeline,
        "baseline": baseline,
        "speedup_vs_baseline": speedup,
        "targets": TARGETS,
        "targets_met": met,
    }


def _at_least(value: float | None, target: str) -> bool | None:
    return None if value is None else value >= TARGETS[target]


def _below(value: float | None, target: str) -> bool | None:
    return None if value is None else value < TARGETS[target]


def _verdict(*met: bool | None) -> str:
    return "?" if None in met else "met" if all(met) else "MISSED"


def print_table(result: dict[str, Any]) -> None:
    m, c, met = result["machine"], result["conditions"], result["targets_met"]
    batch, single, pipe, base = (result[k] for k in ("batch", "single", "pipeline", "baseline"))
    _say(
        f"\nVigil benchmark {result['started_at']}: {m['cpus']} cores ({m['cpu_model']}), "
        f"load average {m['loadavg_before'][0]} before, {m['loadavg_after'][0]} after"
    )
    _say(
        f"{c['accounts']:,} accounts, {c['seconds']:.0f} s per phase; relay, projection workers,"
        " case opener and event index on; encryption off; every commit durable\n"
    )
    _say(
        f"  {'phase':<9}{'clients':>7}  {'rate':<19}{'p50 ms':>9}{'p95 ms':>9}{'p99 ms':>9}  target"
    )
    batch_met = _verdict(met["batch_transfers_per_s"], met["batch_p99_ms"])
    single_met = _verdict(met["single_commands_per_s"], met["single_p95_ms"])
    rows = [
        ("batch", batch, f"{batch['transfers_per_s']:,.0f} transfers/s",
         f">= 10,000/s, p99 < 250 ms: {batch_met}"),
        ("single", single, f"{single['commands_per_s']:,.0f} commands/s",
         f">= 2,500/s, p95 < 50 ms: {single_met}"),
        ("baseline", base | {"clients": base["threads"]},
         f"{base['transfers_per_s']:,.0f} transfers/s", "(one transfer per transaction)"),
    ]  # fmt: skip
    for name, figures, rate, target in rows:
        cells = "".join(
            f"{'-' if figures[k] is None else format(figures[k], ',.1f'):>9}"
            for k in ("p50_ms", "p95_ms", "p99_ms")
        )
        _say(f"  {name:<9}{figures['clients']:>7}  {rate:<19}{cells}  {target}")
    flow = pipe["projections"]
    _say(
        f"  {'pipeline':<9}{'-':>7}  {pipe['events_per_s'] or 0:,.0f} events/s    lag p50 "
        f"{flow.get('lag_p50_s')} s, p95 {pipe['lag_p95_s']} s at {pipe['transfers_per_s']:,.0f}"
        f" transfers/s sent; lag p95 < 1 s: {_verdict(met['pipeline_lag_p95_s'])}"
    )
    _say(
        f"  speedup   batch is {result['speedup_vs_baseline']}x the baseline; >= 15x: "
        f"{_verdict(met['speedup_vs_baseline'])}\n"
    )
    for name in ("pipeline", "single", "batch"):
        flow, figures = result[name]["projections"], result[name]
        problems = {**figures["refused"], **figures["errors"]}
        caught = flow.get("catch_up_s")
        _say(
            f"  {name:<9}projections took {flow.get('events_per_s')} events/s (written at "
            f"{flow.get('ingest_events_per_s')}/s), lag p95 {flow.get('lag_p95_s')} s, "
            + ("never caught up" if caught is None else f"caught up {caught} s after")
            + (f"; refused/failed {problems}" if problems else "")
        )
    _say(f"\n  CPU while loading, % of one core ({100 * (os.cpu_count() or 1)} = every core):")
    for name in ("baseline", "pipeline", "single", "batch"):
        busiest = list(result[name]["cpu_percent"].items())[:8]
        _say(f"  {name:<9}" + ", ".join(f"{role} {pct:.0f}" for role, pct in busiest))
    _say()


# Main ------------------------------------------------------------------------------------------


def _bounded(low: float, high: float, kind: type) -> Callable[[str], Any]:
    def parse(text: str) -> Any:
        value = kind(text)
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f"must be from {low:g} to {high:g}")
        return value

    return parse


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    add = parser.add_argument
    add("--seconds", type=_bounded(SECONDS_MIN, SECONDS_MAX, float), default=SECONDS_DEFAULT)
    add("--out", type=Path, default=Path("var/bench/latest.json"))
    add("--accounts", type=_bounded(ACCOUNTS_MIN, ACCOUNTS_MAX, int), default=ACCOUNTS_DEFAULT)
    add("--batch-clients", type=_bounded(1, CLIENTS_MAX, int), default=BATCH_CLIENTS_DEFAULT)
    add("--single-clients", type=_bounded(1, CLIENTS_MAX, int), default=SINGLE_CLIENTS_DEFAULT)
    add("--pipeline-rate", type=_bounded(10, PIPELINE_RATE_MAX, int), default=PIPELINE_RATE_DEFAULT)
    catch_up = _bounded(0, CATCH_UP_MAX_S_MAX, float)
    add("--catch-up-max-s", type=catch_up, default=CATCH_UP_MAX_S_DEFAULT)
    add("--keep", action="store_true", help="keep the run's databases (default: logs only)")
    return parser.parse_args(argv)


def _baseline(system: System, seconds: float) -> dict[str, Any]:
    _say(f"baseline: plain eventsourcing, {BASELINE_THREADS} threads, {seconds:.0f} s")
    url = baseline_database(str(system.info["database_url"]))
    before, started_s = system.cpu_seconds(), time.monotonic()
    result = run_baseline(url, seconds, BASELINE_THREADS, BASELINE_ACCOUNTS)
    # Includes opening and funding its accounts; its rate does not.
    result["cpu_percent"] = cpu_percent(before, system.cpu_seconds(), time.monotonic() - started_s)
    _say(f"  {result['transfers']:,} transfers, {result['transfers_per_s']:,.0f}/s")
    return result


def _conditions(args: argparse.Namespace, setup_s: float) -> dict[str, Any]:
    return {
        "accounts": args.accounts,
        "seconds": args.seconds,
        "funding": f"{FUNDING_AMOUNT} {CURRENCY} per account",
        "transfer_amounts": f"0.01 to {TRANSFER_MINOR_MAX / 100:.2f} {CURRENCY}",
        "setup_s": round(setup_s, 1),
        "phase_order": ["baseline", "setup", "pipeline", "single", "batch"],
        "vigil_settings_from_environment": sorted(
            k for k in os.environ if k.startswith("VIGIL_") and k not in OWN_VARIABLES
        ),
    }


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    # SIGTERM and SIGHUP end the run as Ctrl-C does: through every `finally` below.
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    signal.signal(signal.SIGHUP, signal.default_int_handler)
    started_at = datetime.now(UTC)
    run_dir = (Path("var/bench") / f"run-{started_at:%Y%m%d-%H%M%S}").resolve()
    loadavg_before, started_s = _loadavg(), time.monotonic()
    system = System(run_dir)
    _say(f"starting vigil up in {run_dir}")
    try:
        with system.running():
            info = system.info
            _say(f"  up: command API {info['command_api']}, query API {info['query_api']}")
            settings = load_settings(var_dir=run_dir, env="development")
            baseline = _baseline(system, args.seconds)
            measured = asyncio.run(measure(system, settings, args))
    except BenchFailed as error:
        print(f"bench: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("bench: interrupted; everything it started is stopped", file=sys.stderr)
        return 130
    finally:
        if system.leftovers:
            print(f"bench: had to stop {', '.join(system.leftovers)}", file=sys.stderr)
        if not args.keep:
            for data in ("pgdata", "redis"):
                shutil.rmtree(run_dir / data, ignore_errors=True)
    result = build_result(measured, baseline, args) | {
        "machine": machine() | {"loadavg_before": loadavg_before, "loadavg_after": _loadavg()},
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
