"""`vigil up` as an operator runs it (the machine's PostgreSQL and Redis, its own embedded
broker): a Vigil process killed outright is restarted, named in up.json by its new pid, and
serves again, while `vigil up` itself keeps running."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from uuid import uuid4

import httpx
import psutil
import pytest

from infrastructure.settings import Settings
from interfaces.api.http.tokens import issue_token
from interfaces.cli.supervise import START_FAILURES_MAX
from tests.conftest import ROOT, Databases, free_port, settings_env, stop_gracefully

pytestmark = pytest.mark.e2e

UP_READY_TIMEOUT_S = 120.0
# Backoff (1 s), a new process, and its consumer rejoining the group the killed one left.
RESTART_TIMEOUT_S = 90.0
STOP_TIMEOUT_S = 60.0
# The crash, then five failed starts: 1 + 2 + 4 + 8 + 16 s of backoff, each start a second.
GIVE_UP_TIMEOUT_S = 90.0
POLL_S = 0.2


@dataclass
class Up:
    settings: Settings
    process: subprocess.Popen[bytes]
    output_path: Path

    def up_file(self) -> dict[str, Any]:
        data: dict[str, Any] = json.loads(self.settings.up_file().read_text())
        return data

    def output(self) -> str:
        var_logs = "\n".join(
            f"--- {path.name}\n{path.read_text(errors='replace')[-3000:]}"
            for path in sorted(self.settings.var_dir.glob("*.log"))
        )
        return f"{self.output_path.read_text(errors='replace')}\n{var_logs}"

    def headers(self, role: str) -> dict[str, str]:
        branch = "001" if role == "teller" else None
        token = issue_token(self.settings, role=role, branch=branch, subject=f"{role}-up")
        return {"Authorization": f"Bearer {token}"}


def _wait(up: Up, probe: Any, timeout_s: float, what: str) -> Any:
    deadline = time.monotonic() + timeout_s
    while True:
        found = probe()
        if found:
            return found
        if up.process.poll() is not None:
            pytest.fail(f"vigil up exited ({up.process.returncode}) {what}\n{up.output()}")
        if time.monotonic() > deadline:
            pytest.fail(f"{what}: not within {timeout_s:.0f} s\n{up.output()}")
        time.sleep(POLL_S)


@contextmanager
def running_up(databases: Databases, work: Path, **overrides: Any) -> Iterator[Up]:
    """`vigil up` on a fresh database, the machine's Redis, any free ports; returns once
    var/up.json is written, and stops it (SIGTERM) at the end if it still runs."""
    ports: dict[str, Any] = {
        "command_port": 0,
        "query_port": 0,
        "relay_metrics_port": 0,
        "workers_metrics_port": 0,
        "case_opener_metrics_port": 0,
    }
    settings = databases.settings_for(
        databases.fresh(),
        work / "var",
        topic_prefix=f"up{uuid4().hex[:6]}.",
        topic_partitions=4,
        **{**ports, **overrides},
    )
    env = settings_env(settings)
    env["VIGIL_LOG_LEVEL"] = "INFO"  # up.log's restart lines are at INFO and WARNING
    output_path = work / "up-output.log"
    with output_path.open("wb") as output:
        process = subprocess.Popen(
            [sys.executable, "-m", "interfaces.cli", "up"],
            cwd=ROOT,
            env=env,
            stdout=output,
            stderr=subprocess.STDOUT,
        )
    running = Up(settings, process, output_path)
    try:
        _wait(running, settings.up_file().exists, UP_READY_TIMEOUT_S, "var/up.json written")
        yield running
    finally:
        stop_gracefully(process, STOP_TIMEOUT_S)


@pytest.fixture(scope="module")
def up(databases: Databases, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Up]:
    with running_up(databases, tmp_path_factory.mktemp("up")) as running:
        yield running


def _balance_seen(up: Up, http: httpx.Client, account_id: str, version: int) -> str | None:
    reply = http.get(
        f"{up.up_file()['query_api']}/v1/accounts/{account_id}", headers=up.headers("viewer")
    )
    if reply.status_code != 200 or reply.json()["projected_version"] < version:
        return None
    balance: str = reply.json()["balance"]
    return balance


def _deposit(up: Up, http: httpx.Client, account_id: str, amount: str) -> int:
    reply = http.post(
        f"{up.up_file()['command_api']}/v1/accounts/{account_id}/deposits",
        json={"amount": amount, "currency": "GBP"},
        headers=up.headers("teller"),
    )
    assert reply.status_code == 201, reply.text
    version: int = reply.json()["version"]
    return version


def test_killed_workers_and_relay_are_restarted_under_new_pids_and_serve_again(up: Up) -> None:
    with httpx.Client(timeout=10, trust_env=False) as http:
        opened = http.post(
            f"{up.up_file()['command_api']}/v1/accounts",
            json={"owner": "Up Test", "branch": "001", "currency": "GBP"},
            headers=up.headers("teller"),
        )
        assert opened.status_code == 201, opened.text
        account_id = opened.json()["account_id"]
        version = _deposit(up, http, account_id, "10.00")
        _wait(
            up, lambda: _balance_seen(up, http, account_id, version), 60, "first deposit projected"
        )
        killed = {name: up.up_file()["pids"][name] for name in ("workers", "relay")}
        for pid in killed.values():
            os.kill(pid, signal.SIGKILL)

        def new_pids() -> dict[str, int] | None:
            pids = up.up_file()["pids"]
            fresh = {name: pids[name] for name in killed if pids[name] != killed[name]}
            return fresh if len(fresh) == len(killed) else None

        restarted = _wait(up, new_pids, RESTART_TIMEOUT_S, "new pids in up.json")
        assert all(psutil.pid_exists(pid) for pid in restarted.values()), restarted
        version = _deposit(up, http, account_id, "5.00")
        balance = _wait(
            up,
            lambda: _balance_seen(up, http, account_id, version),
            RESTART_TIMEOUT_S,
            "deposit after the kill projected",
        )
        assert balance == "15.00"

        def ready_again() -> bool:
            output = up.output_path.read_text(errors="replace")
            return all(f"{name} ready again (pid {restarted[name]}" in output for name in killed)

        _wait(up, ready_again, RESTART_TIMEOUT_S, "both reported ready again")

    assert up.process.poll() is None, "vigil up keeps running"
    output = up.output_path.read_text(errors="replace")
    for name, pid in killed.items():
        assert f"{name} (pid {pid}) was killed by SIGKILL" in output, output
        assert f"restarting {name} in 1 s" in output, output
    exits = [
        json.loads(line)
        for line in (up.settings.var_dir / "up.log").read_text().splitlines()
        if '"process_exited"' in line
    ]
    assert {(e["process"], e["pid"], e["exit_code"]) for e in exits} == {
        (name, pid, -signal.SIGKILL) for name, pid in killed.items()
    }


def test_stopping_vigil_up_with_sigterm_stops_everything_and_removes_up_json(up: Up) -> None:
    pids = up.up_file()["pids"]
    up.process.send_signal(signal.SIGTERM)
    assert up.process.wait(STOP_TIMEOUT_S) == 0, up.output()
    assert not up.settings.up_file().exists()
    assert not [name for name, pid in pids.items() if _alive(pid)], pids


def _alive(pid: int) -> bool:
    try:
        return bool(psutil.Process(pid).status() != psutil.STATUS_ZOMBIE)
    except psutil.NoSuchProcess:
        return False


def _hold_port(port: int, timeout_s: float) -> socket.socket:
    """Listen on the port a killed process held, as soon as the kernel has freed it."""
    deadline = time.monotonic() + timeout_s
    while True:
        holder = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        holder.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            holder.bind(("127.0.0.1", port))
        except OSError:
            holder.close()
            assert time.monotonic() < deadline, f"port {port} not freed"
            time.sleep(0.01)
            continue
        holder.listen()
        return holder


def test_a_process_that_keeps_failing_at_start_makes_vigil_up_stop_everything(
    databases: Databases, tmp_path: Path
) -> None:
    metrics_port = free_port()
    with running_up(databases, tmp_path, workers_metrics_port=metrics_port) as up:
        pids = up.up_file()["pids"]
        os.kill(pids["workers"], signal.SIGKILL)
        # Its metrics port taken, every new workers process exits while starting.
        with _hold_port(metrics_port, timeout_s=5.0):
            code = up.process.wait(GIVE_UP_TIMEOUT_S)
        output = up.output_path.read_text(errors="replace")
    assert code == 1, output
    assert output.count("exited with code 1 while starting") == START_FAILURES_MAX, output
    assert f"workers failed to start {START_FAILURES_MAX} times in a row" in output, output
    assert "Address already in use" in output, "the tail of its log says why"
    assert not up.settings.up_file().exists()
    assert not [name for name, pid in pids.items() if _alive(pid)], pids
