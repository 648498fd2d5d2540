"""The system `make bench` measures, and how it talks to it: the processes `vigil up` runs,
started by the benchmark itself, stopped and sampled for CPU time (`System`), and a minimal
asyncio HTTP/1.1 client for its loopback APIs (`Http`). Used by bench.py, which imports it as
a sibling module.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit, urlunsplit

import httpx
import orjson
import psutil
import psycopg
from psycopg import sql

sys.path.insert(0, str(Path(__file__).resolve().parent))
from target import require_loopback

from infrastructure.kafka.consumer import PARTITIONS_ASSIGNED_GAUGE
from infrastructure.ops.embedded import (
    LOOPBACK,
    EmbeddedServerError,
    ManagedProcess,
    free_port,
    log_tail,
    spawn,
    start_broker,
    start_redis,
)
from infrastructure.ops.postgres_server import EmbeddedPostgres, start_postgres
from infrastructure.runtime import tune_gc
from infrastructure.settings import load_settings
from interfaces.cli.supervise import gauge_above_zero

HTTP_TIMEOUT_S = 60.0
BASELINE_DATABASE = "vigil_baseline"
# The child environment gets these from us: fresh servers, free ports, no encryption.
OWN_VARIABLES = (
    "VIGIL_DATABASE_URL",
    "VIGIL_REDIS_URL",
    "VIGIL_KAFKA_BOOTSTRAP",
    "VIGIL_VAR_DIR",
    "VIGIL_ENV",
    "VIGIL_CIPHER_KEY",
    "VIGIL_COMMAND_PORT",
    "VIGIL_QUERY_PORT",
    "VIGIL_WORKERS_METRICS_PORT",
    "VIGIL_RELAY_METRICS_PORT",
    "VIGIL_CASE_OPENER_METRICS_PORT",
)
BENCH_RATE_LIMITS = {
    "VIGIL_RATE_LIMIT_COMMANDS_PER_S": "0",
    "VIGIL_RATE_LIMIT_READS_PER_S": "0",
    "VIGIL_RATE_LIMIT_ANONYMOUS_PER_S": "0",
}
TRANSPORT_ERRORS = (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, TimeoutError)


class BenchFailed(RuntimeError):
    """The run cannot give honest figures (the system did not start, setup failed)."""


T = TypeVar("T")


def start_tool(name: str) -> tuple[datetime, Path]:
    """What every tool that starts a system of its own does first: SIGTERM and SIGHUP end
    the run as Ctrl-C does (through every `finally`), garbage collected as seldom as the
    system's processes do, and a run directory `var/<name>/run-<time>` named (not made)."""
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    signal.signal(signal.SIGHUP, signal.default_int_handler)
    tune_gc()
    started_at = datetime.now(UTC)
    return started_at, (Path("var") / name / f"run-{started_at:%Y%m%d-%H%M%S}").resolve()


SERVER_DATA = ("pgdata", "redis", "broker")


def run_in_system(
    tool: str, system: System, work: Callable[[System], T], *, keep: bool
) -> tuple[int, T | None]:
    """`work(system)` with the system started, then everything stopped, and the servers'
    data removed unless `keep`: (0, its result), or (1, None) if the run failed, (130,
    None) if interrupted, each said on stderr as `tool: ...`."""
    try:
        with system.running():
            return 0, work(system)
    except BenchFailed as error:
        print(f"{tool}: {error}", file=sys.stderr)
        return 1, None
    except KeyboardInterrupt:
        print(f"{tool}: interrupted; everything it started is stopped", file=sys.stderr)
        return 130, None
    finally:
        if system.leftovers:
            print(f"{tool}: could not stop {', '.join(system.leftovers)}", file=sys.stderr)
        if not keep:
            for data in SERVER_DATA:
                shutil.rmtree(system.run_dir / data, ignore_errors=True)


# HTTP ----------------------------------------------------------------------------------------


