"""The benchmark's arithmetic without a system: lag from sampled positions, latencies from
scheduled times, the capacity steps' verdicts, CPU per transfer, the rules it ships, and the
keys of the JSON it writes."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pytest

LOAD = Path(__file__).resolve().parents[2] / "load"
sys.path.insert(0, str(LOAD))

from bench_figures import (  # noqa: E402
    Sample,
    build_result,
    capacity,
    catch_up_rate,
    cpu_us_per_transfer,
    lag_stats,
    latency_ms,
    percentile,
    step_verdict,
)
from bench_load import MIX, MIXED_BATCH_ITEMS, Stream, mixed_streams, schedule  # noqa: E402

from infrastructure.monitoring.rules_config import parse_rules  # noqa: E402


def test_lag_is_interpolated_between_samples() -> None:
    # Written steadily at 100 events/s, applied 0.5 s behind: every sample's head is reached
    # half a second later, between two samples.
    samples = [
        Sample(k * 0.25, head=k * 25, position=max(0, k * 25 - 50), slowest=0) for k in range(41)
    ]
    stats = lag_stats(samples, 1.0, 8.0)
    assert stats["lag_p50_s"] == pytest.approx(0.5)
    assert stats["lag_p95_s"] == pytest.approx(0.5)
    assert stats["lag_p99_s"] == pytest.approx(0.5)
    assert stats["samples_not_caught_up"] == 0


def test_a_head_never_reached_counts_until_the_last_sample() -> None:
    samples = [Sample(float(k), head=100, position=0, slowest=0) for k in range(5)]
    stats = lag_stats(samples, 0.0, 2.0)
    assert stats["samples_not_caught_up"] == 3
    assert stats["lag_max_s"] == 4.0


def test_catch_up_rate_is_the_slowest_projections_advance() -> None:
    samples = [
        Sample(0.0, head=1000, position=0, slowest=0),
        Sample(1.0, head=1000, position=600, slowest=400),
        Sample(2.0, head=1000, position=1000, slowest=1000),
        Sample(3.0, head=1000, position=1000, slowest=1000),
    ]
    rate = catch_up_rate(samples, 0.0)
    assert rate["events_per_s"] == 500.0
    assert rate["caught_up"] is True


def test_latencies_count_from_the_scheduled_time() -> None:
    # One reply took 1 s; the 9 behind it, due every 0.1 s but sent only after it, waited too:
    # from their scheduled times they took 0.91, 0.82, ... s, not the 10 ms of their own trip.
    due = [k * 0.1 for k in range(10)]
    replied = [1.0 + 0.01 * k for k in range(10)]
    figures = latency_ms([(r - d) * 1000 for d, r in zip(due, replied, strict=True)])
    assert figures["p50_ms"] == pytest.approx(550)
    assert figures["p99_ms"] == pytest.approx(1000)
    assert percentile([], 50) is None


def test_the_capacity_load_mixes_singles_and_batches() -> None:
    singles, batches = mixed_streams(800)
    movements = 800 / MIX[0][1]
    assert singles == Stream(pytest.approx(0.3 * movements), 1)
    assert batches.items == MIXED_BATCH_ITEMS
    assert batches.per_s * batches.items == pytest.approx(0.7 * movements)
    due = schedule([singles, batches], 10.0, 2.0)
    assert [t for t, _ in due] == sorted(t for t, _ in due)
    assert sum(items for _, items in due) == pytest.approx(2 * movements, rel=0.01)


def _step(**changes: Any) -> dict[str, Any]:
    step = {"scheduled": 1000, "late": 0, "failed": 0, "lag_p95_s": 0.4}
    return step | {"samples_not_caught_up": 0} | changes


def test_a_step_holds_only_under_the_lag_and_with_its_requests_sent() -> None:
    assert step_verdict(_step())[0]
    assert not step_verdict(_step(lag_p95_s=1.0))[0]
    assert not step_verdict(_step(late=11))[0]  # more than 1 % not sent on time
    assert step_verdict(_step(late=5, failed=5))[0]
    assert not step_verdict(_step(lag_p95_s=None))[0]


def test_capacity_is_the_last_step_that_held_before_the_first_that_did_not() -> None:
    steps = [
        {"offered_transfers_per_s": rate, "transfers_per_s": rate - 1, "held": held}
        | {"lag_p50_s": 0.1, "lag_p95_s": 0.2, "lag_p99_s": 0.3}
        for rate, held in ((300, True), (600, True), (900, False), (1200, True))
    ]
    figures = capacity(steps)
    assert figures["transfers_per_s"] == 600
    assert capacity(steps[2:3])["transfers_per_s"] is None


def test_cpu_per_transfer_is_microseconds_of_each_process() -> None:
    before = {"postgres": 10.0, "workers": 4.0, "bench": 1.0}
    after = {"postgres": 12.0, "workers": 5.0, "bench": 3.0, "relay": 0.5}
    cpu = cpu_us_per_transfer(before, after, 1000)
    assert cpu["postgres"] == 2000.0
    assert cpu["workers"] == 1000.0
    assert cpu["relay"] == 500.0
    assert cpu["total_without_bench"] == 3500.0
    assert next(iter(cpu)) == "postgres"
    assert cpu_us_per_transfer(before, after, 0)["postgres"] is None


def test_the_shipped_rules_alert_on_the_loads_large_transfers_only() -> None:
    rules = parse_rules((LOAD / "bench_rules.toml").read_text())
    storm = parse_rules((LOAD / "bench_storm_rules.toml").read_text())
    assert rules.minor(rules.large_transaction, "GBP") == 1000  # 10.00 GBP
    assert storm.minor(storm.large_transaction, "GBP") == 1  # 0.01 GBP: every movement


def _phase(transfers_per_s: float) -> dict[str, Any]:
    return {
        "transfers_per_s": transfers_per_s,
        "p50_ms": 1.0,
        "p95_ms": 2.0,
        "p99_ms": 3.0,
        "cpu_us_per_transfer": {"postgres": 100.0},
    }


def test_the_json_keeps_the_old_keys_and_adds_the_contracts() -> None:
    step = _phase(590) | {"offered_transfers_per_s": 600, "held": True, "events_per_s": 1300.0}
    step |= {"lag_p50_s": 0.1, "lag_p95_s": 0.2, "lag_p99_s": 0.3}
    single = [
        _phase(0) | {"offered_per_s": rate, "achieved_per_s": rate - 1.0} for rate in (500, 1000)
    ]
    phases = {
        "capacity": capacity([step]),
        "ingestion": _phase(3000),
        "catch_up": {"events_per_s": 5000.0, "cpu_us_per_transfer": {"workers": 50.0}},
        "single": single,
        "storm": _phase(300),
    }
    result = build_result(phases, {"transfers_per_s": 300.0})
    assert set(result["capacity"]) >= {"transfers_per_s", "lag_p50_s", "lag_p95_s", "lag_p99_s"}
    assert set(result["ingestion"]) >= {"transfers_per_s", "p50_ms", "p95_ms", "p99_ms"}
    assert set(result["catch_up"]) >= {"events_per_s"}
    for run in result["single_latency"]:
        assert set(run) == {"offered_per_s", "achieved_per_s", "p50_ms", "p95_ms", "p99_ms"}
    assert set(result["cpu_us_per_transfer"]) >= {"capacity", "ingestion", "catch_up"}
    assert result["speedup_vs_baseline"] == 10.0  # ingestion over baseline
    assert set(result["batch"]) >= {"transfers_per_s", "p50_ms", "p95_ms", "p99_ms"}
    assert set(result["single"]) >= {"commands_per_s", "p50_ms", "p95_ms", "p99_ms"}
    assert result["single"]["commands_per_s"] == 999.0  # the run at 1,000/s offered
    assert set(result["pipeline"]) >= {"events_per_s", "lag_p95_s"}
    assert set(result["baseline"]) >= {"transfers_per_s"}
    assert result["capacity"]["transfers_per_s"] == 600
