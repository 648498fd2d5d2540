"""The consumer loop's lost-log rule, on its own: a partition is read again from its
beginning only once its log has ended before our position for LOG_END_BEHIND_S, checked
at most every LOG_END_CHECK_INTERVAL_S (a Kafka partition's new leader may report a lower
high watermark for a moment; the broker tests restart it against a real broker)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from aiokafka import TopicPartition

from infrastructure.kafka import consumer as consumer_module
from infrastructure.kafka.consumer import (
    LOG_END_BEHIND_S,
    LOG_END_CHECK_INTERVAL_S,
    EpochGuard,
)

P0 = TopicPartition("t", 0)
P1 = TopicPartition("t", 1)


class Partitions:
    """What the rule reads of a consumer: each partition's log end and position."""

    def __init__(self, ends: dict[TopicPartition, int], positions: dict[TopicPartition, int]):
        self.ends = ends
        self.positions = positions
        self.rewound: list[TopicPartition] = []

    def highwater(self, partition: TopicPartition) -> int | None:
        return self.ends.get(partition)

    async def position(self, partition: TopicPartition) -> int:
        return self.positions[partition]

    async def seek_to_beginning(self, partition: TopicPartition) -> None:
        self.rewound.append(partition)
        self.positions[partition] = 0


class Clock:
    def __init__(self) -> None:
        self.now = 1_000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    clock = Clock()
    monkeypatch.setattr(consumer_module.time, "monotonic", clock)
    return clock


def check(guard: EpochGuard, partitions: Partitions, idle: list[TopicPartition]) -> None:
    asyncio.run(guard.rewind_past_log_end(partitions, idle))  # type: ignore[arg-type]


def test_a_log_behind_our_position_for_long_enough_is_read_again(clock: Clock) -> None:
    guard = EpochGuard("test")
    partitions = Partitions(ends={P0: 5, P1: 90}, positions={P0: 40, P1: 90})
    check(guard, partitions, [P0, P1])
    assert partitions.rewound == []  # behind since now
    clock.now += LOG_END_BEHIND_S - LOG_END_CHECK_INTERVAL_S
    check(guard, partitions, [P0, P1])
    assert partitions.rewound == []
    clock.now += LOG_END_CHECK_INTERVAL_S
    check(guard, partitions, [P0, P1])
    assert partitions.rewound == [P0]  # P1's log ends where we are: live
    clock.now += LOG_END_BEHIND_S
    check(guard, partitions, [P0, P1])
    assert partitions.rewound == [P0]  # at its beginning now


def test_a_log_behind_for_a_moment_is_not_read_again(clock: Clock) -> None:
    guard = EpochGuard("test")
    partitions = Partitions(ends={P0: 35}, positions={P0: 40})
    check(guard, partitions, [P0])
    clock.now += LOG_END_BEHIND_S / 2
    partitions.ends[P0] = 41  # the new leader caught up
    check(guard, partitions, [P0])
    clock.now += LOG_END_BEHIND_S / 2
    partitions.ends[P0] = 38  # behind again: the wait starts over
    check(guard, partitions, [P0])
    clock.now += LOG_END_BEHIND_S / 2
    check(guard, partitions, [P0])
    assert partitions.rewound == []


@pytest.mark.parametrize("case", ["fetched", "never_fetched"])
def test_a_partition_with_records_or_no_fetch_reply_is_left_alone(clock: Clock, case: str) -> None:
    guard = EpochGuard("test")
    partitions = Partitions(ends={P0: 5}, positions={P0: 40, P1: 40})
    idle: list[Any] = [] if case == "fetched" else [P1]  # P1: no reply yet, no log end
    for _ in range(3):
        check(guard, partitions, idle)
        clock.now += LOG_END_BEHIND_S
    assert partitions.rewound == []
