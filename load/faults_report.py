"""What `make faults` reports: each fault kind's recoveries and violations, the commands'
fate, as JSON and as a table."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from faults import Run


def say(line: str = "") -> None:
    print(line, flush=True)


def _seconds_or_dash(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f} s"


def percentile(values: list[float], percent: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    rank = max(0, math.ceil(percent / 100 * len(ordered)) - 1)
    return round(ordered[rank], 2)


def result_of(run: Run, final: list[str], storm: dict | None, seconds: float) -> dict[str, Any]:
    rows = []
    for fault in dict.fromkeys(o.fault for o in run.outcomes):
        mine = [o for o in run.outcomes if o.fault == fault]
        recovered = [o.caught_up_s for o in mine if o.caught_up_s is not None]
        first = [o.first_command_s for o in mine if o.first_command_s is not None]
        rows.append(
            {
                "fault": fault,
                "injected": len(mine),
                "violations": sum(len(o.violations) for o in mine),
                "recovery_p50_s": percentile(recovered, 50),
                "recovery_p95_s": percentile(recovered, 95),
                "first_command_p50_s": percentile(first, 50),
                "first_command_p95_s": percentile(first, 95),
            }
        )
    records = run.workload.records
    violations = sum(r["violations"] for r in rows) + len(final)
    violations += len(storm["violations"]) if storm else 0
    return {
        "faults": rows,
        "injected": len(run.outcomes),
        "violations": violations,
        "final_check": final,
        "details": [
            {"fault": o.fault, "violations": o.violations} for o in run.outcomes if o.violations
        ],
        "commands": {
            "total": len(records),
            "acknowledged": sum(r.acknowledged for r in records),
            "refused": sum(r.refused for r in records),
            "unknown": sum(r.done and not r.acknowledged and not r.refused for r in records),
            "client_retries": dict(run.workload.retries),
        },
        "storm": storm,
        "exits": run.exits,
        # An account's events whose notification ids ran against their versions: not a
        # broken invariant (state is by version), but worth knowing.
        "out_of_order_events": run.checker.state.out_of_order[:50],
        "seconds": round(seconds, 1),
    }


def print_table(result: dict[str, Any]) -> None:
    say()
    head = (
        f"{'fault':<28} {'injected':>8} {'violations':>10} {'recovery p50':>13} {'p95':>7}"
        f" {'first command p50':>18} {'p95':>7}"
    )
    say(head)
    say("-" * len(head))
    for row in result["faults"]:
        p50, p95 = row["recovery_p50_s"], row["recovery_p95_s"]
        say(
            f"{row['fault']:<28} {row['injected']:>8} {row['violations']:>10} "
            f"{_seconds_or_dash(p50):>13} {_seconds_or_dash(p95):>7}"
            f" {_seconds_or_dash(row['first_command_p50_s']):>18}"
            f" {_seconds_or_dash(row['first_command_p95_s']):>7}"
        )
    say("-" * len(head))
    commands = result["commands"]
    say(
        f"{result['injected']} faults, {result['violations']} violations; "
        f"{commands['acknowledged']:,} commands acknowledged, {commands['refused']:,} refused, "
        f"{commands['unknown']} given up, in {result['seconds']:.0f} s"
    )
    for found in result["exits"]:
        say(f"{found['part']} exited by itself after {found['fault']} (started again)")
    if result["final_check"]:
        say(f"final check: {result['final_check'][:5]}")
