"""`make soak`: hours of running, shortened to --minutes (default 20), at half the capacity
`make bench` measured (its var/bench/latest.json; 1,200 transfers/s, this machine's last
measured capacity, if there is none), or at --rate.

Starts the system under `var/soak/run-<time>/` as `make bench` does (servers of its own, on
free loopback ports) and offers the benchmark's mix over its 10,000 accounts, open loop,
for the whole run. Every --sample-s it records the resident memory of each process and the
projections' lag. It holds when:

- memory: after the first --warmup-minutes, no part grows past 1.5 times its size then plus
  64 MiB (a leak of a few kilobytes a second shows within twenty minutes), plus, for a part
  that holds data by design, the most it is configured to hold (`memory_allowances_mib`):
  the workers' rule-window cache, Redis's maxmemory, PostgreSQL's shared buffers. The
  broker used here keeps every message in memory (a real Kafka keeps its log on disk), so its
  size is reported, not bounded. PostgreSQL is measured by proportional set size, so the
  shared buffers its processes share count once;
- lag: the balances and alerts projections' lag p99 stays under --lag-p99-s (default 5 s)
  and everything is applied within a minute of the load's end;
- the invariants (faults_checks.py): money conserved per currency, the read models equal to
  the store, every alert in one case, a fresh replay equal to the read models, and
  `vigil audit verify` clean.

Prints what it saw and writes JSON to --out (default var/soak/latest.json); exit 1 if a bound
or an invariant does not hold.

    python load/soak.py [--minutes 20] [--rate N]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import sys
import time
import uuid
from collections import defaultdict
from pathlib import Path
from typing import Any

import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench import RULES, Pipeline
from bench_figures import lag_stats, latency_ms
from bench_load import BRANCH, Tally, fund_accounts, mixed_streams, open_accounts, open_loop
from bench_options import ACCOUNTS_DEFAULT
from bench_system import Http, System, run_in_system, start_tool
from faults_checks import Checker

from infrastructure.monitoring.windows import MOVEMENTS_CACHED_MAX
from infrastructure.ops.embedded import REDIS_MAXMEMORY
from infrastructure.ops.postgres_server import POSTGRES_OPTIONS
from infrastructure.settings import load_settings
from interfaces.api.http.tokens import issue_token

CAPACITY_FALLBACK = 1_200
# The benchmark's accounts, so each one moves as often as when the capacity was measured: a
# rule window holds every movement of its account's last day (a new account's first week),
# and the rules' cost per event grows with it. With 2,000 accounts at 600 transfers/s each
# moved about 2,500 times an hour, far beyond any real account, and the workers' cost per
# event kept growing until the system ran out of CPU at half its measured capacity.
ACCOUNTS = ACCOUNTS_DEFAULT
GROWTH_FACTOR, GROWTH_SLACK_MIB = 1.5, 64.0
# A cached rule-window movement's size in a worker: 556 bytes measured with tracemalloc
# (movements decoded from JSON as the worker does, with the rules' use sets), rounded up.
MOVEMENT_BYTES = 640
# Parts whose size is reported and not bounded, and why.
UNBOUNDED = {"broker": "the test broker keeps every message in memory"}
DRAIN_S = 60.0
TOKEN_TTL_S = 12 * 3600
SEGMENT_S = 60.0  # the load is offered in segments, so progress shows between them


def _say(line: str = "") -> None:
    print(line, flush=True)


def half_capacity(path: Path) -> float:
    with contextlib.suppress(OSError, ValueError, KeyError, TypeError):
        capacity = json.loads(path.read_text())["capacity"]["transfers_per_s"]
        if capacity:
            return float(capacity) / 2
    return CAPACITY_FALLBACK / 2


def _mib(size: str) -> float:
    """A server's memory setting ("256mb", "128MB", "1GB") in MiB."""
    number = size.rstrip("bBkKmMgG")
    unit = size[len(number) :].lower().rstrip("b")
    return float(number) * {"k": 2**-10, "m": 1, "g": 2**10}[unit]


def memory_allowances_mib(workers_processes: int = 1) -> dict[str, float]:
    """What each data-holding part may hold besides its size after warm-up: a worker's rule-
    window cache fills as its accounts' day of movements does, Redis up to its maxmemory,
    PostgreSQL's shared buffers as its tables outgrow them."""
    shared_buffers = next(o for o in POSTGRES_OPTIONS if o.startswith("shared_buffers="))
    return {
        "workers": workers_processes * MOVEMENTS_CACHED_MAX * MOVEMENT_BYTES / 2**20,
        "redis": _mib(REDIS_MAXMEMORY),
        "postgres": _mib(shared_buffers.partition("=")[2]),
    }


def memory_bounds(
    after_warmup: dict[str, float], allowances: dict[str, float]
) -> dict[str, float | None]:
    """Each part's bound in MiB (None: reported only)."""
    return {
        part: None
        if part in UNBOUNDED
        else round(size * GROWTH_FACTOR + GROWTH_SLACK_MIB + allowances.get(part, 0.0), 1)
        for part, size in after_warmup.items()
    }