class Http:
    """One keep-alive HTTP/1.1 connection to a loopback API, one request at a time.

    Not httpx: its AsyncClient spent 2-8 ms of CPU per request here (64 concurrent requests to
    a trivial uvicorn app), which on 2 cores takes a core from the servers being measured; this
    spends about 35 us. It reads Content-Length replies only, which uvicorn sends for every
    JSON and problem reply. Every POST carries an Idempotency-Key, so the one resend after the
    server closed an idle connection cannot apply a command twice.
    """

    def __init__(self, base_url: str, token: str) -> None:
        parts = urlsplit(require_loopback(base_url, "API"))
        assert parts.hostname, base_url
        assert parts.port, base_url
        self.host, self.port = parts.hostname, parts.port
        self.headers = (
            f"host: {parts.netloc}\r\nauthorization: Bearer {token}\r\n"
            "content-type: application/json\r\n"
        ).encode()
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def request(
        self, method: str, path: str, body: bytes = b"", key: str | None = None
    ) -> tuple[int, bytes]:
        reused = self.writer is not None
        try:
            async with asyncio.timeout(HTTP_TIMEOUT_S):
                try:
                    return await self._exchange(method, path, body, key)
                except (asyncio.IncompleteReadError, ConnectionError):
                    if not reused:
                        raise
                    self.close()  # closed by the server while idle: once more on a new one
                    return await self._exchange(method, path, body, key)
        except BaseException:
            self.close()  # a half-read reply must not be taken for the next request's
            raise

    async def _exchange(
        self, method: str, path: str, body: bytes, key: str | None
    ) -> tuple[int, bytes]:
        if self.reader is None or self.writer is None:
            self.reader, self.writer = await asyncio.open_connection(self.host, self.port)
        extra = f"idempotency-key: {key}\r\n".encode() if key else b""
        start = f"{method} {path} HTTP/1.1\r\n".encode()
        length = f"content-length: {len(body)}\r\n\r\n".encode()
        self.writer.write(start + self.headers + extra + length + body)
        head = (await self.reader.readuntil(b"\r\n\r\n")).decode("latin-1").split("\r\n")
        status = int(head[0].split(" ", 2)[1])
        headers = {}
        for line in head[1:]:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        if "content-length" not in headers:
            raise ValueError(f"{method} {path}: a reply without Content-Length")
        reply = await self.reader.readexactly(int(headers["content-length"]))
        if headers.get("connection", "").lower() == "close":
            self.close()
        return status, reply

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
        self.reader = self.writer = None


def reply_code(status: int, reply: bytes) -> str:
    with contextlib.suppress(ValueError, AttributeError):
        return f"{status} {orjson.loads(reply).get('code', '')}".strip()
    return str(status)


# The system under test -----------------------------------------------------------------------

API_READY_PATH = "/health/ready"
READY_TIMEOUT_S = 120.0
CHILD_STOP_TIMEOUT_S = 20.0
# Stopped first to last: the APIs, then the pipeline behind them.
CHILD_ORDER = ("command_api", "query_api", "relay", "workers", "case_opener")


