"""The relay's remembered partitioner agrees with Kafka's default, key by key."""

from __future__ import annotations

from uuid import UUID

from aiokafka.partitioner import DefaultPartitioner
from hypothesis import given
from hypothesis import strategies as st

from infrastructure.kafka.clients import CachedPartitioner


@given(st.lists(st.uuids(), min_size=1, max_size=50), st.integers(min_value=1, max_value=64))
def test_every_key_lands_where_the_default_partitioner_puts_it(
    keys: list[UUID], partitions: int
) -> None:
    cached, default = CachedPartitioner(), DefaultPartitioner()
    all_partitions = list(range(partitions))
    for key in keys * 2:  # the second round is answered from memory
        expected = default(key.bytes, all_partitions, all_partitions)
        assert cached(key.bytes, all_partitions, all_partitions) == expected
