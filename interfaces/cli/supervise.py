"""Keeping `vigil up`'s own processes running: start each until ready, restart one that exits.

A Vigil process (an API, the relay, the workers, the case opener) that exits while `vigil up`
runs is started again after a backoff (`RestartPolicy`: 1 s doubling to 30 s), with the same
arguments and the same ports, and goes through the same readiness wait as at start before it
counts as ready again. Each exit is printed (which process, its exit code or signal, the last
lines of its log, when it restarts) and logged as a structured `process_exited` line. Only a
process that keeps failing at start (`START_FAILURES_MAX` exits or readiness failures in a row,
without a healthy minute between) makes the supervisor give up: `StartupFailed`, and `vigil up`
stops everything. A process that becomes ready and then crashes is restarted for as long as
`vigil up` runs, the backoff capped at 30 s, so a crash loop costs little and stays visible.
"""

from __future__ import annotations

import contextlib
import signal
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import httpx
import structlog

from infrastructure.ops.embedded import ManagedProcess, log_tail, spawn

log = structlog.get_logger("vigil.up")

READY_TIMEOUT_S = 60.0
READY_POLL_S = 0.2
READY_PROBE_TIMEOUT_S = 1.0
RESTART_BACKOFF_S_MIN = 1.0
RESTART_BACKOFF_S_MAX = 30.0
# Up this long after becoming ready: the process is healthy, and its backoff and count of
# failed starts begin again.
HEALTHY_AFTER_S = 60.0
# Five failed starts in a row take at least 15 s of backoff (1 + 2 + 4 + 8) and five starts: a
# passing cause (the database restarting, a port still held, a group rebalancing) clears
# within that; one that does not (a bad setting, a schema it cannot migrate, code that fails
# on import) will not clear by itself, and restarting it forever would hide it behind a
# `vigil up` that looks healthy.
START_FAILURES_MAX = 5
EXIT_LOG_LINES = 10


@dataclass(frozen=True)
class ChildSpec:
    """One Vigil process `vigil up` runs. `name` is its key in up.json (URL and pid)."""

    name: str
    argv: tuple[str, ...]
    url: str | None = None  # written to up.json under `name`
    ready_url: str | None = None  # 200 means ready; None: ready once started
    # And, if set, this gauge in the ready URL's Prometheus text is above 0.
    ready_gauge: str | None = None
    port: int | None = None  # must be free before we start
    port_variable: str | None = None  # the setting that moves it


class StartupFailed(RuntimeError):
    """A part of the system could not start; the message says which and why."""


@dataclass
class RestartPolicy:
    """When to restart a process that exited, and when to give up on it. No clock inside:
    the caller says how long the process had been ready."""

    backoff_s_min: float = RESTART_BACKOFF_S_MIN
    backoff_s_max: float = RESTART_BACKOFF_S_MAX
    healthy_after_s: float = HEALTHY_AFTER_S
    start_failures_max: int = START_FAILURES_MAX
    start_failures: int = 0  # exits before ready (or never ready), in a row
    backoff_s: float = field(init=False)  # the delay before the next restart

    def __post_init__(self) -> None:
        assert 0 < self.backoff_s_min <= self.backoff_s_max
        assert self.start_failures_max >= 1
        self.backoff_s = self.backoff_s_min

    def exited(self, ready_for_s: float | None) -> float | None:
        """The delay before restarting a process that exited after being ready for
        `ready_for_s` (None: it never became ready), or None: give up on it."""
        if ready_for_s is not None and ready_for_s >= self.healthy_after_s:
            self.backoff_s = self.backoff_s_min
            self.start_failures = 0
        if ready_for_s is None:
            self.start_failures += 1
            if self.start_failures >= self.start_failures_max:
                return None
        delay_s = self.backoff_s
        self.backoff_s = min(self.backoff_s * 2, self.backoff_s_max)
        return delay_s


def describe_exit(code: int) -> str:
    """`Popen.returncode` in words: a negative code is the signal that ended the process."""
    if code < 0:
        with contextlib.suppress(ValueError):
            return f"was killed by {signal.Signals(-code).name}"
        return f"was killed by signal {-code}"
    return f"exited with code {code}"


def gauge_above_zero(metrics: str, gauge: str) -> bool:
    """Whether Prometheus text gives `gauge` (unlabelled) a value above 0."""
    for line in metrics.splitlines():
        name, _, value = line.partition(" ")
        if name == gauge:
            try:
                return float(value) > 0
            except ValueError:
                return False
    return False


def is_ready(http: httpx.Client, spec: ChildSpec) -> bool:
    """One readiness probe: the ready URL answers 200 (and the gauge, if any, is above 0)."""
    if spec.ready_url is None:
        return True
    try:
        reply = http.get(spec.ready_url)
    except httpx.HTTPError:
        return False
    return reply.status_code == 200 and (
        spec.ready_gauge is None or gauge_above_zero(reply.text, spec.ready_gauge)
    )


def say(line: str = "") -> None:
    print(line, flush=True)


def complain(line: str) -> None:
    print(f"vigil up: {line}", file=sys.stderr, flush=True)


@dataclass
class Child:
    """A supervised process: running (`process`), or waiting to restart (`restart_at_s`)."""

    spec: ChildSpec
    process: ManagedProcess | None = None
    # The last one started: up.json keeps naming it while the next waits to start.
    pid: int | None = None
    policy: RestartPolicy = field(default_factory=RestartPolicy)
    started_at_s: float = 0.0
    ready_at_s: float | None = None
    restart_at_s: float | None = None
    restarts: int = 0