@dataclass
class System:
    """The whole system, started by the benchmark itself under a directory of its own.

    What `vigil up` runs, process by process (embedded PostgreSQL, Redis and broker; both APIs,
    the relay, the projection workers, the case opener), but without its restarts: a phase can
    stop the relay and the workers and start them again (`stop`, `start`), and the workers can
    start again with another rules file. Every process started is stopped by `running()`.
    """

    run_dir: Path
    rules: Path
    command_workers: int = 1
    workers_processes: int = 1
    info: dict[str, Any] = field(default_factory=dict)
    leftovers: list[str] = field(default_factory=list)
    servers: list[tuple[str, Any]] = field(default_factory=list)
    children: dict[str, list[ManagedProcess]] = field(default_factory=dict)
    env: dict[str, str] = field(default_factory=dict)
    postgres: EmbeddedPostgres | None = None
    # The PostgreSQL URL the children get, from the server's (the fault driver puts a proxy
    # between them); by default the server's own.
    children_database_url: Callable[[EmbeddedPostgres], str] | None = None

    @contextlib.contextmanager
    def running(self) -> Iterator[System]:
        try:
            self._start()
            yield self
        finally:
            # A second Ctrl-C must not cut the teardown short: every step of it is bounded.
            quiet = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
            previous = {signum: signal.signal(signum, signal.SIG_IGN) for signum in quiet}
            try:
                self._stop()
            finally:
                for signum, handler in previous.items():
                    signal.signal(signum, handler)

    def _start(self) -> None:
        self.run_dir.mkdir(parents=True)
        try:
            self.postgres = start_postgres(self.run_dir)
            self.servers.append(("postgres", self.postgres))
            redis = start_redis(self.run_dir)
            self.servers.append(("redis", redis))
            broker = start_broker(self.run_dir)
            self.servers.append(("broker", broker))
        except EmbeddedServerError as error:
            raise BenchFailed(f"a server did not start: {error}") from None
        env = {k: v for k, v in os.environ.items() if k not in OWN_VARIABLES}
        hook = self.children_database_url
        env.update(
            VIGIL_DATABASE_URL=hook(self.postgres) if hook else self.postgres.url,
            VIGIL_REDIS_URL=redis.url,
            VIGIL_KAFKA_BOOTSTRAP=broker.bootstrap,
            VIGIL_VAR_DIR=str(self.run_dir),
            VIGIL_ENV="development",
        )  # output buffered, as under `vigil up`: the log is flushed within 0.2 s
        # Rate limits stated, not left to defaults: off unless the environment says
        # otherwise (set VIGIL_RATE_LIMIT_COMMANDS_PER_S to measure the limiter's cost).
        for name, value in BENCH_RATE_LIMITS.items():
            env.setdefault(name, value)
        self.env = env
        self.info = {
            "database_url": self.postgres.url,
            "redis_url": redis.url,
            "kafka_bootstrap": broker.bootstrap,
            "command_api": f"http://{LOOPBACK}:{free_port()}",
            "query_api": f"http://{LOOPBACK}:{free_port()}",
        }
        load_settings(var_dir=self.run_dir, env="development").dev_keys()  # before the APIs
        for name in CHILD_ORDER:
            self.start(name)

    def start(self, name: str, rules: Path | None = None, *, again: bool = False) -> float:
        """Start one part (all its processes) and wait until it is ready; returns when.
        `again`: a restart, whose log goes on after the previous run's lines."""
        env = self.env | {"VIGIL_RULES_CONFIG": str(rules or self.rules)}
        started: list[ManagedProcess] = []
        ready: list[tuple[ManagedProcess, str, str | None]] = []
        if name.endswith("_api"):
            which = name.removesuffix("_api")
            url = str(self.info[name])
            argv = ["api", which, "--port", str(urlsplit(url).port)]
            if which == "command" and self.command_workers > 1:
                argv += ["--workers", str(self.command_workers)]
            started.append(spawn(name, _vigil(*argv), self._log(name), env, append=again))
            ready.append((started[-1], url + API_READY_PATH, None))
        else:
            count = self.workers_processes if name == "workers" else 1
            for k in range(count):
                port = free_port()
                argv = _vigil(name.replace("_", "-"), "--metrics-port", str(port))
                started.append(spawn(name, argv, self._log(f"{name}-{k}"), env, append=again))
                # One process holding partitions is enough: with several, some may get none.
                gauge = None if name == "relay" or k else PARTITIONS_ASSIGNED_GAUGE
                ready.append((started[-1], f"http://{LOOPBACK}:{port}/metrics", gauge))
        self.children.setdefault(name, []).extend(started)
        deadline_s = time.monotonic() + READY_TIMEOUT_S
        for process, url, gauge in ready:
            while not _ready(url, gauge):
                if not process.alive() or time.monotonic() >= deadline_s:
                    alive = process.alive()
                    why = f"not ready in {READY_TIMEOUT_S:.0f} s" if alive else "exited"
                    raise BenchFailed(f"{name} {why}:\n{log_tail(process.log_path)}")
                time.sleep(0.2)
        return time.monotonic()

    def stop(self, name: str) -> None:
        """Stop every process of one part (SIGTERM, then SIGKILL)."""
        for process in self.children.pop(name, []):
            process.stop(CHILD_STOP_TIMEOUT_S)

    def _log(self, name: str) -> Path:
        return self.run_dir / "logs" / f"{name}.log"

    def _stop(self) -> None:
        for name in CHILD_ORDER:
            for process in self.children.get(name, []):
                with contextlib.suppress(Exception):
                    process.stop(CHILD_STOP_TIMEOUT_S)
                if process.alive():
                    self.leftovers.append(f"{name} (pid {process.pid})")
        self.children.clear()
        for name, server in reversed(self.servers):
            with contextlib.suppress(Exception):
                server.stop()
            if server.alive():
                self.leftovers.append(f"{name} (pid {server.pid})")

    def _processes(self) -> list[tuple[str, psutil.Process]]:
        """Every process of ours but PostgreSQL's, with its part's name; uvicorn's workers too."""
        found = []
        parts = [(n, p.pid) for n, ps in self.children.items() for p in ps]
        parts += [(n, s.pid) for n, s in self.servers if n != "postgres"]
        for name, pid in parts:
            with contextlib.suppress(psutil.Error):
                process = psutil.Process(pid)
                found.append((name, process))
                found += [(name, child) for child in process.children(recursive=True)]
        return found

    def _postmaster(self) -> psutil.Process | None:
        if self.postgres is None:
            return None
        with contextlib.suppress(psutil.Error):
            return psutil.Process(self.postgres.pid)
        return None

    def cpu_seconds(self) -> Counter[str]:
        """CPU time so far (user + system) of each part, and of this load generator."""
        parts = self._processes()
        postmaster = self._postmaster()
        if postmaster is not None:
            with contextlib.suppress(psutil.Error):
                parts += [("postgres", p) for p in postmaster.children(recursive=True)]
        parts.append(("bench", psutil.Process()))
        totals: Counter[str] = Counter()
        for role, process in parts:
            with contextlib.suppress(psutil.Error):
                times = process.cpu_times()
                totals[role] += times.user + times.system
        if postmaster is not None:
            with contextlib.suppress(psutil.Error):
                # Its own time and that of the backends it reaped: a pool closed between two
                # snapshots (the baseline's) still counts.
                times = postmaster.cpu_times()
                used = times.user + times.system + times.children_user + times.children_system
                totals["postgres"] += used
        return totals


