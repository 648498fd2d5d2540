"""The fault run's workload pauses for its checks: once `quiet` has returned, no client
starts a command until the gate opens again, however the two interleave."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path
from typing import Any

LOAD = Path(__file__).resolve().parents[2] / "load"
sys.path.insert(0, str(LOAD))

from faults_workload import Workload  # noqa: E402


class CountingWorkload(Workload):
    """Commands that only count when they start and take a moment to finish."""

    started_while_quiet: int = 0
    quiet_since: bool = False

    async def one(self, http: Any) -> None:
        if self.quiet_since:
            self.started_while_quiet += 1
        await asyncio.sleep(0.01)


async def _pause_right_after_opening(clients: int) -> CountingWorkload:
    workload = CountingWorkload("http://127.0.0.1:9", "token", pause_s=0.0)
    stop = asyncio.Event()
    tasks = [asyncio.create_task(workload.client(stop)) for _ in range(clients)]
    await asyncio.sleep(0.05)  # every client is waiting at the closed gate
    # A check ends (the gate opens) and the next begins (`quiet`) without a step between:
    # the clients the opening woke have not run yet.
    workload.gate.set()
    assert await workload.quiet(timeout_s=5)
    workload.quiet_since = True
    await asyncio.sleep(0.1)
    stop.set()
    workload.gate.set()
    await asyncio.gather(*tasks)
    return workload


def test_no_command_starts_after_quiet_returned() -> None:
    workload = asyncio.run(_pause_right_after_opening(clients=6))
    assert workload.started_while_quiet == 0
