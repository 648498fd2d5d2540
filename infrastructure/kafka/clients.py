"""Every Kafka client Vigil makes, with its options spelled out: the consumers of the
workers and the case opener, the relay's producer and admin client. One place, so that
what the broker must be reached with (addresses, TLS and SASL) is set once for all of
them."""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import Any

import structlog
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.abc import AbstractTokenProvider
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.errors import KafkaError
from aiokafka.helpers import create_ssl_context
from aiokafka.partitioner import DefaultPartitioner

from infrastructure.limits import (
    FETCH_BYTES_MAX,
    FETCH_PARTITION_BYTES_MAX,
    PRODUCER_BATCH_BYTES_MAX,
    PRODUCER_REQUEST_BYTES_MAX,
)
from infrastructure.settings import Settings

log = structlog.get_logger("vigil.kafka")

FETCH_TIMEOUT_MS = 500
# How long the broker may hold a fetch that finds nothing new. tansu holds a fetch for
# about half of it even when records arrive meanwhile (measured: 100 ms adds 25 ms to the
# median delivery, 50 ms at most), and every fetch costs it work on each of the topic's
# partitions: at 20 ms, one idle consumer took 8 % of a core of the broker and 4 % of its
# own. Its in-memory log costs more: a fetch that finds records lists every record batch
# the partition has ever stored (each relay send adds one per partition), so the cost of a
# fetch grows with the log. At 100 ms the workers' fetches took the broker from 27 % of a
# core to 53 % over a 14-minute soak at 600 transfers/s, and past 15 minutes the machine
# ran out of CPU; at 250 ms it fetches less than half as often, each fetch fuller.
FETCH_WAIT_MS = 250
# FETCH_PARTITION_BYTES_MAX, what one fetch may bring from each partition (envelopes are
# about 1 KiB): a few hundred events, so that one round of fetches over the topic's
# partitions (12 by default) fills a projection batch
# (VIGIL_PROJECTIONS_FETCH_RECORDS_MAX) with about as many events of each.
# The relay publishes in notification order, so such a batch covers one stretch of ids
# from every partition, and the projections' marks can move over nearly all of it: only
# ids beyond a mark need a tracking row. Bigger partition fetches gave batches of a few
# partitions each, half their ids tracked row by row. Above the relay's producer batches
# (PRODUCER_BATCH_BYTES_MAX), so a fetch always holds whole record batches. The byte sizes
# live in `infrastructure/limits.py`, which asserts how they relate.
REQUEST_TIMEOUT_MS = 5_000  # a broker that is down costs a producer at most this an attempt
PRODUCER_LINGER_MS = 5  # small: latency matters more than batching a few more events
METADATA_MAX_AGE_MS = 30_000
PROBE_FETCH_PARTITION_BYTES, PROBE_FETCH_BYTES = 4_096, 65_536  # a record batch or so each
PARTITION_CACHE_MAX = 200_000  # accounts whose partition is remembered (~100 B each)


def security_options(settings: Settings) -> dict[str, Any]:
    """What every client needs to reach the broker as the settings say: TLS (with the
    CA file given, else the system's), SASL. Passed to each client, never left to defaults."""
    protocol = settings.kafka_security_protocol
    options: dict[str, Any] = {"security_protocol": protocol}
    if protocol in ("SSL", "SASL_SSL"):
        cafile = None if settings.kafka_ssl_cafile is None else str(settings.kafka_ssl_cafile)
        options["ssl_context"] = create_ssl_context(cafile=cafile)
    if settings.kafka_sasl_mechanism == "AWS_MSK_IAM":
        assert settings.kafka_aws_region is not None  # the settings check it
        options["sasl_mechanism"] = "OAUTHBEARER"
        options["sasl_oauth_token_provider"] = MskIamTokenProvider(settings.kafka_aws_region)
    elif protocol.startswith("SASL_"):
        assert settings.kafka_sasl_password is not None  # the settings check it
        options["sasl_mechanism"] = settings.kafka_sasl_mechanism
        options["sasl_plain_username"] = settings.kafka_sasl_username
        options["sasl_plain_password"] = settings.kafka_sasl_password.get_secret_value()
    return options


def new_consumer(
    settings: Settings, topic: str, group_id: str, client_id: str, records_max: int
) -> AIOKafkaConsumer:
    return AIOKafkaConsumer(
        topic,
        bootstrap_servers=settings.resolved_kafka_bootstrap(),
        group_id=group_id,
        client_id=client_id,
        # Committed offsets are a head start, never the truth: start from the beginning.
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        max_poll_records=records_max,
        fetch_max_wait_ms=FETCH_WAIT_MS,
        max_partition_fetch_bytes=FETCH_PARTITION_BYTES_MAX,
        fetch_max_bytes=FETCH_BYTES_MAX,
        request_timeout_ms=30_000,
        session_timeout_ms=10_000,
        heartbeat_interval_ms=3_000,
        metadata_max_age_ms=5_000,
        **security_options(settings),
    )


