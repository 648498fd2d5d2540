"""The relay's way of producing against aiokafka's per-record `send()`: CPU per record.

Starts a tansu broker of its own on a free loopback port (topics in memory, under a
temporary directory, stopped at the end), makes a topic of 12 partitions and one producer
with the relay's options, then, round after round, produces the same records (about 1 KiB
each, keys of 10,000 accounts, the relay's four headers) both ways and prints the CPU of
this process per record, and the wall time:

- `send`: one `send()` per record and a `gather` over their futures (what the relay did);
- `batch`: the records grouped by partition (the same partitioner), each partition's record
  batches built with `create_batch` and sent with `send_batch`, one future per batch (what
  the relay does).

    .venv/bin/python load/producer_bench.py [--records 1000] [--repeats 20] [--rounds 3]

Bounded: rounds x 2 x repeats x records records in all, loopback only.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_options import bounded

from infrastructure.kafka.clients import CachedPartitioner
from infrastructure.limits import PRODUCER_BATCH_BYTES_MAX, PRODUCER_REQUEST_BYTES_MAX
from infrastructure.ops.embedded import free_port, start_broker

TOPIC = "producer-bench"
PARTITIONS = 12
ACCOUNTS = 10_000
VALUE_BYTES = 1_000

Record = tuple[bytes, bytes, list[tuple[str, bytes]]]


def _records(count: int, keys: list[bytes]) -> list[Record]:
    value = os.urandom(VALUE_BYTES // 2).hex().encode()
    return [
        (
            random.choice(keys),
            value,
            [
                ("notification_id", str(n).encode()),
                ("event_type", b"Deposited"),
                ("correlation_id", b"3f1c1d9e-5a0b-4f7e-9d61-5d7b1d1c0f00"),
                ("relay_epoch", b"1"),
            ],
        )
        for n in range(1, count + 1)
    ]


async def _per_record(producer: AIOKafkaProducer, records: list[Record]) -> None:
    futures = [
        await producer.send(TOPIC, value=value, key=key, headers=headers)
        for key, value, headers in records
    ]
    for result in await asyncio.gather(*futures, return_exceptions=True):
        if isinstance(result, BaseException):
            raise result


# The relay keeps one for its life: a key's partition is computed once (murmur2 in Python).
PARTITIONER = CachedPartitioner()


async def _per_batch(producer: AIOKafkaProducer, records: list[Record]) -> None:
    partitioner = PARTITIONER
    partitions = sorted(await producer.partitions_for(TOPIC))
    by_partition: dict[int, list[Record]] = {}
    for record in records:
        by_partition.setdefault(partitioner(record[0], partitions, partitions), []).append(record)

    async def one(partition: int, mine: list[Record]) -> None:
        futures = []
        batch = producer.create_batch()
        for key, value, headers in mine:
            if batch.append(timestamp=None, key=key, value=value, headers=headers) is None:
                futures.append(await producer.send_batch(batch, TOPIC, partition=partition))
                batch = producer.create_batch()
                batch.append(timestamp=None, key=key, value=value, headers=headers)
        futures.append(await producer.send_batch(batch, TOPIC, partition=partition))
        for future in futures:
            await future

    await asyncio.gather(*(one(p, mine) for p, mine in by_partition.items()))


async def _measure(args: argparse.Namespace, bootstrap: str) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(TOPIC, PARTITIONS, 1)])
    finally:
        await admin.close()
    producer = AIOKafkaProducer(
        bootstrap_servers=bootstrap,
        acks="all",
        enable_idempotence=False,
        linger_ms=5,
        max_batch_size=PRODUCER_BATCH_BYTES_MAX,
        max_request_size=PRODUCER_REQUEST_BYTES_MAX,
        partitioner=CachedPartitioner(),
    )
    await producer.start()
    keys = [os.urandom(18).hex().encode() for _ in range(ACCOUNTS)]
    ways: list[tuple[str, Callable[[AIOKafkaProducer, list[Record]], Awaitable[None]]]] = [
        ("send", _per_record),
        ("batch", _per_batch),
    ]
    try:
        await _per_batch(producer, _records(args.records, keys))  # metadata and connections
        for round_number in range(1, args.rounds + 1):
            for name, way in ways:
                records = _records(args.records, keys)
                cpu_s, wall_s = time.process_time(), time.perf_counter()
                for _ in range(args.repeats):
                    await way(producer, records)
                sent = args.repeats * args.records
                cpu_us = (time.process_time() - cpu_s) / sent * 1e6
                wall_us = (time.perf_counter() - wall_s) / sent * 1e6
                print(
                    f"round {round_number} {name:5s} {cpu_us:6.1f} µs CPU per record, "
                    f"{wall_us:6.1f} µs wall ({sent:,} records)",
                    flush=True,
                )
    finally:
        await producer.stop()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=bounded(1, 10_000, int), default=1_000)
    parser.add_argument("--repeats", type=bounded(1, 200, int), default=20)
    parser.add_argument("--rounds", type=bounded(1, 10, int), default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="vigil-producer-bench-") as var_dir:
        broker = start_broker(Path(var_dir), free_port())
        try:
            asyncio.run(_measure(args, broker.bootstrap))
        finally:
            broker.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
