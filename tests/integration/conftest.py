"""A real Kafka-protocol broker (tansu, memory only) for the integration tests.

Started from the main thread (its child process must outlive no thread of ours) once per
session; tests keep apart by topic prefix. A test that restarts a broker starts its own.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from infrastructure.embedded import EmbeddedBroker, start_broker


@pytest.fixture(scope="session")
def broker() -> Iterator[EmbeddedBroker]:
    var_dir = Path(tempfile.mkdtemp(prefix="vigil-broker-"))
    server = start_broker(var_dir)
    yield server
    server.stop()
    shutil.rmtree(var_dir, ignore_errors=True)
