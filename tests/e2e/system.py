"""The whole system as real processes, for end-to-end tests: command and query APIs,
relay, projection workers and case opener against a tansu broker of its own and a fresh
database. Tests keep apart by topic prefix and database."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar
from uuid import uuid4

import orjson
import pytest
from aiokafka import AIOKafkaProducer

from infrastructure.kafka.authenticity import seal_alert
from infrastructure.kafka.topics import alerts_topic
from infrastructure.ops.embedded import EmbeddedBroker, start_broker
from infrastructure.settings import Settings
from interfaces.api.http.tokens import issue_token
from tests.conftest import ROOT, ApiServer, Databases, settings_env, start_api

# The CLI arguments of each background process `vigil up` runs.
PROCESSES: dict[str, tuple[str, ...]] = {
    "relay": ("relay",),
    "workers": ("workers",),
    "case_opener": ("case-opener",),
}
POLL_S = 0.2

T = TypeVar("T")


@dataclass
class System:
    settings: Settings
    broker: EmbeddedBroker
    command: ApiServer
    query: ApiServer
    log_dir: Path
    processes: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)

    def start(self, name: str, args: tuple[str, ...] | None = None, metrics_port: int = 0) -> None:
        """Start `name`: one of PROCESSES, or any other `vigil` subcommand given its `args`
        (`metrics_port` 0: without /metrics)."""
        command = PROCESSES[name] if args is None else args
        with (self.log_dir / f"{name}.log").open("ab") as log:
            self.processes[name] = subprocess.Popen(
                [
                    *(sys.executable, "-m", "interfaces.cli", *command),
                    *("--metrics-port", str(metrics_port)),
                ],
                cwd=ROOT,
                env=settings_env(self.settings),
                stdout=log,
                stderr=subprocess.STDOUT,
            )

    def kill(self, name: str) -> None:
        """SIGKILL, as a crash would."""
        process = self.processes.pop(name)
        process.kill()
        process.wait(10)

    def stop_all(self) -> None:
        for name in list(self.processes):
            process = self.processes.pop(name)
            process.terminate()
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(5)
        self.query.stop()
        self.command.stop()

    def headers(self, role: str, subject: str | None = None) -> dict[str, str]:
        branch = "001" if role == "teller" else None
        token = issue_token(
            self.settings, role=role, branch=branch, subject=subject or f"{role}-e2e"
        )
        return {"Authorization": f"Bearer {token}"}

    def publish_alerts(self, *alerts: dict[str, Any], seal: bool = True) -> None:
        """Straight onto `vigil.alerts`, key = account id, as the alerts outbox does
        (sealed with the MAC key as it does, unless `seal` is false)."""
        asyncio.run(_publish(self.settings, alerts, seal))

    def vigil(self, *args: str, timeout_s: float = 300) -> subprocess.CompletedProcess[str]:
        """A `vigil` command (`audit verify`, `quarantine list`, ...) against this system."""
        return subprocess.run(
            [sys.executable, "-m", "interfaces.cli", *args],
            cwd=ROOT,
            env=settings_env(self.settings),
            capture_output=True,
            text=True,
            timeout=timeout_s,
            check=False,
        )

    def log_tail(self, chars: int = 3000) -> str:
        return "\n".join(
            f"--- {path.name}\n{path.read_text(errors='replace')[-chars:]}"
            for path in sorted(self.log_dir.glob("*.log"))
        )

    def warnings(self, lines: int = 12) -> str:
        """The last warnings and errors of each process and of the broker, less the
        client library's connection chatter: what a failure message needs to be read
        without the run's files."""
        paths = [*sorted(self.log_dir.glob("*.log")), self.broker.log_path]
        parts = []
        for path in paths:
            text = path.read_text(errors="replace") if path.exists() else ""
            found = [
                line[:400]
                for line in text.splitlines()
                if ("warning" in line.lower() or "error" in line.lower())
                and "Unable connect to node" not in line
                and "Unable to update metadata" not in line
            ]
            parts.append(f"--- {path.name}\n" + "\n".join(found[-lines:]))
        return "\n".join(parts)


async def _publish(settings: Settings, alerts: tuple[dict[str, Any], ...], seal: bool) -> None:
    producer = AIOKafkaProducer(
        bootstrap_servers=settings.resolved_kafka_bootstrap(),
        acks="all",
        enable_idempotence=False,  # tansu refuses idempotent producers
        request_timeout_ms=10_000,
    )
    await producer.start()
    try:
        for alert in alerts:
            # Sealed as the alerts relay seals them: the case opener refuses anything else.
            key, kid = settings.audit_mac_key_resolved(), settings.audit_mac_kid
            sealed = seal_alert(alert, key, kid) if seal else alert
            await producer.send_and_wait(
                alerts_topic(settings), orjson.dumps(sealed), key=str(alert["account_id"]).encode()
            )
    finally:
        await producer.stop()


@contextmanager
def running_system(
    databases: Databases,
    work: Path,
    processes: tuple[str, ...] = tuple(PROCESSES),
    **overrides: Any,
) -> Iterator[System]:
    broker = start_broker(work / "broker")
    settings = databases.settings_for(
        databases.fresh(),
        work / "var",
        kafka_bootstrap=broker.bootstrap,
        topic_prefix=f"e2e{uuid4().hex[:6]}.",
        topic_partitions=4,
        **overrides,
    )
    logs = work / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    system: System | None = None
    try:
        command = start_api("command", settings, logs)
        try:
            # The console (in the query API) sends its forms' commands to this command API.
            console = settings.model_copy(update={"command_api_url": command.url})
            query = start_api("query", console, logs)
        except BaseException:
            command.stop()
            raise
        system = System(settings, broker, command, query, logs)
        try:
            for name in processes:
                system.start(name)
            yield system
        finally:
            system.stop_all()
    finally:
        # A test may have restarted the broker: stop the one running now.
        (system.broker if system is not None else broker).stop()


def eventually(
    probe: Callable[[], T | None], timeout_s: float, what: str, system: System | None = None
) -> T:
    """`probe()` until it returns a value; fail naming `what` (and the logs) after the bound."""
    deadline = time.monotonic() + timeout_s
    while True:
        found = probe()
        if found is not None:
            return found
        if time.monotonic() > deadline:
            logs = system.log_tail() if system is not None else ""
            pytest.fail(f"{what} not within {timeout_s:.0f} s\n{logs}")
        time.sleep(POLL_S)
