"""`make bench`'s command line: defaults, the `--quick` preset, and refusals of what would
make a run unbounded or meaningless."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "load"))
from bench_options import QUICK, RATES_DEFAULT, parse_args


def test_defaults_and_quick_preset() -> None:
    full = parse_args([], "bench")
    assert (full.rates, full.step_s, full.accounts) == (RATES_DEFAULT, 20.0, 10_000)
    quick = parse_args(["--quick"], "bench")
    assert (quick.rates, quick.step_s, quick.accounts) == (QUICK["rates"], 6.0, 2_000)
    # An option given wins over the preset.
    assert parse_args(["--quick", "--rates", "100,200"], "bench").rates == (100, 200)


@pytest.mark.parametrize(
    "argv",
    [
        ["--rates", "600,300"],  # not increasing
        ["--rates", "0"],
        ["--rates", "a,b"],
        ["--step-s", "1"],  # below the shortest phase
        ["--step-s", "301"],
        ["--command-workers", "17"],
        ["--accounts", "10"],
    ],
)
def test_refuses_what_would_make_a_run_unbounded_or_meaningless(argv: list[str]) -> None:
    with pytest.raises(SystemExit):
        parse_args(argv, "bench")


def test_the_run_records_the_rate_limits_it_ran_with(monkeypatch: pytest.MonkeyPatch) -> None:
    from bench import _conditions

    monkeypatch.delenv("VIGIL_RATE_LIMIT_COMMANDS_PER_S", raising=False)
    monkeypatch.setenv("VIGIL_RATE_LIMIT_READS_PER_S", "500")
    limits = _conditions(parse_args([], "bench"), 1.0)["rate_limits"]
    assert limits["VIGIL_RATE_LIMIT_COMMANDS_PER_S"] == "0"  # the benchmark's: off
    assert limits["VIGIL_RATE_LIMIT_READS_PER_S"] == "500"  # the environment's