def resident_mib(system: System) -> dict[str, float]:
    """Resident memory of each part (its processes together); PostgreSQL's processes by
    proportional set size, so the shared memory they all map counts once."""
    sizes: dict[str, float] = defaultdict(float)
    for name, process in system._processes():
        with contextlib.suppress(psutil.Error):
            sizes[name] += process.memory_info().rss / 2**20
    postmaster = system._postmaster()
    if postmaster is not None:
        with contextlib.suppress(psutil.Error):
            for process in [postmaster, *postmaster.children(recursive=True)]:
                with contextlib.suppress(psutil.Error):
                    sizes["postgres"] += _proportional(process) / 2**20
    return {name: round(size, 1) for name, size in sizes.items()}


def cpu_shares(before: dict[str, float], after: dict[str, float], seconds: float) -> dict[str, int]:
    """Each part's CPU use between two samples, in percent of one core."""
    return {
        part: round(100 * (after[part] - before.get(part, 0.0)) / seconds)
        for part in sorted(after)
        if seconds > 0
    }


def _proportional(process: psutil.Process) -> int:
    try:
        return int(process.memory_full_info().pss)
    except (psutil.AccessDenied, AttributeError):
        return int(process.memory_info().rss)


async def _offer(
    system: System,
    args: argparse.Namespace,
    api: str,
    teller: str,
    ids: list[str],
    pipeline: Pipeline,
    tally: Tally,
    memory: list[dict[str, Any]],
    cpu: list[dict[str, Any]],
) -> None:
    """The open-loop load for --minutes, in segments; memory and CPU sampled all along."""
    started_s = time.monotonic()
    end_s = started_s + args.minutes * 60
    streams = mixed_streams(args.rate)

    async def sample_memory() -> None:
        while True:
            t_s = round(time.monotonic() - started_s, 1)
            memory.append({"t_s": t_s} | resident_mib(system))
            cpu.append({"t_s": t_s} | {k: round(v, 2) for k, v in system.cpu_seconds().items()})
            await asyncio.sleep(args.sample_s)

    sampling = asyncio.create_task(sample_memory())
    try:
        while (left_s := end_s - time.monotonic()) > 1:
            segment_start = cpu[-1] if cpu else None
            await open_loop(api, teller, ids, streams, min(SEGMENT_S, left_s), tally)
            elapsed_s = time.monotonic() - started_s
            _say(
                f"  {elapsed_s / 60:.1f} min: {tally.transfers:,} transfers, lag now "
                f"{pipeline.lag_now_s():.1f} s, memory {memory[-1] if memory else {}}"
            )
            if segment_start is not None and cpu[-1] is not segment_start:
                used = {k: v for k, v in cpu[-1].items() if k != "t_s"}
                since = {k: v for k, v in segment_start.items() if k != "t_s"}
                shares = cpu_shares(since, used, cpu[-1]["t_s"] - segment_start["t_s"])
                _say(f"    CPU % of a core over the segment: {shares}")
    finally:
        sampling.cancel()


async def soak(system: System, args: argparse.Namespace) -> dict[str, Any]:
    assert system.postgres is not None
    settings = load_settings(
        var_dir=system.run_dir, env="development", database_url=system.postgres.url
    )
    subject = f"soak-{uuid.uuid4().hex[:8]}"
    teller = issue_token(settings, role="teller", branch=BRANCH, subject=subject, ttl_s=TOKEN_TTL_S)
    admin = issue_token(settings, role="admin", subject=subject, ttl_s=TOKEN_TTL_S)
    api = str(system.info["command_api"])
    pipeline = Pipeline(Http(str(system.info["query_api"]), admin))
    stop = asyncio.Event()
    sampler = asyncio.create_task(pipeline.run(stop))
    memory: list[dict[str, Any]] = []
    cpu: list[dict[str, Any]] = []
    tally = Tally()
    try:
        _say(f"setup: {ACCOUNTS:,} accounts, funded")
        ids = await open_accounts(api, teller, ACCOUNTS, subject)
        await fund_accounts(api, teller, ids)
        await pipeline.catch_up(time.monotonic(), 300)
        _say(
            f"soak: {args.rate:,.0f} transfers/s offered for {args.minutes:g} minutes, "
            f"memory and lag sampled every {args.sample_s:g} s"
        )
        started_s = time.monotonic()
        await _offer(system, args, api, teller, ids, pipeline, tally, memory, cpu)
        ended_s = time.monotonic()
        drained = await pipeline.catch_up(ended_s, DRAIN_S)
        lag = lag_stats(pipeline.samples, started_s, ended_s)
    finally:
        stop.set()
        sampler.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await sampler
    _say("checking the invariants (replay and audit verify too)")
    env = system.env | {"VIGIL_DATABASE_URL": system.postgres.url}
    checker = Checker(settings, env | {"VIGIL_RULES_CONFIG": str(RULES)})
    try:
        invariants = await asyncio.to_thread(checker.check, [], full=True)
    finally:
        checker.close()
    result = _verdict(args, tally, memory, lag, drained, invariants, ended_s - started_s)
    result["cpu_samples_s"] = cpu
    return result


