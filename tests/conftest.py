"""Real servers, started once per test run.

PostgreSQL and Redis are the machine's (127.0.0.1:5432 and :6379 unless
VIGIL_TEST_PG_ADMIN_URL / VIGIL_TEST_REDIS_URL say otherwise). Each run creates
databases of its own, never touches `postgres` itself, and drops them at the end.
Redis keys carry a prefix of this run's own and are deleted at the end.
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import httpx
import psycopg
import pytest
import redis
from hypothesis import HealthCheck, settings
from pydantic import SecretStr

from infrastructure.eventstore.ledger import open_ledger
from infrastructure.settings import Settings, load_settings

ROOT = Path(__file__).resolve().parent.parent

settings.register_profile(
    "ci",
    derandomize=True,
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
    print_blob=True,
)
settings.register_profile("dev", max_examples=100, deadline=None)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci" if os.environ.get("CI") else "dev"))

PG_ADMIN_URL = os.environ.get(
    "VIGIL_TEST_PG_ADMIN_URL", "postgresql://postgres@127.0.0.1:5432/postgres"
)
REDIS_URL = os.environ.get("VIGIL_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
RUN_ID = f"{os.getpid()}_{secrets.token_hex(3)}"
SERVER_START_TIMEOUT_S = 30.0


def database_url(name: str) -> str:
    parts = urlsplit(PG_ADMIN_URL)
    return urlunsplit(parts._replace(path=f"/{name}"))


def _admin_execute(sql: str) -> None:
    with psycopg.connect(PG_ADMIN_URL, autocommit=True, connect_timeout=5) as conn:
        conn.execute(sql)  # type: ignore[arg-type]


class Databases:
    """Creates databases for this run from one migrated template, and drops them all."""

    def __init__(self) -> None:
        self.template = f"vigil_t{RUN_ID}_tpl"
        self.created: list[str] = []
        self._count = 0

    def create_template(self, var_dir: Path) -> None:
        _admin_execute(f'CREATE DATABASE "{self.template}"')
        self.created.append(self.template)
        ledger = open_ledger(self.settings_for(self.template, var_dir))
        ledger.close()

    def fresh(self) -> str:
        self._count += 1
        name = f"vigil_t{RUN_ID}_{self._count}"
        _admin_execute(f'CREATE DATABASE "{name}" TEMPLATE "{self.template}"')
        self.created.append(name)
        return name

    def settings_for(self, name: str, var_dir: Path, **overrides: object) -> Settings:
        values: dict[str, object] = {
            "database_url": database_url(name),
            "redis_url": REDIS_URL,
            "redis_key_prefix": f"vigil-test-{RUN_ID}:",
            "var_dir": var_dir,
            "jwt_secret": "test-secret-" + "x" * 40,
            "jwt_kid": "test",
            "audit_mac_key": "test-mac-key",
            "db_pool_size": 4,
            # Every test calls from 127.0.0.1, many with bad tokens on purpose: the address
            # limit is for test_rate_limits.py to turn on.
            "rate_limit_anonymous_per_s": 0,
        }
        values.update(overrides)
        return load_settings(**values)

    def drop_all(self) -> None:
        for name in reversed(self.created):
            _admin_execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(scope="session")
def databases(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Databases]:
    try:
        _admin_execute("SELECT 1")
    except psycopg.OperationalError as error:
        pytest.fail(f"PostgreSQL is not reachable at {PG_ADMIN_URL}: {error}")
    dbs = Databases()
    dbs.create_template(tmp_path_factory.mktemp("var-template"))
    yield dbs
    dbs.drop_all()


@pytest.fixture(scope="session")
def redis_client() -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(REDIS_URL, socket_timeout=2)
    try:
        client.ping()
    except redis.RedisError as error:
        pytest.fail(f"Redis is not reachable at {REDIS_URL}: {error}")
    yield client
    keys = list(client.scan_iter(match=f"vigil-test-{RUN_ID}:*", count=1000))
    if keys:
        client.delete(*keys)
    client.close()


@pytest.fixture
def settings_factory(databases: Databases, tmp_path: Path, redis_client: redis.Redis):
    """Settings on a fresh, empty, migrated database of its own."""

    def make(**overrides: object) -> Settings:
        return databases.settings_for(databases.fresh(), tmp_path / "var", **overrides)

    return make


def stop_gracefully(process: subprocess.Popen[bytes], timeout_s: float) -> None:
    """SIGTERM, as Ctrl-C's sibling would, then SIGKILL if it is still there after the bound."""
    if process.poll() is not None:
        return
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout_s)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(10)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class ApiServer:
    """A real `vigil api command` process, serving real HTTP on a free port."""

    settings: Settings
    port: int
    process: subprocess.Popen[bytes]
    log_path: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)

    def kill(self) -> None:
        self.process.kill()
        self.process.wait(5)


