"""`make bench`'s command line: its options, their bounds and defaults, and the shorter
phases of `--quick`."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path
from typing import Any

# Finer where this machine's capacity lies, so that a gain of a sixth shows.
RATES_DEFAULT = (300, 600, 750, 900, 1050, 1200, 1500, 1800, 2400, 3000, 4000)
SINGLE_RATES_DEFAULT = (500, 1000, 2000)
RATE_MAX = 50_000
ACCOUNTS_DEFAULT, ACCOUNTS_MIN, ACCOUNTS_MAX = 10_000, 100, 100_000
BATCH_CLIENTS_DEFAULT, CLIENTS_MAX = 8, 256
PROCESSES_MAX = 16
SECONDS_MIN, SECONDS_MAX = 2.0, 300.0
DEFAULTS = {  # seconds of each phase; --quick takes QUICK's
    "step_s": 20.0,
    "ingestion_s": 30.0,
    "single_s": 15.0,
    "storm_s": 20.0,
    "baseline_s": 20.0,
}
QUICK = {
    "step_s": 6.0,
    "ingestion_s": 8.0,
    "single_s": 5.0,
    "storm_s": 6.0,
    "baseline_s": 5.0,
    "accounts": 2_000,
    "rates": (300, 600, 1200),
    "single_rates": (500, 1000),
    "storm_rate": 300,
}
STORM_RATE_DEFAULT = 600
CATCH_UP_MAX_S_DEFAULT, CATCH_UP_MAX_S_MAX = 60.0, 900.0


def bounded(low: float, high: float, kind: type) -> Callable[[str], Any]:
    """An argparse type: `kind` of the text, refused outside [low, high]."""

    def parse(text: str) -> Any:
        value = kind(text)
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f"must be from {low:g} to {high:g}")
        return value

    return parse


def _rates(text: str) -> tuple[int, ...]:
    try:
        rates = tuple(int(part) for part in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError("comma-separated whole numbers") from None
    if not rates or any(not 1 <= r <= RATE_MAX for r in rates) or list(rates) != sorted(rates):
        raise argparse.ArgumentTypeError(f"increasing rates from 1 to {RATE_MAX:,}")
    return rates


def parse_args(argv: list[str] | None, description: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=description)
    add = parser.add_argument
    seconds = bounded(SECONDS_MIN, SECONDS_MAX, float)
    add("--quick", action="store_true", help="a ~3-minute smoke run: short phases, fewer steps")
    add("--out", type=Path, default=Path("var/bench/latest.json"))
    add("--accounts", type=bounded(ACCOUNTS_MIN, ACCOUNTS_MAX, int), default=None)
    add("--rates", type=_rates, default=None, help="capacity steps, transfers/s offered")
    add("--step-s", type=seconds, default=None, help="seconds of each capacity step")
    add("--ingestion-s", type=seconds, default=None)
    add("--single-rates", type=_rates, default=None, help="single commands/s offered")
    add("--single-s", type=seconds, default=None, help="seconds at each single-command rate")
    add("--storm-rate", type=bounded(1, RATE_MAX, int), default=None)
    add("--storm-s", type=seconds, default=None)
    add("--baseline-s", type=seconds, default=None)
    add("--batch-clients", type=bounded(1, CLIENTS_MAX, int), default=BATCH_CLIENTS_DEFAULT)
    add(
        "--command-workers",
        type=bounded(1, PROCESSES_MAX, int),
        default=1,
        help="uvicorn worker processes of the command API (vigil api --workers)",
    )
    add("--workers-processes", type=bounded(1, PROCESSES_MAX, int), default=1,
        help="`vigil workers` processes")  # fmt: skip
    catch_up = bounded(0, CATCH_UP_MAX_S_MAX, float)
    add("--catch-up-max-s", type=catch_up, default=CATCH_UP_MAX_S_DEFAULT,
        help="how long a phase waits for the projections before the next starts")  # fmt: skip
    add("--keep", action="store_true", help="keep the run's databases (default: logs only)")
    args = parser.parse_args(argv)
    preset = QUICK if args.quick else {}
    fallback = DEFAULTS | {
        "accounts": ACCOUNTS_DEFAULT,
        "rates": RATES_DEFAULT,
        "single_rates": SINGLE_RATES_DEFAULT,
        "storm_rate": STORM_RATE_DEFAULT,
    }
    for key, value in fallback.items():
        if getattr(args, key) is None:
            setattr(args, key, preset.get(key, value))
    return args
