"""The arithmetic of `make bench`, apart from any system: projection lag from sampled positions,
the capacity steps' verdicts, CPU per transfer, and the result's JSON. Used by bench.py (which
imports it as a sibling module) and tested without a system.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

LAG_P95_MAX_S = 1.0  # a capacity step holds while balances and alerts lag p95 stays under it
FAILED_SHARE_MAX = 0.01  # ... and at most this share of its requests failed or went out late
# The targets, shown beside the figures.
TARGETS = {
    "capacity_transfers_per_s_min": 3_000,
    "capacity_lag_p95_s_max": LAG_P95_MAX_S,
    "ingestion_transfers_per_s_min": 8_000,
    "ingestion_p99_ms_max": 250,
    "speedup_vs_baseline_min": 15,
    "catch_up_events_per_s_min": 15_000,
    "single_offered_per_s": 1_000,
    "single_p95_ms_max": 50,
    "single_p99_ms_max": 100,
}
# Where the keys older readers know are filled from.
LEGACY_SOURCES = {"batch": "ingestion", "single": "single_latency", "pipeline": "capacity"}


def percentile(values: Sequence[float], percent: float) -> float | None:
    """Nearest rank; None when there is nothing to rank."""
    if not values:
        return None
    ordered = sorted(values)
    return ordered[max(1, math.ceil(percent / 100 * len(ordered))) - 1]


def rounded(value: float | None, digits: int = 1) -> float | None:
    return None if value is None else round(value, digits)


def latency_ms(latencies_ms: Sequence[float]) -> dict[str, float | None]:
    """p50, p95 and p99 of latencies (open loop: each counted from its scheduled time)."""
    return {f"p{p}_ms": rounded(percentile(latencies_ms, p)) for p in (50, 95, 99)}


# Lag ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Sample:
    """One reading of `GET /v1/projections`."""

    t_s: float
    head: int  # the store's highest notification id
    position: int  # the lower of the balances and alerts projections' positions
    slowest: int  # the lowest position of every projection


def crossing_s(samples: Sequence[Sample], head: int, from_index: int) -> float | None:
    """When the balances and alerts position first reached `head`, at or after sample
    `from_index`, interpolated linearly between the two samples around it."""
    for j in range(from_index, len(samples)):
        if samples[j].position >= head:
            if j == from_index:
                return samples[j].t_s
            a, b = samples[j - 1], samples[j]
            return a.t_s + (head - a.position) / (b.position - a.position) * (b.t_s - a.t_s)
    return None


def lag_stats(samples: Sequence[Sample], start_s: float, end_s: float) -> dict[str, Any]:
    """The lag of the samples taken from start_s to end_s: for each, how long until the
    balances and alerts position reached the head it saw (the time an event written then
    took to be in both read models). A sample never reached counts until the last sample."""
    window = [i for i, s in enumerate(samples) if start_s <= s.t_s <= end_s]
    if len(window) < 2:
        return {"samples": len(window)}
    first, last = samples[window[0]], samples[window[-1]]
    lags_s, unresolved = [], 0
    for i in window:
        crossed_s = crossing_s(samples, samples[i].head, i)
        if crossed_s is None:
            unresolved += 1
            crossed_s = samples[-1].t_s
        lags_s.append(crossed_s - samples[i].t_s)
    after = [s for s in samples if s.t_s > end_s]
    end_head = after[0].head if after else last.head
    caught_s = crossing_s(samples, end_head, window[-1])
    until_s = caught_s if caught_s is not None else samples[-1].t_s
    reached = end_head if caught_s is not None else samples[-1].position
    elapsed_s = until_s - first.t_s
    return {
        "events_per_s": rounded((reached - first.position) / elapsed_s) if elapsed_s > 0 else None,
        "ingest_events_per_s": rounded((last.head - first.head) / (last.t_s - first.t_s)),
        "lag_p50_s": rounded(percentile(lags_s, 50), 3),
        "lag_p95_s": rounded(percentile(lags_s, 95), 3),
        "lag_p99_s": rounded(percentile(lags_s, 99), 3),
        "lag_max_s": rounded(max(lags_s), 3),
        "catch_up_s": None if caught_s is None else round(max(0.0, caught_s - end_s), 2),
        "samples": len(window),
        "samples_not_caught_up": unresolved,
    }


def catch_up_rate(samples: Sequence[Sample], from_s: float) -> dict[str, Any]:
    """Events a second every projection applied from `from_s` (the workers ready) until the
    slowest of them held the head seen then: its advance over the time it took."""
    later = [s for s in samples if s.t_s >= from_s]
    if not later:
        return {"events_per_s": None, "events": 0, "seconds": None}
    start, head = later[0], max(s.head for s in later)
    done = next((s for s in later if s.slowest >= head), None)
    end = done or later[-1]
    elapsed_s = end.t_s - from_s
    applied = end.slowest - start.slowest
    return {
        "events_per_s": rounded(applied / elapsed_s) if elapsed_s > 0 else None,
        "events": applied,
        "seconds": round(elapsed_s, 2),
        "caught_up": done is not None,
    }


# Capacity steps ------------------------------------------------------------------------------


def step_verdict(step: Mapping[str, Any]) -> tuple[bool, str]:
    """Whether a capacity step held for its whole length, and if not why."""
    scheduled = max(1, int(step["scheduled"]))
    failed = int(step["late"]) + int(step["failed"])
    if failed > FAILED_SHARE_MAX * scheduled:
        return False, f"{failed} of {scheduled} requests failed or not sent on time"
    lag = step.get("lag_p95_s")
    if lag is None:
        return False, "no lag measured"
    if lag >= LAG_P95_MAX_S:
        return False, f"lag p95 {lag} s"
    if step.get("samples_not_caught_up"):
        return False, "the projections did not catch up"
    return True, "held"


def capacity(steps: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """The highest offered rate that held, from steps in increasing rate, stopping at the
    first that did not; its lag and CPU are the capacity's."""
    held = None
    for step in steps:
        if not step["held"]:
            break
        held = step
    figures = {
        "transfers_per_s": None if held is None else held["offered_transfers_per_s"],
        "achieved_transfers_per_s": None if held is None else held["transfers_per_s"],
    }
    for key in ("lag_p50_s", "lag_p95_s", "lag_p99_s", "cpu_percent", "cpu_us_per_transfer"):
        figures[key] = None if held is None else held.get(key)
    return figures | {"steps": list(steps)}