def settings_env(settings: Settings) -> dict[str, str]:
    """The environment that makes a child process load exactly these settings."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("VIGIL_")}
    for name in settings.model_fields_set:
        value = getattr(settings, name)
        if value is None:
            continue
        if isinstance(value, SecretStr):
            value = value.get_secret_value()
        elif isinstance(value, dict):
            value = json.dumps(
                {
                    k: v.get_secret_value() if isinstance(v, SecretStr) else v
                    for k, v in value.items()
                }
            )
        elif isinstance(value, list):
            value = json.dumps(value)
        env[f"VIGIL_{name.upper()}"] = str(value)
    env.setdefault("VIGIL_LOG_LEVEL", "WARNING")
    return env


def start_api(
    which: str, settings: Settings, log_dir: Path, port: int | None = None, workers: int = 1
) -> ApiServer:
    """`vigil api command|query` as a real process (with `workers` processes serving it);
    returns once /health/ready is 200."""
    port = port or free_port()
    log_dir.mkdir(parents=True, exist_ok=True)
    log_path = log_dir / f"{which}-api-{port}.log"
    with log_path.open("ab") as log_file:
        process = subprocess.Popen(
            [
                *(sys.executable, "-m", "interfaces.cli", "api", which),
                *("--port", str(port), "--workers", str(workers)),
            ],
            cwd=ROOT,
            env=settings_env(settings),
            stdout=log_file,
            stderr=subprocess.STDOUT,
        )
    server = ApiServer(settings, port, process, log_path)
    deadline = time.monotonic() + SERVER_START_TIMEOUT_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"{which} API exited early:\n{log_path.read_text()[-3000:]}")
        try:
            # 200 is ready or degraded (Redis down): both serve requests.
            if httpx.get(f"{server.url}/health/ready", timeout=1).status_code == 200:
                return server
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    server.stop()
    pytest.fail(
        f"{which} API not ready in {SERVER_START_TIMEOUT_S}s:\n{log_path.read_text()[-3000:]}"
    )


def start_command_api(settings: Settings, log_dir: Path, port: int | None = None) -> ApiServer:
    return start_api("command", settings, log_dir, port)


def start_query_api(settings: Settings, log_dir: Path, port: int | None = None) -> ApiServer:
    return start_api("query", settings, log_dir, port)


@pytest.fixture(scope="session")
def command_api(
    databases: Databases, tmp_path_factory: pytest.TempPathFactory, redis_client: redis.Redis
) -> Iterator[ApiServer]:
    """One command API for the HTTP tests of this run, on a database of its own."""
    var_dir = tmp_path_factory.mktemp("var-api")
    settings = databases.settings_for(databases.fresh(), var_dir)
    server = start_command_api(settings, var_dir / "logs")
    yield server
    server.stop()


def signing_key_file(directory: Path) -> Path:
    """A fresh Ed25519 signing key (PEM, PKCS#8, mode 0600), as production settings need."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    path = directory / "signing-key.pem"
    pem = Ed25519PrivateKey.generate().private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    path.write_bytes(pem)
    path.chmod(0o600)
    return path