@dataclass
class Children:
    """Vigil's own processes under `vigil up`. `start` runs at start-up (any failure is
    fatal); `check`, called every watch interval, notices exits, restarts, and readiness."""

    var_dir: Path
    env: dict[str, str]
    stop_requested: threading.Event
    on_pids_changed: Callable[[], None]  # up.json names the new pid
    children: list[Child] = field(default_factory=list)  # in start order

    def log_path(self, spec: ChildSpec) -> Path:
        return self.var_dir / f"{spec.name}.log"

    def pids(self) -> dict[str, int]:
        return {c.spec.name: c.pid for c in self.children if c.pid is not None}

    def start(self, spec: ChildSpec) -> None:
        """Start `spec` and wait until it is ready: StartupFailed if it exits or times out."""
        say(f"starting {spec.name}…")
        child = Child(spec, started_at_s=time.monotonic())
        child.process = spawn(spec.name, spec.argv, self.log_path(spec), self.env)
        child.pid = child.process.pid
        self.children.append(child)
        with httpx.Client(trust_env=False, timeout=READY_PROBE_TIMEOUT_S) as http:
            while not self.stop_requested.is_set():
                failure = self._start_failure(child)
                if failure is not None:
                    raise StartupFailed(
                        f"{spec.name} {failure}; last lines of {child.process.log_path}:\n"
                        f"{log_tail(child.process.log_path)}"
                    )
                if is_ready(http, spec):
                    child.ready_at_s = time.monotonic()
                    where = f"on {spec.url} " if spec.url else ""
                    elapsed_s = child.ready_at_s - child.started_at_s
                    say(f"  {spec.name} ready {where}(pid {child.process.pid}, {elapsed_s:.1f} s)")
                    return
                self.stop_requested.wait(READY_POLL_S)

    def check(self, http: httpx.Client) -> None:
        """One round over the processes; StartupFailed when one keeps failing at start."""
        for child in self.children:
            if self.stop_requested.is_set():
                return
            now_s = time.monotonic()
            if child.process is None:
                if child.restart_at_s is not None and now_s >= child.restart_at_s:
                    self._restart(child)
            elif child.ready_at_s is None:
                failure = self._start_failure(child)
                if failure is not None:
                    self._exited(child, failure, now_s)
                elif is_ready(http, child.spec):
                    self._became_ready(child)
            elif (code := child.process.process.poll()) is not None:
                self._exited(child, describe_exit(code), now_s)

    def _start_failure(self, child: Child) -> str | None:
        """Why a starting process failed (it exited, or is not ready in time), if it did."""
        assert child.process is not None
        code = child.process.process.poll()
        if code is not None:
            return f"{describe_exit(code)} while starting"
        if time.monotonic() - child.started_at_s >= READY_TIMEOUT_S:
            child.process.stop()  # it may be stuck; a restart starts it afresh
            return f"was not ready within {READY_TIMEOUT_S:.0f} s ({child.spec.ready_url})"
        return None

    def _exited(self, child: Child, how: str, now_s: float) -> None:
        assert child.process is not None
        process, child.process = child.process, None
        ready_for_s = None if child.ready_at_s is None else now_s - child.ready_at_s
        delay_s = child.policy.exited(ready_for_s)
        name = child.spec.name
        up_for = "" if ready_for_s is None else f" after {ready_for_s:.0f} s"
        log.warning(
            "process_exited",
            process=name,
            pid=process.pid,
            exit_code=process.process.returncode,
            how=how,
            ready_for_s=ready_for_s,
            restart_in_s=delay_s,
            start_failures=child.policy.start_failures,
        )
        tail = log_tail(process.log_path, EXIT_LOG_LINES)
        complain(f"{name} (pid {process.pid}) {how}{up_for}; last lines of {process.log_path}:")
        print(tail, file=sys.stderr, flush=True)
        if delay_s is None:
            failures = child.policy.start_failures
            log.error("process_given_up", process=name, start_failures=failures)
            raise StartupFailed(
                f"{name} failed to start {failures} times in a row; stopping everything"
            )
        child.restart_at_s = now_s + delay_s
        complain(f"restarting {name} in {delay_s:.0f} s")

    def _restart(self, child: Child) -> None:
        spec, log_path = child.spec, self.log_path(child.spec)
        child.restarts += 1
        child.restart_at_s, child.ready_at_s = None, None
        with log_path.open("a") as out:  # the crash's own lines stay above this one
            stamp = datetime.now(UTC).isoformat(timespec="seconds")
            out.write(f"--- vigil up: restart {child.restarts} of {spec.name} at {stamp} ---\n")
        child.started_at_s = time.monotonic()
        child.process = spawn(spec.name, spec.argv, log_path, self.env, append=True)
        child.pid = child.process.pid
        log.info("process_restarted", process=spec.name, pid=child.process.pid)
        say(f"restarted {spec.name} (pid {child.process.pid}); waiting until it is ready…")
        self.on_pids_changed()

    def _became_ready(self, child: Child) -> None:
        assert child.process is not None
        child.ready_at_s = time.monotonic()
        elapsed_s = child.ready_at_s - child.started_at_s
        pid = child.process.pid
        log.info("process_ready", process=child.spec.name, pid=pid, restarts=child.restarts)
        say(f"  {child.spec.name} ready again (pid {pid}, {elapsed_s:.1f} s)")
