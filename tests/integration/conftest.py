"""What the integration tests share: a real Kafka-protocol broker (tansu, memory only),
started from the main thread (its child process must outlive no thread of ours) once per
session, tests keeping apart by topic prefix (a test that restarts a broker starts its
own); and by default a fresh store with the read models and a ledger on it (a module that
needs other settings or another clock defines its own `settings` or `ledger`).
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from uuid import uuid4

import psycopg
import pytest

from application.ledger import Ledger
from infrastructure.eventstore.ledger import open_ledger
from infrastructure.ops.embedded import EmbeddedBroker, free_port, start_broker
from infrastructure.readmodels.schema import ensure_read_models
from infrastructure.settings import Settings


@pytest.fixture(scope="session")
def broker() -> Iterator[EmbeddedBroker]:
    var_dir = Path(tempfile.mkdtemp(prefix="vigil-broker-"))
    server = start_broker(var_dir)
    yield server
    server.stop()
    shutil.rmtree(var_dir, ignore_errors=True)


@pytest.fixture
def restartable_broker() -> Iterator[Callable[[], EmbeddedBroker]]:
    """Starts a broker on one fixed port, again and again, each time empty (the test broker
    keeps its topics in memory only); stops the last at the end."""
    root = Path(tempfile.mkdtemp(prefix="vigil-broker-restart-"))
    port = free_port()
    started: list[EmbeddedBroker] = []

    def start() -> EmbeddedBroker:
        server = start_broker(root / str(len(started)), port=port)
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()
    shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def settings(settings_factory) -> Settings:  # type: ignore[no-untyped-def]
    settings = settings_factory()
    with psycopg.connect(settings.resolved_database_url(), autocommit=True) as conn:
        ensure_read_models(conn)
    return settings  # type: ignore[no-any-return]


@pytest.fixture
def broker_settings(settings_factory, broker: EmbeddedBroker) -> Settings:  # type: ignore[no-untyped-def]
    """Settings with the session's broker and a topic prefix of their own (two partitions),
    on a fresh store with the read models: for a module's `settings` when it runs the
    relay or consumers."""
    made = settings_factory(
        kafka_bootstrap=broker.bootstrap, topic_prefix=f"t{uuid4().hex[:8]}.", topic_partitions=2
    )
    with psycopg.connect(made.resolved_database_url(), autocommit=True) as conn:
        ensure_read_models(conn)
    return made  # type: ignore[no-any-return]


@pytest.fixture
def ledger(settings: Settings) -> Iterator[Ledger]:
    app = open_ledger(settings)
    yield app
    app.close()