# CPU -----------------------------------------------------------------------------------------


def cpu_us_per_transfer(
    before: Mapping[str, float], after: Mapping[str, float], transfers: int
) -> dict[str, float | None]:
    """Microseconds of CPU per transfer for each process, busiest first, and their total."""
    used = {role: after[role] - before.get(role, 0.0) for role in after}
    if transfers <= 0:
        return dict.fromkeys(used)
    per = {role: round(s / transfers * 1e6, 1) for role, s in used.items()}
    ordered = dict(sorted(per.items(), key=lambda x: -x[1]))
    system = [v for k, v in ordered.items() if k != "bench"]
    return ordered | {"total_without_bench": round(sum(system), 1)}


def alert_rates(alerts: int, cases: int, transfers: int) -> dict[str, float | None]:
    """Alerts and cases per 1,000 transfers."""
    if transfers <= 0:
        return {"alerts_per_1000_transfers": None, "cases_per_1000_transfers": None}
    return {
        "alerts_per_1000_transfers": round(alerts / transfers * 1000, 2),
        "cases_per_1000_transfers": round(cases / transfers * 1000, 2),
    }


# The result ----------------------------------------------------------------------------------


def build_result(phases: Mapping[str, Any], baseline: Mapping[str, Any]) -> dict[str, Any]:
    """The JSON of a run: the API contract's keys, the phases in full, the targets met.

    The older keys are filled from the nearest new phase (LEGACY_SOURCES): "batch" from
    ingestion, "single" from the single-command run at TARGETS' offered rate (else the last
    one), "pipeline" from the capacity step that held (else the first step).
    """
    ingestion, catch, single_runs = phases["ingestion"], phases["catch_up"], phases["single"]
    cap = phases["capacity"]
    base_rate = baseline.get("transfers_per_s")
    ingest_rate = ingestion.get("transfers_per_s")
    speedup = round(ingest_rate / base_rate, 1) if base_rate and ingest_rate else None
    single_latency = [
        {k: run.get(k) for k in ("offered_per_s", "achieved_per_s", "p50_ms", "p95_ms", "p99_ms")}
        for run in single_runs
    ]
    at_target = next(
        (r for r in single_runs if r["offered_per_s"] == TARGETS["single_offered_per_s"]),
        single_runs[-1] if single_runs else {},
    )
    steps = cap.get("steps") or [{}]
    held_step = next(
        (s for s in steps if s.get("offered_transfers_per_s") == cap.get("transfers_per_s")),
        steps[0],
    )
    cpu = {
        name: phase["cpu_us_per_transfer"]
        for name, phase in (
            ("capacity", cap),
            ("ingestion", ingestion),
            ("catch_up", catch),
            *((f"single_{r['offered_per_s']}", r) for r in single_runs),
            ("storm", phases.get("storm") or {}),
        )
        if phase.get("cpu_us_per_transfer")
    }
    met = {
        "capacity_transfers_per_s": _at_least(
            cap.get("transfers_per_s"), "capacity_transfers_per_s_min"
        ),
        "ingestion_transfers_per_s": _at_least(ingest_rate, "ingestion_transfers_per_s_min"),
        "ingestion_p99_ms": _below(ingestion.get("p99_ms"), "ingestion_p99_ms_max"),
        "speedup_vs_baseline": _at_least(speedup, "speedup_vs_baseline_min"),
        "catch_up_events_per_s": _at_least(catch.get("events_per_s"), "catch_up_events_per_s_min"),
        "single_p95_ms": _below(at_target.get("p95_ms"), "single_p95_ms_max"),
        "single_p99_ms": _below(at_target.get("p99_ms"), "single_p99_ms_max"),
    }  # fmt: skip
    return {
        "capacity": cap,
        "ingestion": ingestion,
        "catch_up": catch,
        "single_latency": single_latency,
        "single_latency_runs": list(single_runs),
        "storm": phases.get("storm"),
        "cpu_us_per_transfer": cpu,
        "batch": ingestion | {"source": "ingestion"},
        "single": at_target
        | {"commands_per_s": at_target.get("achieved_per_s"), "source": "single_latency"},
        "pipeline": {
            "events_per_s": held_step.get("events_per_s"),
            "lag_p95_s": held_step.get("lag_p95_s"),
            "transfers_per_s": held_step.get("transfers_per_s"),
            "source": "capacity",
        },
        "baseline": dict(baseline),
        "speedup_vs_baseline": speedup,
        "targets": TARGETS,
        "targets_met": met,
    }


def _at_least(value: float | None, target: str) -> bool | None:
    return None if value is None else value >= TARGETS[target]


def _below(value: float | None, target: str) -> bool | None:
    return None if value is None else value < TARGETS[target]


def verdict(*met: bool | None) -> str:
    return "?" if None in met else "met" if all(met) else "MISSED"
