"""The soak's memory bounds: a leak check for every part, widened for a part only by what it
holds by design, and the broker (which keeps every message in memory) reported only."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

LOAD = Path(__file__).resolve().parents[2] / "load"
sys.path.insert(0, str(LOAD))

from bench_load import Tally  # noqa: E402
from soak import (  # noqa: E402
    GROWTH_FACTOR,
    GROWTH_SLACK_MIB,
    _mib,
    _verdict,
    memory_allowances_mib,
    memory_bounds,
)

from infrastructure.monitoring.windows import MOVEMENTS_CACHED_MAX  # noqa: E402


def test_server_sizes_read_as_mib() -> None:
    assert _mib("256mb") == 256
    assert _mib("128MB") == 128
    assert _mib("2GB") == 2048
    assert _mib("512kB") == 0.5


def test_allowances_are_what_each_part_is_configured_to_hold() -> None:
    one, two = memory_allowances_mib(1), memory_allowances_mib(2)
    assert one["redis"] == 256  # the embedded Redis's maxmemory
    assert one["postgres"] == 128  # the embedded PostgreSQL's shared_buffers
    assert 900 < one["workers"] < 1_500  # MOVEMENTS_CACHED_MAX movements, bytes each
    assert two["workers"] == 2 * one["workers"]
    assert one["workers"] >= MOVEMENTS_CACHED_MAX * 556 / 2**20  # the measured size


def test_bounds_widen_only_data_holding_parts_and_leave_the_broker_unbounded() -> None:
    sizes = {"command_api": 150.0, "workers": 150.0, "redis": 50.0, "broker": 300.0}
    bounds = memory_bounds(sizes, {"workers": 1000.0, "redis": 256.0})
    leak_bound = 150.0 * GROWTH_FACTOR + GROWTH_SLACK_MIB
    assert bounds["command_api"] == leak_bound
    assert bounds["workers"] == leak_bound + 1000.0
    assert bounds["redis"] == 50.0 * GROWTH_FACTOR + GROWTH_SLACK_MIB + 256.0
    assert bounds["broker"] is None


def _verdict_of(memory: list[dict[str, float]]) -> dict[str, object]:
    args = argparse.Namespace(warmup_minutes=1.0, lag_p99_s=5.0, rate=100.0, minutes=3.0)
    lag = {"lag_p99_s": 0.5}
    return _verdict(args, Tally(), memory, lag, True, [], 180.0)


def test_a_leaking_api_fails_the_soak_and_a_growing_broker_does_not() -> None:
    steady = [{"t_s": t, "command_api": 150.0, "broker": 300.0 + t * 10} for t in (60, 120, 180)]
    assert _verdict_of(steady)["problems"] == []
    leaking = [{"t_s": t, "command_api": 150.0 + (t - 60) * 2, "broker": 300.0} for t in (60, 180)]
    problems = _verdict_of(leaking)["problems"]
    assert problems == ["command_api grew to 390.0 MiB, over its bound of 289 MiB"]


def test_samples_before_warm_up_do_not_count() -> None:
    early_spike = [{"t_s": 10.0, "query_api": 900.0}, {"t_s": 60.0, "query_api": 100.0}]
    assert _verdict_of(early_spike)["problems"] == []
