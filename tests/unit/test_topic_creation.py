"""The topics the relay creates: our partition count, the copies production asks for, and
how many copies must have a write before the broker acknowledges it."""

from __future__ import annotations

from pathlib import Path

import pytest

from infrastructure.relay.broker import RelayBroker
from infrastructure.settings import ConfigurationError, load_settings


def _topic(tmp_path: Path, **overrides: int) -> tuple[int, int, dict[str, str]]:
    settings = load_settings(var_dir=tmp_path, topic_partitions=6, **overrides)
    new = RelayBroker(settings, "ledger", ["ledger"])._new_topic("ledger")
    return new.num_partitions, new.replication_factor, dict(new.topic_configs)


def test_one_copy_by_default_with_no_insync_setting(tmp_path: Path) -> None:
    assert _topic(tmp_path) == (6, 1, {})


def test_production_copies_acknowledge_with_all_but_one(tmp_path: Path) -> None:
    assert _topic(tmp_path, topic_replication_factor=3) == (
        6,
        3,
        {"min.insync.replicas": "2"},
    )
    explicit = _topic(tmp_path, topic_replication_factor=3, topic_min_insync_replicas=3)
    assert explicit[2] == {"min.insync.replicas": "3"}


def test_more_insync_replicas_than_copies_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError, match="cannot exceed"):
        load_settings(var_dir=tmp_path, topic_replication_factor=2, topic_min_insync_replicas=3)
