"""The embedded servers of `vigil up`: each starts, answers, and stops without leaving a process."""

from __future__ import annotations

import asyncio
import shutil
import socket
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import psutil
import psycopg
import pytest
import redis
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from infrastructure.ops.embedded import (
    EmbeddedServerError,
    start_broker,
    start_redis,
)
from infrastructure.ops.postgres_server import start_postgres

pytestmark = pytest.mark.integration

CONSUME_TIMEOUT_S = 10.0


@pytest.fixture
def var_dir() -> Iterator[Path]:
    # Not tmp_path: the unprivileged postgres user must traverse every parent directory, and
    # postgres's unix socket path must stay short.
    root = Path(tempfile.mkdtemp(prefix="vigil-embedded-"))
    yield root / "var"
    shutil.rmtree(root, ignore_errors=True)


def _gone(pid: int) -> bool:
    # Postgres is not our child: once it exits, it may linger as a zombie until init reaps it.
    try:
        return bool(psutil.Process(pid).status() == psutil.STATUS_ZOMBIE)
    except psutil.NoSuchProcess:
        return True


async def _produce_and_consume(bootstrap: str, topic: str) -> bytes:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=5000)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(topic, num_partitions=1, replication_factor=1)])
    finally:
        await admin.close()
    # The broker rejects idempotent producers (a known limit of tansu): a plain acks=all one.
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", enable_idempotence=False)
    await producer.start()
    try:
        await producer.send_and_wait(topic, b"deposited", key=b"account-1")
    finally:
        await producer.stop()
    consumer = AIOKafkaConsumer(
        topic,
        bootstrap_servers=bootstrap,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        group_id=None,
    )
    await consumer.start()
    try:
        message = await asyncio.wait_for(consumer.getone(), CONSUME_TIMEOUT_S)
    finally:
        await consumer.stop()
    assert message.value is not None
    return message.value


def test_embedded_servers_answer_and_leave_no_process_behind(var_dir: Path) -> None:
    postgres = start_postgres(var_dir)
    cache = start_redis(var_dir)
    broker = start_broker(var_dir)
    try:
        assert postgres.port != 5432
        assert postgres.url.startswith("postgresql://vigil:")
        assert postgres.url.endswith(f"@127.0.0.1:{postgres.port}/vigil")
        with psycopg.connect(postgres.url, connect_timeout=5) as conn:
            assert conn.execute("SELECT 1, current_user").fetchone() == (1, "vigil")
        client = redis.Redis.from_url(cache.url, socket_timeout=2)
        assert client.ping()
        assert not cache.url.endswith(":6379/0")
        client.close()
        topic = f"embedded-test-{uuid.uuid4().hex}"
        assert asyncio.run(_produce_and_consume(broker.bootstrap, topic)) == b"deposited"
    finally:
        broker.stop()
        cache.stop()
        postgres.stop()
    for server in (broker, cache, postgres):
        assert not server.alive()
        assert _gone(server.pid), f"{server.name} (pid {server.pid}) is still running"
    assert not (var_dir / "pgdata" / "postmaster.pid").exists()


def test_postgres_keeps_its_data_and_stops_a_server_a_crashed_run_left_behind(
    var_dir: Path,
) -> None:
    first = start_postgres(var_dir)
    with psycopg.connect(first.url, autocommit=True) as conn:
        conn.execute("CREATE TABLE kept (id int)")
        conn.execute("INSERT INTO kept VALUES (7)")
    # No stop(): as if `vigil up` had been killed outright, leaving postgres running.
    second = start_postgres(var_dir)
    try:
        assert _gone(first.pid)
        assert second.pid != first.pid
        with psycopg.connect(second.url) as conn:
            assert conn.execute("SELECT id FROM kept").fetchall() == [(7,)]
    finally:
        second.stop()
    assert _gone(second.pid)


def test_postgres_runs_with_its_options_and_reloads_its_configuration_cleanly(
    var_dir: Path,
) -> None:
    for start in ("fresh", "again"):
        server = start_postgres(var_dir)
        try:
            with psycopg.connect(server.admin_url, autocommit=True) as conn:
                running = dict(
                    conn.execute(
                        "SELECT name, setting FROM pg_settings "
                        "WHERE name IN ('max_connections', 'autovacuum_naptime', 'TimeZone')"
                    ).fetchall()
                )
                assert running == {
                    "max_connections": "200",
                    "autovacuum_naptime": "10",
                    "TimeZone": "UTC",
                }, start
                conn.execute("SELECT pg_reload_conf()")
                # What a reload would complain about: a setting of the files that differs
                # from the running one and cannot change without a restart.
                errors = conn.execute(
                    "SELECT name, error FROM pg_file_settings WHERE error IS NOT NULL"
                ).fetchall()
                assert errors == [], start
        finally:
            server.stop()
    conf = (var_dir / "pgdata" / "postgresql.conf").read_text().splitlines()
    assert sum(line.startswith("include_if_exists") for line in conf) == 1


def test_embedded_servers_refuse_connections_without_their_passwords(var_dir: Path) -> None:
    postgres = start_postgres(var_dir)
    cache = start_redis(var_dir)
    try:
        for user, database in (("vigil", "vigil"), ("postgres", "postgres")):
            bare = f"postgresql://{user}@127.0.0.1:{postgres.port}/{database}"
            with pytest.raises(psycopg.OperationalError, match="password"):
                psycopg.connect(bare, connect_timeout=5)
            wrong = f"postgresql://{user}:guessed@127.0.0.1:{postgres.port}/{database}"
            with pytest.raises(psycopg.OperationalError, match="password"):
                psycopg.connect(wrong, connect_timeout=5)
        socket_dir = var_dir / "pg"
        if socket_dir.exists():
            assert socket_dir.stat().st_mode & 0o777 == 0o700
            local = f"postgresql://vigil@/vigil?host={socket_dir}&port={postgres.port}"
            with pytest.raises(psycopg.OperationalError):
                psycopg.connect(local, connect_timeout=5)
        port = int(cache.url.rsplit(":", 1)[1].split("/")[0])
        bare_redis = redis.Redis(host="127.0.0.1", port=port, socket_timeout=2)
        with pytest.raises(redis.AuthenticationError):
            bare_redis.ping()
        bare_redis.close()
        keys = var_dir / "server-keys.json"
        assert keys.stat().st_mode & 0o777 == 0o600
        assert "requirepass" not in " ".join(psutil.Process(cache.pid).cmdline())
    finally:
        cache.stop()
        postgres.stop()


def test_a_cluster_made_with_trust_auth_gets_passwords_on_its_next_start(
    var_dir: Path,
) -> None:
    first = start_postgres(var_dir)
    first.stop()
    (var_dir / "pgdata" / "pg_hba.conf").write_text("host all all 127.0.0.1/32 trust\n")
    second = start_postgres(var_dir)
    try:
        bare = f"postgresql://vigil@127.0.0.1:{second.port}/vigil"
        with pytest.raises(psycopg.OperationalError, match="password"):
            psycopg.connect(bare, connect_timeout=5)
        with psycopg.connect(second.url, connect_timeout=5) as conn:
            assert conn.execute("SELECT current_user").fetchone() == ("vigil",)
    finally:
        second.stop()


def test_a_server_that_cannot_bind_its_port_fails_quoting_its_log(var_dir: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(EmbeddedServerError, match=r"redis\.log") as failure:
            start_redis(var_dir, port=port)
    assert "Address already in use" in str(failure.value)