def _vigil(*args: str) -> tuple[str, ...]:
    return (sys.executable, "-m", "interfaces.cli", *args)


def _ready(url: str, gauge: str | None) -> bool:
    try:
        reply = httpx.get(url, timeout=2.0, trust_env=False)
    except httpx.HTTPError:
        return False
    return reply.status_code == 200 and (gauge is None or gauge_above_zero(reply.text, gauge))


def cpu_percent(before: Counter[str], after: Counter[str], wall_s: float) -> dict[str, float]:
    """Percent of one core per part, busiest first (200 is both cores of a 2-core machine)."""
    used = {role: (after[role] - before[role]) / wall_s * 100 for role in after}
    return {role: round(pct, 1) for role, pct in sorted(used.items(), key=lambda x: -x[1])}


def baseline_database(database_url: str, admin_url: str) -> str:
    """A fresh database beside Vigil's, in the same PostgreSQL, owned by the same role."""
    parts = urlsplit(database_url)
    admin = admin_url
    statement = sql.SQL("CREATE DATABASE {} OWNER {}").format(
        sql.Identifier(BASELINE_DATABASE), sql.Identifier(parts.username or "vigil")
    )
    with psycopg.connect(admin, autocommit=True, connect_timeout=5) as conn:
        conn.execute(statement)
    return urlunsplit(parts._replace(path=f"/{BASELINE_DATABASE}"))
