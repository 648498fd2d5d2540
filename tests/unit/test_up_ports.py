"""`vigil up` picks a free port for each child whose port is 0, never one set for another
child (free until that child binds it) nor one it picked for another."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from infrastructure.settings import Settings
from interfaces.cli import up


def test_picked_ports_are_distinct_and_never_a_configured_one(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    settings = Settings(
        var_dir=tmp_path,
        command_port=0,
        query_port=0,
        relay_metrics_port=0,
        workers_metrics_port=41_001,
        case_opener_metrics_port=0,
    )
    # What a racy free-port probe can answer: the workers' port (nobody listens there yet),
    # then the same port twice in a row.
    answers: Iterator[int] = iter([41_001, 42_001, 42_001, 42_002, 41_001, 42_003, 42_004])
    monkeypatch.setattr(up, "free_port", lambda host: next(answers))
    ports = {spec.name: spec.port for spec in up.child_specs(settings)}
    assert ports == {
        "command_api": 42_001,
        "query_api": 42_002,
        "relay": 42_003,
        "workers": 41_001,
        "case_opener": 42_004,
    }
