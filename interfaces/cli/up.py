"""`vigil up`: the whole system on one machine, until Ctrl-C.

Starts PostgreSQL, Redis and the broker (embedded, unless `VIGIL_*` URLs name servers to use),
then the Vigil processes in the order of `child_specs`, each waited for until ready (a failure
there stops everything: at start it is nearly always a setting or a port). When all are ready
it writes `var/up.json` (fields in the README), so other `vigil` commands here find the servers, and
prints URLs, development tokens and a first request to try.

While it runs, a Vigil process that exits is restarted after a backoff and waited for until
ready again, and `var/up.json` is rewritten with its new pid (supervise.py); `vigil up` gives
up, stopping everything with exit code 1, only on a process that keeps failing at start. An
embedded server (PostgreSQL, Redis, the broker) that dies stops everything with exit code 1:
restarting one under running clients is not safe in general (the broker comes back with its
topics empty, PostgreSQL is a daemon we did not fork). Ctrl-C or SIGTERM stops everything
(Vigil processes first, then the servers) and removes `var/up.json`. Its own events
(`process_exited`, `process_restarted`, `process_ready`) are JSON lines in `var/up.log`.
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import json
import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any, TextIO
from urllib.parse import urlsplit, urlunsplit

import httpx

from infrastructure.kafka.consumer import PARTITIONS_ASSIGNED_GAUGE
from infrastructure.limits import CHILD_STOP_TIMEOUT_S
from infrastructure.logging import configure_logging
from infrastructure.ops.embedded import (
    EmbeddedBroker,
    EmbeddedRedis,
    EmbeddedServerError,
    Server,
    free_port,
    log_tail,
    port_is_free,
    start_broker,
    start_redis,
)
from infrastructure.ops.postgres_server import EmbeddedPostgres, start_postgres
from infrastructure.settings import Settings
from interfaces.cli.clean import alive_since
from interfaces.cli.supervise import (
    READY_PROBE_TIMEOUT_S,
    Children,
    ChildSpec,
    StartupFailed,
    complain,
    say,
)

WATCH_INTERVAL_S = 0.5
TOKEN_TTL_S = 12 * 3600
DEV_TOKENS = (
    ("teller", "001"),
    ("admin", None),
    ("auditor", None),
    ("compliance", None),
    ("viewer", None),
)
LOCK_FILE = "up.lock"
LOG_FILE = "up.log"

EmbeddedServer = EmbeddedPostgres | EmbeddedRedis | EmbeddedBroker


def _vigil(*args: str) -> tuple[str, ...]:
    return (sys.executable, "-m", "interfaces.cli", *args)


def child_specs(settings: Settings) -> list[ChildSpec]:
    """The Vigil processes, in start order; they are stopped in the same order (APIs first)."""
    host = _client_host(settings.host)
    # A port picked for one child must be neither one set for another (free now, before
    # that child binds it) nor one picked before.
    taken = {
        settings.command_port,
        settings.query_port,
        settings.relay_metrics_port,
        settings.workers_metrics_port,
        settings.case_opener_metrics_port,
    } - {0}

    def pick(port_setting: int) -> int:
        if port_setting:
            return port_setting
        port = free_port(host)
        while port in taken:
            port = free_port(host)
        taken.add(port)
        return port

    def api(name: str, which: str, port_setting: int, variable: str) -> ChildSpec:
        port = pick(port_setting)
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
        port = pick(port_setting)
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


def _client_host(host: str) -> str:
    # A server bound to every interface is reached, from here, on loopback.
    return "127.0.0.1" if host in ("", "0.0.0.0", "::") else host


def run_up(settings: Settings) -> int:
    var_dir = settings.var_dir.resolve()
    var_dir.mkdir(parents=True, exist_ok=True)
    with _exclusive_lock(var_dir / LOCK_FILE) as locked:
        if not locked:
            complain(f"another `vigil up` is running with {var_dir}; stop it first.")
            return 1
        _clear_previous_up_file(settings)
        if settings.env == "development":
            settings.dev_keys()  # made now, so the APIs and the printed tokens share them
        with (var_dir / LOG_FILE).open("w", buffering=1) as log_stream:  # as children's logs
            _log_to(settings, log_stream)
            return _Supervisor(settings, var_dir).run()


def _log_to(settings: Settings, stream: TextIO) -> None:
    # The terminal is for people; the structured lines go to var/up.log, beside the
    # children's logs. httpx logs each request at INFO: every readiness probe, not wanted.
    configure_logging(settings.log_level, service="up", stream=stream)
    logging.getLogger("httpx").setLevel(logging.WARNING)


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
        if name != "postgres" and alive_since(pid, written_at_s)
    ]
    path.unlink(missing_ok=True)
    say(f"removed {path.resolve()}, left by a `vigil up` that did not stop cleanly")
    if survivors:
        say(f"  still running from it: {', '.join(survivors)}; stop them if they are in the way")


@dataclass
class _Supervisor:
    settings: Settings
    var_dir: Path
    stop_requested: threading.Event = field(default_factory=threading.Event)
    signal_name: str = ""
    servers: list[tuple[str, Server]] = field(default_factory=list)  # in start order
    children: Children | None = None  # once the servers are up
    urls: dict[str, str] = field(default_factory=dict)

    def run(self) -> int:
        previous = {
            signum: signal.signal(signum, self._on_signal)
            for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
        }
        try:
            return self._start_and_watch()
        except (StartupFailed, EmbeddedServerError) as error:
            complain(str(error))
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
        # The console (in the query API) sends its forms' commands to the command API.
        env["VIGIL_COMMAND_API_URL"] = next(s.url for s in specs if s.name == "command_api") or ""
        children = Children(
            self.var_dir,
            env,
            self.stop_requested,
            on_pids_changed=lambda: self._write_up_file(specs),
        )
        self.children = children
        for spec in specs:
            if self.stop_requested.is_set():
                return self._stopping()
            children.start(spec)
        if self.stop_requested.is_set():
            return self._stopping()
        self._write_up_file(specs)
        _print_summary(self.settings, specs, self.urls, self.var_dir)
        return self._watch(children)

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
                say(f"using {label} at {_redacted(configured)} (from VIGIL_{key.upper()})")
                continue
            say(f"starting {label}…")
            started_at_s = time.monotonic()
            server = start(self.var_dir)
            self.servers.append((name, server))
            self.urls[key] = _address(server)
            elapsed_s = time.monotonic() - started_at_s
            shown = _redacted(self.urls[key])
            say(f"  {label} ready on {shown} (pid {server.pid}, {elapsed_s:.1f} s)")

    def _child_env(self) -> dict[str, str]:
        env = dict(os.environ)
        env.update(
            VIGIL_DATABASE_URL=self.urls["database_url"],
            VIGIL_REDIS_URL=self.urls["redis_url"],
            VIGIL_KAFKA_BOOTSTRAP=self.urls["kafka_bootstrap"],
            VIGIL_VAR_DIR=str(self.var_dir),  # the dev keys, whatever the child's cwd
        )
        # Output stays buffered (no PYTHONUNBUFFERED): the logging setup flushes the log
        # within 0.2 s and a warning at once; unbuffered, every line would be a system call.
        return env

    def _write_up_file(self, specs: list[ChildSpec]) -> None:
        data: dict[str, Any] = {spec.name: spec.url for spec in specs if spec.url}
        data.update(self.urls)
        pids = {name: server.pid for name, server in self.servers}
        if self.children is not None:
            pids.update(self.children.pids())
        data["pids"] = pids
        path = self.settings.up_file()
        temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        # 0600: a URL from VIGIL_DATABASE_URL may carry a password.
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as out:
            json.dump(data, out, indent=2)
            out.write("\n")
        os.replace(temporary, path)  # readers never see half a file

    def _watch(self, children: Children) -> int:
        with httpx.Client(trust_env=False, timeout=READY_PROBE_TIMEOUT_S) as http:
            while not self.stop_requested.wait(WATCH_INTERVAL_S):
                for name, server in self.servers:
                    if not server.alive():
                        complain(
                            f"{name} (pid {server.pid}) stopped unexpectedly; last lines of"
                            f" {server.log_path}:\n{log_tail(server.log_path)}\n"
                            "stopping everything."
                        )
                        return 1
                children.check(http)  # StartupFailed: one keeps failing at start
        return self._stopping()

    def _stopping(self) -> int:
        say(f"\n{self.signal_name or 'stop'} received: stopping…")
        return 0

    def _stop_all(self) -> None:
        # A further Ctrl-C only sets the event again: every stop below is bounded.
        running = [] if self.children is None else self.children.children
        if not running and not self.servers:
            return
        for child in running:
            if child.process is not None:  # None: it was waiting to be restarted
                stop = functools.partial(child.process.stop, CHILD_STOP_TIMEOUT_S)
                self._stop_one(child.spec.name, stop)
        for name, server in reversed(self.servers):
            self._stop_one(name, server.stop)
        running.clear()
        self.servers.clear()
        say("stopped.")

    def _stop_one(self, name: str, stop: Callable[[], None]) -> None:
        try:
            stop()
        except (EmbeddedServerError, OSError) as error:
            complain(f"could not stop {name}: {error}")
        else:
            say(f"  stopped {name}")


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
    from interfaces.api.http.tokens import issue_token

    lines = ["", "Vigil is up."]
    lines += [f"  {spec.name:<16}{spec.url}" for spec in specs if spec.url]
    query_url = next(spec.url for spec in specs if spec.name == "query_api")
    lines += [f"  {'console':<16}{query_url}/console"]
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
    lines += ["", "Try it (after the exports above):", *_curl_example(command_url, query_url)]
    lines += [
        "",
        f"The console: {query_url}/console (sign in with one of the tokens above).",
    ]
    lines += ["", "Press Ctrl-C to stop."]
    say("\n".join(lines))


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
