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
import logging
from collections.abc import Container, Iterable, Iterator, Mapping, Sequence

import structlog
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import KafkaError, for_code

from infrastructure.kafka.clients import new_admin, new_probe_consumer, new_producer, stop_client
from infrastructure.settings import Settings

log = structlog.get_logger("vigil.relay")

TOPIC_ATTEMPTS_MAX = 10  # delete/create rounds lost to clients auto-creating the topic
TOPIC_RETRY_S = 0.1
UNKNOWN_TOPIC = 3  # Kafka error codes
TOPIC_ALREADY_EXISTS = 36
PROBE_WAIT_MS = 1_000  # for the log ends of all the partitions probed
# aiokafka logs every assignment at INFO; the probe assigns its partitions anew each time.
SUBSCRIPTION_LOGGER = logging.getLogger("aiokafka.consumer.subscription_state")


class TopicsNotReady(Exception):
    """Our topics could not be made to exist with our partition count: retried later."""


class RelayBroker:
    """Admin client and log-end probe, created lazily and dropped after any error."""

    def __init__(self, settings: Settings, ledger_topic: str, topics: Sequence[str]) -> None:
        assert ledger_topic in topics
        self.settings = settings
        self.partitions = settings.topic_partitions
        self.ledger_topic = ledger_topic
        self.topics = tuple(topics)
        self._admin: AIOKafkaAdminClient | None = None
        self._probe: AIOKafkaConsumer | None = None

    def new_producer(self) -> AIOKafkaProducer:
        return new_producer(self.settings, "vigil-relay")

    async def close(self) -> None:
        admin, self._admin = self._admin, None
        probe, self._probe = self._probe, None
        with contextlib.suppress(KafkaError, OSError):
            if admin is not None:
                await admin.close()
        if probe is not None:
            await stop_client(probe)

    async def log_lost(self, topic: str, acknowledged: Mapping[int, int]) -> bool:
        """Whether the broker lost what it acknowledged on `topic`: a partition whose log
        now ends at or before the last offset it acknowledged us (`acknowledged`: partition
        -> offset). A live log only grows, so this holds whichever partitions were written
        since: after a restart the new batches may all land on partitions never written
        before, and the offsets of those sends would say nothing. A partition the probe gets
        no answer for within PROBE_WAIT_MS counts as not lost (the next probe asks again)."""
        if not acknowledged:
            return False
        try:
            return await self._log_lost(topic, acknowledged)
        except BaseException:
            await self.close()
            raise

    async def _log_lost(self, topic: str, acknowledged: Mapping[int, int]) -> bool:
        if self._probe is None:
            probe = new_probe_consumer(self.settings, "vigil-relay-probe")
            try:
                await probe.start()
            except BaseException:
                await stop_client(probe)
                raise
            self._probe = probe
        partitions = [TopicPartition(topic, p) for p in sorted(acknowledged)]
        # Assigned anew each time, so every log end read below comes from a fetch made for
        # this probe. Kept assigned, the consumer went on fetching between probes, and a
        # fetch sent before our last send could land after the seek (when the seek offset
        # was the one it fetched from) with the log end of before that send: the alerts
        # relay took that for a lost log and republished every alert, seven times in a
        # 20-minute soak. A fetch of the previous assignment updates only its own state.
        with _quiet(SUBSCRIPTION_LOGGER):
            self._probe.assign(partitions)
        for partition in partitions:
            # At the last acknowledged record: a fetch there brings the log's end back.
            self._probe.seek(partition, acknowledged[partition.partition])
        await self._probe.getmany(*partitions, timeout_ms=PROBE_WAIT_MS)
        for partition in partitions:
            end = self._probe.highwater(partition)
            if end is not None and end <= acknowledged[partition.partition]:
                log.warning(
                    "relay_log_lost",
                    topic=topic,
                    partition=partition.partition,
                    log_end=end,
                    acknowledged=acknowledged[partition.partition],
                )
                return True
        return False

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
            new = [self._new_topic(t) for t in [*missing, *wrong]]
            response = await admin.create_topics(new)
            # Already exists: someone auto-created it meanwhile; the next round checks it.
            _raise_errors(
                ((t, code) for t, code, _ in response.topic_errors),
                tolerated={TOPIC_ALREADY_EXISTS},
            )
            ledger_created = ledger_created or self.ledger_topic in {*missing, *wrong}
            await asyncio.sleep(TOPIC_RETRY_S)
        raise TopicsNotReady(f"topics {self.topics} not ready after {TOPIC_ATTEMPTS_MAX} rounds")

    def _new_topic(self, name: str) -> NewTopic:
        """Our partition count and copies; with copies, how many acknowledge a write."""
        copies = self.settings.topic_replication_factor
        configs = {}
        if copies > 1:
            configs["min.insync.replicas"] = str(self.settings.min_insync_replicas())
        return NewTopic(name, self.partitions, copies, topic_configs=configs)

    async def _partition_counts(self, admin: AIOKafkaAdminClient) -> dict[str, int]:
        # list_topics first: a metadata request naming a missing topic would create it.
        present = [t for t in await admin.list_topics() if t in self.topics]
        if not present:
            return {}
        described = await admin.describe_topics(present)
        return {d["topic"]: len(d["partitions"]) for d in described if d["error_code"] == 0}

    async def _admin_client(self) -> AIOKafkaAdminClient:
        if self._admin is None:
            admin = new_admin(self.settings, "vigil-relay-admin")
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


@contextlib.contextmanager
def _quiet(logger: logging.Logger) -> Iterator[None]:
    """`logger`'s INFO records dropped for the block (its warnings still pass)."""
    level = logger.level
    logger.setLevel(max(level, logging.WARNING))
    try:
        yield
    finally:
        logger.setLevel(level)
