"""`vigil up`: the whole system on one machine, until Ctrl-C.

Starts PostgreSQL, Redis and the broker (embedded, unless `VIGIL_*` URLs name servers to use),
then the Vigil processes in the order of `child_specs`, each waited for until ready. When all
are ready it writes `var/up.json` (CONTRACT.md), so other `vigil` commands here find the
servers, and prints URLs, development tokens and a first request to try. Ctrl-C or SIGTERM
stops everything (Vigil processes first, then the servers) and removes `var/up.json`; a part
that dies on its own stops everything with exit code 1.
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import json
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import httpx
import psutil

from infrastructure.consumer import PARTITIONS_ASSIGNED_GAUGE
from infrastructure.embedded import (
    EmbeddedBroker,
    EmbeddedPostgres,
    EmbeddedRedis,
    EmbeddedServerError,
    ManagedProcess,
    Server,
    free_port,
    log_tail,
    port_is_free,
    spawn,
    start_broker,
    start_postgres,
    start_redis,
)
from infrastructure.settings import Settings

READY_TIMEOUT_S = 60.0
READY_POLL_S = 0.2
READY_PROBE_TIMEOUT_S = 1.0
WATCH_INTERVAL_S = 0.5
CHILD_STOP_TIMEOUT_S = 10.0  # the APIs drain requests for up to 10 s (serve.py)
TOKEN_TTL_S = 12 * 3600
DEV_TOKENS = (
    ("teller", "001"),
    ("admin", None),
    ("auditor", None),
    ("compliance", None),
    ("viewer", None),
)
LOCK_FILE = "up.lock"

EmbeddedServer = EmbeddedPostgres | EmbeddedRedis | EmbeddedBroker


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


def _vigil(*args: str) -> tuple[str, ...]:
    return (sys.executable, "-m", "interfaces.cli", *args)


def child_specs(settings: Settings) -> list[ChildSpec]:
    """The Vigil processes, in start order; they are stopped in the same order (APIs first)."""
    host = _client_host(settings.host)

    def api(name: str, which: str, port_setting: int, variable: str) -> ChildSpec:
        port = port_setting or free_port(host)
        url = f"http://{host}:{port}"
        return ChildSpec(
            name=name,
            argv=_vigil("api", which, "--port", str(port)),
            url=url,
            ready_url=f"{url}/health/ready",
            port=port,
            port_variable=variable,
        )

    def worker(
        name: str,
        argv: tuple[str, ...],
        port_setting: int,
        variable: str,
        ready_gauge: str | None = None,
    ) -> ChildSpec:
        # Ready once its /metrics answers: it has started and its settings loaded.
        port = port_setting or free_port(host)
        return ChildSpec(
            name=name,
            argv=_vigil(*argv, "--metrics-port", str(port)),
            ready_url=f"http://{host}:{port}/metrics",
            ready_gauge=ready_gauge,
            port=port,
            port_variable=variable,
        )

    return [
        api("command_api", "command", settings.command_port, "VIGIL_COMMAND_PORT"),
        api("query_api", "query", settings.query_port, "VIGIL_QUERY_PORT"),
        worker("relay", ("relay",), settings.relay_metrics_port, "VIGIL_RELAY_METRICS_PORT"),
        # The consumers are ready once they hold partitions (joining a group takes a few
        # seconds): a read right after "up" then sees its own writes, and alerts open cases.
        worker(
            "workers",
            ("workers",),
            settings.workers_metrics_port,
            "VIGIL_WORKERS_METRICS_PORT",
            ready_gauge=PARTITIONS_ASSIGNED_GAUGE,
        ),
        worker(
            "case_opener",
            ("case-opener",),
            settings.case_opener_metrics_port,
            "VIGIL_CASE_OPENER_METRICS_PORT",
            ready_gauge=PARTITIONS_ASSIGNED_GAUGE,
        ),
    ]


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


def _client_host(host: str) -> str:
    # A server bound to every interface is reached, from here, on loopback.
    return "127.0.0.1" if host in ("", "0.0.0.0", "::") else host


class StartupFailed(RuntimeError):
    """A part of the system could not start; the message says which and why."""


def run_up(settings: Settings) -> int:
    var_dir = settings.var_dir.resolve()
    var_dir.mkdir(parents=True, exist_ok=True)
    with _exclusive_lock(var_dir / LOCK_FILE) as locked:
        if not locked:
            _complain(f"another `vigil up` is running with {var_dir}; stop it first.")
            return 1
        _clear_previous_up_file(settings)
        if settings.env == "development":
            settings.dev_keys()  # made now, so the APIs and the printed tokens share them
        return _Supervisor(settings, var_dir).run()


@contextlib.contextmanager
def _exclusive_lock(path: Path) -> Iterator[bool]:
    # Held for the whole run, so two `vigil up` in one directory cannot race each other.
    with path.open("a") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            yield False
            return
        yield True


def _clear_previous_up_file(settings: Settings) -> None:
    """With the lock held, an up.json is from a `vigil up` that ended abruptly: remove it.

    Its PostgreSQL outlives it by design (start_postgres stops it); its other children get
    SIGTERM from the kernel on Linux, so anything else still alive is worth a warning.
    """
    path = settings.up_file()
    if not path.exists():
        return
    written_at_s = path.stat().st_mtime
    pids = (settings.read_up_file() or {}).get("pids", {})
    survivors = [
        f"{name} (pid {pid})"
        for name, pid in pids.items()
        if name != "postgres" and _started_by(pid, written_at_s)
    ]
    path.unlink(missing_ok=True)
    _say(f"removed {path.resolve()}, left by a `vigil up` that did not stop cleanly")
    if survivors:
        _say(f"  still running from it: {', '.join(survivors)}; stop them if they are in the way")


def _started_by(pid: object, time_s: float) -> bool:
    # A process created after up.json was written holds a recycled pid, not one of ours.
    if not isinstance(pid, int):
        return False
    try:
        process = psutil.Process(pid)
        created_s = float(process.create_time())
        return bool(process.status() != psutil.STATUS_ZOMBIE and created_s <= time_s + 1)
    except psutil.Error:
        return False


def _say(line: str = "") -> None:
    print(line, flush=True)


def _complain(line: str) -> None:
    print(f"vigil up: {line}", file=sys.stderr, flush=True)


@dataclass
class _Supervisor:
    settings: Settings
    var_dir: Path
    stop_requested: threading.Event = field(default_factory=threading.Event)
    signal_name: str = ""
    servers: list[tuple[str, Server]] = field(default_factory=list)  # in start order
    children: list[tuple[ChildSpec, ManagedProcess]] = field(default_factory=list)
    urls: dict[str, str] = field(default_factory=dict)

    def run(self) -> int:
        previous = {
            signum: signal.signal(signum, self._on_signal)
            for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
        }
        try:
            return self._start_and_watch()
        except (StartupFailed, EmbeddedServerError) as error:
            _complain(str(error))
            return 1
        finally:
            self._stop_all()
            self.settings.up_file().unlink(missing_ok=True)
            for signum, handler in previous.items():
                signal.signal(signum, handler)

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        # Only note it: printing here could collide with a print in progress.
        if not self.stop_requested.is_set():
            self.signal_name = signal.Signals(signum).name
        self.stop_requested.set()

    def _start_and_watch(self) -> int:
        specs = child_specs(self.settings)
        self._check_ports(specs)
        self._start_servers()
        if self.stop_requested.is_set():
            return self._stopping()
        env = self._child_env()
        for spec in specs:
            if self.stop_requested.is_set():
                return self._stopping()
            self._start_child(spec, env)
        if self.stop_requested.is_set():
            return self._stopping()
        self._write_up_file(specs)
        _print_summary(self.settings, specs, self.urls, self.var_dir)
        return self._watch()

    def _check_ports(self, specs: list[ChildSpec]) -> None:
        host = self.settings.host
        for spec in specs:
            if spec.port is not None and not port_is_free(host, spec.port):
                raise StartupFailed(
                    f"port {spec.port} on {host} ({spec.name}) is already in use: stop what"
                    f" listens there, or choose another port with {spec.port_variable}=..."
                )

    def _start_servers(self) -> None:
        given = self.settings
        starters: list[tuple[str, str, str | None, Callable[[Path], EmbeddedServer], str]] = [
            ("database_url", "postgres", given.database_url, start_postgres, "PostgreSQL"),
            ("redis_url", "redis", given.redis_url, start_redis, "Redis"),
            ("kafka_bootstrap", "broker", given.kafka_bootstrap, start_broker, "broker"),
        ]
        for key, name, configured, start, label in starters:
            if self.stop_requested.is_set():
                return
            if configured:
                self.urls[key] = configured
                _say(f"using {label} at {_redacted(configured)} (from VIGIL_{key.upper()})")
                continue
            _say(f"starting {label}…")
            started_at_s = time.monotonic()
            server = start(self.var_dir)
            self.servers.append((name, server))
            self.urls[key] = _address(server)
            elapsed_s = time.monotonic() - started_at_s
            _say(f"  {label} ready on {self.urls[key]} (pid {server.pid}, {elapsed_s:.1f} s)")

    def _child_env(self) -> dict[str, str]:
        env = dict(os.environ)
        env.update(
            VIGIL_DATABASE_URL=self.urls["database_url"],
            VIGIL_REDIS_URL=self.urls["redis_url"],
            VIGIL_KAFKA_BOOTSTRAP=self.urls["kafka_bootstrap"],
            VIGIL_VAR_DIR=str(self.var_dir),  # the dev keys, whatever the child's cwd
            PYTHONUNBUFFERED="1",  # their logs reach var/*.log as they happen
        )
        return env

    def _start_child(self, spec: ChildSpec, env: dict[str, str]) -> None:
        _say(f"starting {spec.name}…")
        started_at_s = time.monotonic()
        child = spawn(spec.name, spec.argv, self.var_dir / f"{spec.name}.log", env)
        self.children.append((spec, child))
        if spec.ready_url is not None:
            self._wait_ready(spec.ready_url, child, spec.ready_gauge)
        where = f"on {spec.url} " if spec.url else ""
        elapsed_s = time.monotonic() - started_at_s
        _say(f"  {spec.name} ready {where}(pid {child.pid}, {elapsed_s:.1f} s)")

    def _wait_ready(self, url: str, child: ManagedProcess, gauge: str | None) -> None:
        deadline_s = time.monotonic() + READY_TIMEOUT_S
        with httpx.Client(trust_env=False, timeout=READY_PROBE_TIMEOUT_S) as http:
            while not self.stop_requested.is_set():
                code = child.process.poll()
                if code is not None:
                    raise StartupFailed(
                        f"{child.name} exited with code {code} while starting; last lines of"
                        f" {child.log_path}:\n{log_tail(child.log_path)}"
                    )
                with contextlib.suppress(httpx.HTTPError):
                    reply = http.get(url)
                    if reply.status_code == 200 and (
                        gauge is None or gauge_above_zero(reply.text, gauge)
                    ):
                        return
                if time.monotonic() >= deadline_s:
                    raise StartupFailed(
                        f"{child.name} was not ready within {READY_TIMEOUT_S:.0f} s ({url});"
                        f" last lines of {child.log_path}:\n{log_tail(child.log_path)}"
                    )
                self.stop_requested.wait(READY_POLL_S)

    def _write_up_file(self, specs: list[ChildSpec]) -> None:
        data: dict[str, Any] = {spec.name: spec.url for spec in specs if spec.url}
        data.update(self.urls)
        pids = {name: server.pid for name, server in self.servers}
        pids.update({spec.name: child.pid for spec, child in self.children})
        data["pids"] = pids
        path = self.settings.up_file()
        temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        # 0600: a URL from VIGIL_DATABASE_URL may carry a password.
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as out:
            json.dump(data, out, indent=2)
            out.write("\n")
        os.replace(temporary, path)  # readers never see half a file

    def _watch(self) -> int:
        parts = [(name, server) for name, server in self.servers]
        parts += [(spec.name, child) for spec, child in self.children]
        while not self.stop_requested.wait(WATCH_INTERVAL_S):
            for name, part in parts:
                if not part.alive():
                    _complain(
                        f"{name} (pid {part.pid}) stopped unexpectedly; last lines of"
                        f" {part.log_path}:\n{log_tail(part.log_path)}\nstopping everything."
                    )
                    return 1
        return self._stopping()

    def _stopping(self) -> int:
        _say(f"\n{self.signal_name or 'stop'} received: stopping…")
        return 0

    def _stop_all(self) -> None:
        # A further Ctrl-C only sets the event again: every stop below is bounded.
        if not self.children and not self.servers:
            return
        for spec, child in self.children:
            self._stop_one(spec.name, functools.partial(child.stop, CHILD_STOP_TIMEOUT_S))
        for name, server in reversed(self.servers):
            self._stop_one(name, server.stop)
        self.children.clear()
        self.servers.clear()
        _say("stopped.")

    def _stop_one(self, name: str, stop: Callable[[], None]) -> None:
        try:
            stop()
        except (EmbeddedServerError, OSError) as error:
            _complain(f"could not stop {name}: {error}")
        else:
            _say(f"  stopped {name}")


def _address(server: EmbeddedServer) -> str:
    return server.bootstrap if isinstance(server, EmbeddedBroker) else server.url


def _redacted(url: str) -> str:
    parts = urlsplit(url)
    if not parts.password:
        return url
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@", 1)
    return urlunsplit(parts._replace(netloc=netloc))


def _print_summary(
    settings: Settings, specs: list[ChildSpec], urls: dict[str, str], var_dir: Path
) -> None:
    from interfaces.tokens import issue_token

    lines = ["", "Vigil is up."]
    lines += [f"  {spec.name:<16}{spec.url}" for spec in specs if spec.url]
    lines += [f"  {'PostgreSQL':<16}{_redacted(urls['database_url'])}"]
    lines += [f"  {'Redis':<16}{_redacted(urls['redis_url'])}"]
    lines += [f"  {'Kafka':<16}{urls['kafka_bootstrap']}"]
    lines += [f"  {'logs':<16}{var_dir}/*.log", f"  {'state':<16}{settings.up_file().resolve()}"]
    hours = TOKEN_TTL_S // 3600
    lines += ["", f"Development tokens ({hours} h; more with `vigil token issue --role ROLE`):"]
    for role, branch in DEV_TOKENS:
        token = issue_token(
            settings, role=role, subject=f"{role}-dev", branch=branch, ttl_s=TOKEN_TTL_S
        )
        note = f"  # branch {branch}" if branch else ""
        lines.append(f"  export {role.upper()}_TOKEN={token}{note}")
    command_url = next(spec.url for spec in specs if spec.name == "command_api")
    query_url = next(spec.url for spec in specs if spec.name == "query_api")
    lines += ["", "Try it (after the exports above):", *_curl_example(command_url, query_url)]
    lines += ["", "Press Ctrl-C to stop."]
    _say("\n".join(lines))


def _curl_example(command_url: str | None, query_url: str | None) -> list[str]:
    auth = '-H "Authorization: Bearer $TELLER_TOKEN" -H "Content-Type: application/json"'
    account = '{"owner":"Ada Lovelace","branch":"001","currency":"GBP"}'
    deposit = '{"amount":"100.00","currency":"GBP"}'
    read_id = "python3 -c 'import json,sys; print(json.load(sys.stdin)[\"account_id\"])'"
    return [
        f"  ACCOUNT_ID=$(curl -s -X POST {command_url}/v1/accounts {auth} \\",
        f"      -d '{account}' | {read_id})",
        f"  curl -s -X POST {command_url}/v1/accounts/$ACCOUNT_ID/deposits {auth} \\",
        f"      -d '{deposit}'",
        f'  curl -s {query_url}/v1/accounts/$ACCOUNT_ID -H "Authorization: Bearer $VIEWER_TOKEN"',
    ]
