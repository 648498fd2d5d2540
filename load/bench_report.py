"""`make bench`'s report: the machine it ran on, and the table it prints from the result."""

from __future__ import annotations

import contextlib
import os
import platform
import sys
from pathlib import Path
from typing import Any

import psutil
from bench_figures import TARGETS, verdict


def _say(line: str = "") -> None:
    print(line, flush=True)


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
        # Which build: a distribution's optimised one runs every service 10-20 % faster
        # than a plain source build of the same version.
        "python_executable": os.path.realpath(sys.executable),
    }


def loadavg() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def _cell(value: float | None, spec: str = ",.1f") -> str:
    return "-" if value is None else format(value, spec)


def print_table(result: dict[str, Any]) -> None:
    m, c, met = result["machine"], result["conditions"], result["targets_met"]
    cap, ing, catch, base = (result[k] for k in ("capacity", "ingestion", "catch_up", "baseline"))
    _say(
        f"\nVigil benchmark {result['started_at']}: {m['cpus']} cores ({m['cpu_model']}), "
        f"load average {m['loadavg_before'][0]} before, {m['loadavg_after'][0]} after; "
        f"Python {m['python']} ({m.get('python_executable', '?')})"
    )
    _say(
        f"{c['accounts']:,} accounts; command API workers {c['command_workers']}, workers "
        f"processes {c['workers_processes']}; every commit durable; {c['alert_rules']}\n"
    )
    _say(f"  {'phase':<24}{'rate':<26}{'p50':>11}{'p95':>11}{'p99':>11}  target")
    cap_ok = verdict(met["capacity_transfers_per_s"])
    _say(
        f"  {'capacity':<24}{_cell(cap['transfers_per_s'], ',.0f') + ' transfers/s':<26}"
        f"{_cell(cap['lag_p50_s'], '.2f') + ' s':>11}{_cell(cap['lag_p95_s'], '.2f') + ' s':>11}"
        f"{_cell(cap['lag_p99_s'], '.2f') + ' s':>11}  >= 3,000/s at lag p95 < 1 s: {cap_ok}"
    )
    ing_ok = verdict(met["ingestion_transfers_per_s"], met["ingestion_p99_ms"])
    _say(
        f"  {'ingestion, 1,000/batch':<24}"
        f"{_cell(ing['transfers_per_s'], ',.0f') + ' transfers/s':<26}"
        f"{_cell(ing['p50_ms']) + ' ms':>11}{_cell(ing['p95_ms']) + ' ms':>11}"
        f"{_cell(ing['p99_ms']) + ' ms':>11}  >= 8,000/s, p99 < 250 ms: {ing_ok}"
    )
    _say(
        f"  {'catch-up':<24}{_cell(catch['events_per_s'], ',.0f') + ' events/s':<26}"
        f"{'':>33}  >= 15,000/s: {verdict(met['catch_up_events_per_s'])}"
    )
    for run in result["single_latency_runs"]:
        target = ""
        if run["offered_per_s"] == TARGETS["single_offered_per_s"]:
            both = verdict(met["single_p95_ms"], met["single_p99_ms"])
            target = f"p95 < 50, p99 < 100 ms: {both}"
        rate = f"{run['achieved_per_s']:,.0f} of {run['offered_per_s']:,}/s"
        if run["late"]:
            target = f"{run['late']:,} not sent on time; {target}".removesuffix("; ")
        _say(
            f"  {'single commands':<24}{rate:<26}{_cell(run['p50_ms']) + ' ms':>11}"
            f"{_cell(run['p95_ms']) + ' ms':>11}{_cell(run['p99_ms']) + ' ms':>11}  {target}"
        )
    _say(
        f"  {'baseline':<24}{_cell(base['transfers_per_s'], ',.0f') + ' transfers/s':<26}"
        f"{_cell(base['p50_ms']) + ' ms':>11}{_cell(base['p95_ms']) + ' ms':>11}"
        f"{_cell(base['p99_ms']) + ' ms':>11}  (one transfer per transaction)"
    )
    _say(
        f"  {'speedup':<24}ingestion is {result['speedup_vs_baseline']}x the baseline;"
        f" >= 15x: {verdict(met['speedup_vs_baseline'])}\n"
    )
    _say("  capacity steps (offered transfers/s: accepted, lag p50/p95/p99 s, verdict):")
    for step in cap["steps"]:
        _say(
            f"    {step['offered_transfers_per_s']:>6,}: {step['transfers_per_s']:>8,.0f}, "
            f"{step.get('lag_p50_s')}/{step.get('lag_p95_s')}/{step.get('lag_p99_s')}, "
            f"{step['verdict']}"
        )
    storm = result.get("storm") or {}
    _say("\n  alerts and cases per 1,000 transfers:")
    steps = cap["steps"]
    at = [s for s in steps if s["offered_transfers_per_s"] == cap["transfers_per_s"]]
    held = at[0] if at else steps[0] if steps else {}
    rows = [("capacity", held), ("ingestion", ing), ("catch-up", catch)]
    rows += [(f"single {r['offered_per_s']}", r) for r in result["single_latency_runs"]]
    rows += [("storm", storm)]
    for name, phase in rows:
        _say(
            f"    {name:<14}{_cell(phase.get('alerts_per_1000_transfers'), '.2f'):>8} alerts"
            f"{_cell(phase.get('cases_per_1000_transfers'), '.2f'):>8} cases"
            + (f"  (lag p95 {phase.get('lag_p95_s')} s)" if name == "storm" else "")
        )
    _say("\n  CPU per transfer, µs, by process:")
    for name, cpu in result["cpu_us_per_transfer"].items():
        busiest = [(k, v) for k, v in cpu.items() if k != "total_without_bench"][:8]
        _say(
            f"    {name:<14}{_cell(cpu.get('total_without_bench'), ',.0f'):>7} total: "
            + ", ".join(f"{role} {_cell(us, ',.0f')}" for role, us in busiest)
        )
    _say()
