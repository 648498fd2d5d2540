"""The system `make bench` measures, and how it talks to it: a `vigil up` of its own, started,
stopped and sampled for CPU time (`System`), and a minimal asyncio HTTP/1.1 client for its
loopback APIs (`Http`). Used by bench.py, which imports it as a sibling module.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import sys
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import orjson
import psutil
import psycopg
from psycopg import sql

sys.path.insert(0, str(Path(__file__).resolve().parent))
from target import require_loopback

from infrastructure.ops.embedded import POSTGRES_SUPERUSER, ManagedProcess, log_tail, spawn

START_TIMEOUT_S = 180.0  # initdb, then `vigil up` waits for each of its five processes
STOP_TIMEOUT_S = 90.0  # `vigil up` gives each child 10 s, then stops the servers
LEFTOVER_STOP_TIMEOUT_S = 15.0
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
TRANSPORT_ERRORS = (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, TimeoutError)


class BenchFailed(RuntimeError):
    """The run cannot give honest figures (the system did not start, setup failed)."""


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


@dataclass
class System:
    """A `vigil up` of our own, in a directory of its own; every process of it is found by
    the VIGIL_VAR_DIR it inherited (PostgreSQL by its postmaster.pid), and stopped."""

    run_dir: Path
    up: ManagedProcess | None = None
    info: dict[str, Any] = field(default_factory=dict)
    leftovers: list[str] = field(default_factory=list)

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
        env = {k: v for k, v in os.environ.items() if k not in OWN_VARIABLES}
        env.update({k: "0" for k in OWN_VARIABLES if k.endswith("_PORT")})  # any free port
        env.update(VIGIL_VAR_DIR=str(self.run_dir), VIGIL_ENV="development")
        argv = (sys.executable, "-m", "interfaces.cli", "up")
        self.up = spawn("vigil up", argv, self.run_dir / "vigil-up.log", env)
        up_file = self.run_dir / "up.json"
        deadline_s = time.monotonic() + START_TIMEOUT_S
        while not up_file.exists():
            if not self.up.alive() or time.monotonic() >= deadline_s:
                why = "exited" if not self.up.alive() else f"not up in {START_TIMEOUT_S:.0f} s"
                raise BenchFailed(f"vigil up {why}:\n{log_tail(self.up.log_path)}")
            time.sleep(0.2)
        self.info = json.loads(up_file.read_text())

    def _stop(self) -> None:
        if self.up is not None:
            self.up.stop(STOP_TIMEOUT_S)  # SIGTERM: it stops its children, then the servers
        left = self._processes()
        self.leftovers = [f"{_role(p)} (pid {p.pid})" for p in left]
        postmaster = self._postmaster()
        if postmaster is not None and postmaster.is_running():
            self.leftovers.append(f"postgres (pid {postmaster.pid})")
            postmaster.send_signal(signal.SIGINT)  # fast shutdown
            left.append(postmaster)
        for process in left:
            with contextlib.suppress(psutil.Error):
                if process is not postmaster:
                    process.terminate()
        _, alive = psutil.wait_procs(left, timeout=LEFTOVER_STOP_TIMEOUT_S)
        for process in alive:
            with contextlib.suppress(psutil.Error):
                process.kill()

    def _processes(self) -> list[psutil.Process]:
        """Our processes but PostgreSQL's (which rewrites its environment for `ps`)."""
        found = []
        for process in psutil.process_iter():
            with contextlib.suppress(psutil.Error):
                mine = process.environ().get("VIGIL_VAR_DIR") == str(self.run_dir)
                if mine and process.pid != os.getpid() and not _is_postgres(process):
                    found.append(process)
        return found

    def _postmaster(self) -> psutil.Process | None:
        pgdata = self.run_dir / "pgdata"
        with contextlib.suppress(OSError, ValueError, psutil.Error):
            pid = int((pgdata / "postmaster.pid").read_text().split("\n", 1)[0])
            process = psutil.Process(pid)
            if Path(process.cwd()) == pgdata:
                return process
        return None

    def cpu_seconds(self) -> Counter[str]:
        """CPU time so far (user + system) of each part, and of this load generator."""
        parts = [(_role(p), p) for p in self._processes()]
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


def _is_postgres(process: psutil.Process) -> bool:
    return str(process.name()).startswith("postgres")


def _role(process: psutil.Process) -> str:
    with contextlib.suppress(psutil.Error):
        argv = process.cmdline()
        if "interfaces.cli" in argv:
            args = argv[argv.index("interfaces.cli") + 1 :]
            if args[:1] == ["api"] and len(args) > 1:
                return f"{args[1]}_api"
            return "vigil_up" if args[:1] == ["up"] else (args or ["vigil"])[0].replace("-", "_")
        name = process.name()
        return "redis" if "redis" in name else "broker" if "tansu" in name else name
    return "gone"


def cpu_percent(before: Counter[str], after: Counter[str], wall_s: float) -> dict[str, float]:
    """Percent of one core per part, busiest first (200 is both cores of a 2-core machine)."""
    used = {role: (after[role] - before[role]) / wall_s * 100 for role in after}
    return {role: round(pct, 1) for role, pct in sorted(used.items(), key=lambda x: -x[1])}


def baseline_database(database_url: str) -> str:
    """A fresh database beside Vigil's, in the same PostgreSQL, owned by the same role."""
    parts = urlsplit(database_url)
    host = f"{parts.hostname}:{parts.port}"
    admin = urlunsplit(parts._replace(netloc=f"{POSTGRES_SUPERUSER}@{host}", path="/postgres"))
    statement = sql.SQL("CREATE DATABASE {} OWNER {}").format(
        sql.Identifier(BASELINE_DATABASE), sql.Identifier(parts.username or "vigil")
    )
    with psycopg.connect(admin, autocommit=True, connect_timeout=5) as conn:
        conn.execute(statement)
    return urlunsplit(parts._replace(path=f"/{BASELINE_DATABASE}"))