def _verdict(
    args: argparse.Namespace,
    tally: Tally,
    memory: list[dict[str, Any]],
    lag: dict[str, Any],
    drained: bool,
    invariants: list[str],
    seconds: float,
) -> dict[str, Any]:
    problems = list(invariants)
    warm = [m for m in memory if m["t_s"] >= args.warmup_minutes * 60]
    growth: dict[str, dict[str, float]] = {}
    if warm:
        first, last = warm[0], warm[-1]
        sizes = {part: size for part, size in first.items() if part != "t_s"}
        bounds = memory_bounds(sizes, memory_allowances_mib())
        for part in sorted(sizes):
            peak = max(m.get(part, 0.0) for m in warm)
            bound = bounds[part]
            growth[part] = {
                "after_warmup_mib": first[part],
                "end_mib": last.get(part, 0.0),
                "peak_mib": peak,
                "bound_mib": bound,
            }
            if bound is not None and peak > bound:
                problems.append(f"{part} grew to {peak} MiB, over its bound of {bound:.0f} MiB")
    p99 = lag.get("lag_p99_s")
    if p99 is None or p99 > args.lag_p99_s:
        problems.append(f"lag p99 {p99} s, over {args.lag_p99_s} s")
    if not drained:
        problems.append(f"the projections did not catch up within {DRAIN_S:.0f} s of the end")
    failed = sum(tally.errors.values())
    if failed > tally.requests * 0.001:
        problems.append(f"{failed} requests failed: {dict(tally.errors)}")
    return {
        "offered_transfers_per_s": args.rate,
        "minutes": args.minutes,
        "seconds": round(seconds, 1),
        "transfers": tally.transfers,
        "transfers_per_s": round(tally.transfers / seconds, 1) if seconds else 0.0,
        "requests": tally.requests,
        "late": tally.late,
        "failed": failed,
        **latency_ms(tally.latencies_ms),
        **lag,
        "memory": growth,
        "memory_samples": memory,
        "bounds": {
            "memory": f"peak <= {GROWTH_FACTOR} x size after warm-up + {GROWTH_SLACK_MIB:.0f} MiB"
            " + what the part may hold by design",
            "memory_allowances_mib": {
                part: round(mib, 1) for part, mib in memory_allowances_mib().items()
            },
            "memory_unbounded": UNBOUNDED,
            "lag_p99_s": args.lag_p99_s,
            "drain_s": DRAIN_S,
        },
        "problems": problems,
    }


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="soak", description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=20.0)
    parser.add_argument("--rate", type=float, default=None, help="transfers/s offered")
    parser.add_argument("--bench-result", type=Path, default=Path("var/bench/latest.json"))
    parser.add_argument("--warmup-minutes", type=float, default=2.0)
    parser.add_argument("--sample-s", type=float, default=10.0)
    parser.add_argument("--lag-p99-s", type=float, default=5.0)
    parser.add_argument("--keep", action="store_true", help="keep the run's data directories")
    parser.add_argument("--out", type=Path, default=Path("var/soak/latest.json"))
    args = parser.parse_args(argv)
    if not 1 <= args.minutes <= 24 * 60:
        parser.error("--minutes: 1 .. 1440")
    if args.rate is None:
        args.rate = half_capacity(args.bench_result)
    if not 1 <= args.rate <= 50_000:
        parser.error("--rate: 1 .. 50,000 transfers/s")
    args.warmup_minutes = min(args.warmup_minutes, args.minutes / 4)
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    started_at, run_dir = start_tool("soak")
    system = System(run_dir, RULES)
    _say(f"starting the system in {run_dir}")
    code, result = run_in_system(
        "soak", system, lambda system: asyncio.run(soak(system, args)), keep=args.keep
    )
    if result is None:
        return code
    result |= {"started_at": started_at.isoformat(timespec="seconds"), "run_dir": str(run_dir)}
    _say()
    _say(
        f"{result['transfers']:,} transfers ({result['transfers_per_s']}/s of "
        f"{args.rate:,.0f} offered), p95 {result.get('p95_ms')} ms, lag p99 "
        f"{result.get('lag_p99_s')} s"
    )
    for part, sizes in result["memory"].items():
        bound = sizes["bound_mib"]
        _say(
            f"  {part:<12} {sizes['after_warmup_mib']:>8.1f} MiB after warm-up, peak "
            f"{sizes['peak_mib']:>8.1f}, "
            + (f"bound {bound:>8.1f}" if bound is not None else f"not bounded: {UNBOUNDED[part]}")
        )
    for problem in result["problems"]:
        _say(f"  PROBLEM {problem}")
    _say("holds" if not result["problems"] else f"{len(result['problems'])} problems")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    _say(f"written to {args.out}")
    return 0 if not result["problems"] else 1


if __name__ == "__main__":
    sys.exit(main())