def new_producer(settings: Settings, client_id: str) -> AIOKafkaProducer:
    """A producer keyed by account: acks from all in-sync replicas, at least once."""
    # Not idempotent, not transactional: the test broker (tansu) refuses both. Delivery
    # is at least once; consumers dedupe by notification id.
    return AIOKafkaProducer(
        bootstrap_servers=settings.resolved_kafka_bootstrap(),
        client_id=client_id,
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
        **security_options(settings),
    )


def new_probe_consumer(settings: Settings, client_id: str) -> AIOKafkaConsumer:
    """A consumer of no group, for reading a partition's log end where we say (the relay's
    check that the broker still holds what it acknowledged). Small fetches: it wants the
    high watermark the fetch reply carries, not the records."""
    return AIOKafkaConsumer(
        bootstrap_servers=settings.resolved_kafka_bootstrap(),
        client_id=client_id,
        group_id=None,
        enable_auto_commit=False,
        auto_offset_reset="none",
        fetch_max_wait_ms=FETCH_WAIT_MS,
        max_partition_fetch_bytes=PROBE_FETCH_PARTITION_BYTES,
        fetch_max_bytes=PROBE_FETCH_BYTES,
        request_timeout_ms=REQUEST_TIMEOUT_MS + 1_000,
        metadata_max_age_ms=METADATA_MAX_AGE_MS,
        **security_options(settings),
    )


def new_admin(settings: Settings, client_id: str) -> AIOKafkaAdminClient:
    """An admin client (topics); not started."""
    return AIOKafkaAdminClient(
        bootstrap_servers=settings.resolved_kafka_bootstrap(),
        client_id=client_id,
        request_timeout_ms=REQUEST_TIMEOUT_MS,
        **security_options(settings),
    )


async def stop_client(client: AIOKafkaConsumer | AIOKafkaProducer) -> None:
    """Stop a consumer or producer, even when aiokafka's own clean-up trips over itself.

    A consumer's `stop()` cancels the fetch tasks it has in flight and awaits each one. A
    fetch task that is sleeping off a failed fetch re-raises that cancellation, and while
    the broker is down that sleep is where a fetch task spends most of its time. That
    `CancelledError` is aiokafka's, not a request to cancel us. Let through, it ended the
    relay process on a broker restart. So it is swallowed here, and the connections the
    interrupted `stop()` never reached are closed.

    The other way round, `stop()` swallows a cancellation of ours that lands while it
    waits for its fetch task. Either way, a cancellation of the calling task made while
    stopping is raised once the client is stopped. A failure to close is not raised: the
    client is finished with either way."""
    task = asyncio.current_task()
    cancelling = task.cancelling() if task is not None else 0
    try:
        await client.stop()
    except asyncio.CancelledError:
        if task is not None and task.cancelling() > cancelling:
            raise  # ours
        log.info("kafka_client_stop_interrupted", client_id=_client_id(client))
        # Not public, but the only handles on what the interrupted stop() left running:
        # the fetch tasks it had not reached yet, and the connections.
        if isinstance(client, AIOKafkaConsumer):
            fetcher = getattr(client, "_fetcher", None)
            tasks = [getattr(fetcher, "_fetch_task", None), *getattr(fetcher, "_pending_tasks", ())]
            for left in tasks:
                if left is not None:
                    left.cancel()
        connections = client.client if isinstance(client, AIOKafkaProducer) else client._client
        with contextlib.suppress(KafkaError, OSError):
            await connections.close()
    except (KafkaError, OSError) as error:
        log.info("kafka_client_stop_failed", client_id=_client_id(client), error=repr(error))
    if task is not None and task.cancelling() > cancelling:
        raise asyncio.CancelledError  # ours, swallowed by the library


def _client_id(client: AIOKafkaConsumer | AIOKafkaProducer) -> str:
    inner = client.client if isinstance(client, AIOKafkaProducer) else client._client
    return str(getattr(inner, "_client_id", ""))


class MskIamTokenProvider(AbstractTokenProvider):  # type: ignore[misc]  # untyped base
    """OAUTHBEARER tokens for MSK's IAM access control: a SigV4-presigned
    `kafka-cluster:Connect` request, signed with whatever AWS credentials the process has
    (on EKS, the pod's IRSA role), by AWS's own signer. A token serves every connection
    until a minute before it expires (15 minutes), then a new one is made; signing may
    call STS, so it runs in a thread."""

    REFRESH_BEFORE_MS = 60_000

    def __init__(self, region: str) -> None:
        self.region = region
        self._token: str | None = None
        self._expires_ms = 0
        self._lock = asyncio.Lock()

    async def token(self) -> str:
        async with self._lock:
            fresh = time.time() * 1000 <= self._expires_ms - self.REFRESH_BEFORE_MS
            if self._token is not None and fresh:
                return self._token
            token, self._expires_ms = await asyncio.to_thread(self._sign)
            self._token = token
            return token

    def _sign(self) -> tuple[str, int]:
        from aws_msk_iam_sasl_signer import MSKAuthTokenProvider

        token, expires_ms = MSKAuthTokenProvider.generate_auth_token(self.region)
        return str(token), int(expires_ms)


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
