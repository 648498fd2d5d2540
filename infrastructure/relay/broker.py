"""The relay's view of the broker: its topics and producer, and whether the log it
published to is still there.

The relay owns its topics and their partition count. The test broker (tansu) creates a
topic with 4 partitions whenever any client asks for metadata of a missing one (aiokafka
always allows auto-creation), so after a broker restart a consumer may re-create our topic
with the wrong count before we notice; we delete and create it again with ours.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Container, Iterable, Sequence

import structlog
from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import KafkaError, for_code
from aiokafka.partitioner import DefaultPartitioner

from infrastructure.settings import Settings

log = structlog.get_logger("vigil.relay")

REQUEST_TIMEOUT_MS = 5_000  # a broker that is down costs at most this per attempt
PRODUCER_LINGER_MS = 5  # small: latency matters more than batching a few more events
PRODUCER_BATCH_BYTES_MAX = 256 * 1024  # per partition batch; envelopes are ~1 KiB
PRODUCER_REQUEST_BYTES_MAX = 1_048_576  # the broker's default message.max.bytes
METADATA_MAX_AGE_MS = 30_000
TOPIC_ATTEMPTS_MAX = 10  # delete/create rounds lost to clients auto-creating the topic
TOPIC_RETRY_S = 0.1
REPLICATION_FACTOR = 1
PARTITION_CACHE_MAX = 200_000  # accounts whose partition is remembered (~100 B each)
UNKNOWN_TOPIC = 3  # Kafka error codes
TOPIC_ALREADY_EXISTS = 36


class TopicsNotReady(Exception):
    """Our topics could not be made to exist with our partition count: retried later."""


class RelayBroker:
    """Admin client and offsets probe, created lazily and dropped after any error."""

    def __init__(self, settings: Settings, ledger_topic: str, topics: Sequence[str]) -> None:
        assert ledger_topic in topics
        self.bootstrap = settings.resolved_kafka_bootstrap()
        self.partitions = settings.topic_partitions
        self.ledger_topic = ledger_topic
        self.topics = tuple(topics)
        self._admin: AIOKafkaAdminClient | None = None

    def new_producer(self) -> AIOKafkaProducer:
        # Not idempotent, not transactional: the test broker (tansu) refuses both. Delivery
        # is at least once; consumers dedupe by notification id.
        return AIOKafkaProducer(
            bootstrap_servers=self.bootstrap,
            client_id="vigil-relay",
            acks="all",
            enable_idempotence=False,
            compression_type=None,
            linger_ms=PRODUCER_LINGER_MS,
            max_batch_size=PRODUCER_BATCH_BYTES_MAX,
            max_request_size=PRODUCER_REQUEST_BYTES_MAX,
            request_timeout_ms=REQUEST_TIMEOUT_MS,
            retry_backoff_ms=100,
            metadata_max_age_ms=METADATA_MAX_AGE_MS,
            partitioner=CachedPartitioner(),
        )

    async def close(self) -> None:
        admin, self._admin = self._admin, None
        with contextlib.suppress(KafkaError, OSError):
            if admin is not None:
                await admin.close()

    async def ensure_topics(self) -> bool:
        """Create missing topics, recreate ones with another partition count. Returns
        whether the ledger topic was (re)created, i.e. its log is new."""
        try:
            return await self._ensure_topics()
        except BaseException:
            await self.close()
            raise

    async def _ensure_topics(self) -> bool:
        admin = await self._admin_client()
        ledger_created = False
        for _ in range(TOPIC_ATTEMPTS_MAX):
            counts = await self._partition_counts(admin)
            wrong = [t for t in self.topics if t in counts and counts[t] != self.partitions]
            missing = [t for t in self.topics if t not in counts]
            if not wrong and not missing:
                return ledger_created
            if wrong:
                for topic in wrong:
                    log.warning(
                        "relay_topic_recreated",
                        topic=topic,
                        partitions_found=counts[topic],
                        partitions=self.partitions,
                    )
                deleted = await admin.delete_topics(wrong)
                _raise_errors(deleted.topic_error_codes, tolerated={UNKNOWN_TOPIC})
            new = [NewTopic(t, self.partitions, REPLICATION_FACTOR) for t in [*missing, *wrong]]
            response = await admin.create_topics(new)
            # Already exists: someone auto-created it meanwhile; the next round checks it.
            _raise_errors(
                ((t, code) for t, code, _ in response.topic_errors),
                tolerated={TOPIC_ALREADY_EXISTS},
            )
            ledger_created = ledger_created or self.ledger_topic in {*missing, *wrong}
            await asyncio.sleep(TOPIC_RETRY_S)
        raise TopicsNotReady(f"topics {self.topics} not ready after {TOPIC_ATTEMPTS_MAX} rounds")

    async def _partition_counts(self, admin: AIOKafkaAdminClient) -> dict[str, int]:
        # list_topics first: a metadata request naming a missing topic would create it.
        present = [t for t in await admin.list_topics() if t in self.topics]
        if not present:
            return {}
        described = await admin.describe_topics(present)
        return {d["topic"]: len(d["partitions"]) for d in described if d["error_code"] == 0}

    async def _admin_client(self) -> AIOKafkaAdminClient:
        if self._admin is None:
            admin = AIOKafkaAdminClient(
                bootstrap_servers=self.bootstrap,
                client_id="vigil-relay-admin",
                request_timeout_ms=REQUEST_TIMEOUT_MS,
            )
            try:
                await admin.start()
            except BaseException:
                with contextlib.suppress(KafkaError, OSError):
                    await admin.close()
                raise
            self._admin = admin
        return self._admin


def _raise_errors(codes: Iterable[tuple[str, int]], tolerated: Container[int] = ()) -> None:
    for topic, code in codes:
        if code != 0 and code not in tolerated:
            raise for_code(code)(f"topic {topic}")


class CachedPartitioner:
    """Kafka's default partitioner (murmur2 of the key, as the Java client), remembered per
    key: aiokafka computes murmur2 in Python, a tenth of the relay's time under load. The
    same key always lands on the same partition, whichever of the two computed it."""

    def __init__(self) -> None:
        self._default = DefaultPartitioner()
        self._partitions: dict[tuple[bytes, int], int] = {}

    def __call__(self, key: bytes | None, all_partitions: list[int], available: list[int]) -> int:
        if key is None:
            return int(self._default(key, all_partitions, available))
        cache_key = (key, len(all_partitions))
        partition = self._partitions.get(cache_key)
        if partition is None:
            if len(self._partitions) >= PARTITION_CACHE_MAX:
                self._partitions.clear()
            partition = int(self._default(key, all_partitions, available))
            self._partitions[cache_key] = partition
        return partition
