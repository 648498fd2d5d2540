"""The fault-injection run in its short form (`load/faults.py --quick`): the whole system on
servers of its own, a mixed workload with retrying clients, and each kind of fault once (the
command API killed, also in the middle of a 1,000-item batch; the query API, the relay, the
workers and the case opener killed; the broker restarted with its topics lost; Redis down;
PostgreSQL stopped, killed, and stalled behind a proxy), the bank's invariants checked after
each and, at the end, a fresh replay against the read models and `vigil audit verify`."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
RUN_TIMEOUT_S = 900


@pytest.mark.timeout(RUN_TIMEOUT_S + 60)
def test_each_kind_of_fault_loses_nothing_and_applies_nothing_twice(tmp_path: Path) -> None:
    out = tmp_path / "faults.json"
    argv = [sys.executable, str(ROOT / "load" / "faults.py"), "--quick", "--seed", "7"]
    result = subprocess.run(
        [*argv, "--out", str(out)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT_S,
        check=False,
    )
    said = f"{result.stdout[-4000:]}\n{result.stderr[-4000:]}"
    assert out.exists(), said
    report = json.loads(out.read_text())
    assert result.returncode == 0, said
    assert report["violations"] == 0, report["details"]
    assert report["final_check"] == []
    faults = {row["fault"]: row for row in report["faults"]}
    for part in ("command", "relay", "worker", "broker", "redis", "postgres"):
        assert any(part in name for name in faults), (part, sorted(faults))
    assert len(faults) == report["injected"] == 11
    for row in faults.values():
        assert row["injected"] == 1
        assert row["recovery_p50_s"] is not None, row  # recovered: commands and projections
    commands = report["commands"]
    assert commands["acknowledged"] > 1_000, commands  # the 1,000-item batch, and the rest
    assert commands["unknown"] == 0, commands  # every client learnt how its command ended
