"""Builds the ledger application from Settings: the event store's environment,
migrations under an advisory lock, the Redis reply cache."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Iterator
from datetime import datetime
from typing import Any
from urllib.parse import unquote, urlsplit

import orjson
import psycopg
import structlog
from eventsourcing.persistence import StoredEvent
from eventsourcing.utils import get_topic, resolve_topic

from application.envelope import envelope, envelope_of
from application.ledger import Ledger, LedgerOptions, MoneyCeilings
from application.ports import NoReplyCache, ReplyCache
from domain.chained import ChainedAggregate
from infrastructure.eventstore import canonical
from infrastructure.eventstore.index import store_names, warn_if_behind
from infrastructure.eventstore.recorder import VigilRecorder
from infrastructure.eventstore.transcoder import OrjsonTranscoder
from infrastructure.readmodels.quarantine import describe
from infrastructure.settings import ConfigurationError, Settings
from projections.envelope import Envelope

log = structlog.get_logger("vigil.store")

# The library names the table after the application ("Ledger").
EVENTS_TABLE = "ledger_events"

# Any fixed number: all Vigil processes that migrate take this lock first, so two
# starting at once do not race on CREATE TABLE / CREATE TYPE.
MIGRATION_LOCK_ID = 7_270_401


@contextlib.contextmanager
def migration_lock(conn: psycopg.Connection[Any]) -> Iterator[None]:
    """Hold the migration lock (a session advisory lock) on `conn` for the block."""
    conn.execute("SELECT pg_advisory_lock(%s)", (MIGRATION_LOCK_ID,))
    try:
        yield
    finally:
        conn.execute("SELECT pg_advisory_unlock(%s)", (MIGRATION_LOCK_ID,))


@contextlib.contextmanager
def migrating(settings: Settings) -> Iterator[psycopg.Connection[Any]]:
    """A connection of its own, holding the migration lock, for creating tables."""
    with (
        psycopg.connect(
            settings.resolved_database_url(),
            autocommit=True,
            connect_timeout=settings.db_connect_timeout_s,
        ) as conn,
        migration_lock(conn),
    ):
        yield conn


@contextlib.asynccontextmanager
async def migration_lock_async(conn: psycopg.AsyncConnection[Any]) -> AsyncIterator[None]:
    """`migration_lock` on an async connection."""
    await conn.execute("SELECT pg_advisory_lock(%s)", (MIGRATION_LOCK_ID,))
    try:
        yield
    finally:
        await conn.execute("SELECT pg_advisory_unlock(%s)", (MIGRATION_LOCK_ID,))


def event_store_env(settings: Settings, *, create_table: bool) -> dict[str, str]:
    url = urlsplit(settings.resolved_database_url())
    if url.scheme not in ("postgresql", "postgres"):
        raise ConfigurationError(f"VIGIL_DATABASE_URL must be postgresql://, not {url.scheme}")
    env = {
        "PERSISTENCE_MODULE": "eventsourcing.postgres",
        "APPLICATION_RECORDER_TOPIC": get_topic(VigilRecorder),
        "TRANSCODER_TOPIC": get_topic(OrjsonTranscoder),
        "POSTGRES_DBNAME": unquote(url.path.lstrip("/")) or "vigil",
        "POSTGRES_HOST": url.hostname or "127.0.0.1",
        "POSTGRES_PORT": str(url.port or 5432),
        "POSTGRES_USER": unquote(url.username or "vigil"),
        "POSTGRES_PASSWORD": unquote(url.password or ""),
        "POSTGRES_CONNECT_TIMEOUT": str(settings.db_connect_timeout_s),
        "POSTGRES_POOL_SIZE": str(settings.db_pool_size),
        "POSTGRES_MAX_OVERFLOW": str(settings.db_pool_size),
        # No ping before each use: a broken connection fails its command with 503 (retry,
        # nothing written) and is discarded; the ping would cost every group a round trip.
        "POSTGRES_PRE_PING": "n",
        "POSTGRES_LOCK_TIMEOUT": "5",
        "POSTGRES_IDLE_IN_TRANSACTION_SESSION_TIMEOUT": "10",
        "CREATE_TABLE": "y" if create_table else "n",
        # Hot accounts stay in memory; each read fast-forwards them with the events
        # written since (by any process), so a cached aggregate is never stale, and
        # callers get a deep copy, so a refused or lost command leaves the cache as it was.
        "AGGREGATE_CACHE_MAXSIZE": str(settings.aggregate_cache_max),
        "AGGREGATE_CACHE_FASTFORWARD": "y",
        "DEEPCOPY_FROM_AGGREGATE_CACHE": "y",
    }
    if settings.cipher_key is not None:
        # AES-GCM from the `cryptography` package (the library's other cipher needs pycryptodome).
        env["CIPHER_TOPIC"] = "eventsourcing.cryptography:AESCipher"
        env["CIPHER_KEY"] = settings.cipher_key.get_secret_value()
    return env


def open_ledger(settings: Settings, reply_cache: ReplyCache | None = None) -> Ledger:
    """The ledger, with its tables created (once, under a lock) if missing, unless
    `migrate_on_start` is off (production: `vigil migrate` did it as the owning role)."""
    canonical.install()
    options = LedgerOptions(
        mac_key=settings.audit_mac_key_resolved(),
        ceilings=money_ceilings(settings),
        retries_max=settings.command_retries_max,
        accounts_in_memory_max=settings.aggregate_cache_max,
        reply_cache=reply_cache or NoReplyCache(),
    )
    with psycopg.connect(
        settings.resolved_database_url(),
        autocommit=True,
        connect_timeout=settings.db_connect_timeout_s,
    ) as conn:
        if not settings.migrate_on_start:
            ledger = Ledger(env=event_store_env(settings, create_table=False), options=options)
        else:
            with migration_lock(conn):
                ledger = Ledger(env=event_store_env(settings, create_table=True), options=options)
        # Derived data: warn, never rebuild at start (`vigil audit reindex` does).
        warn_if_behind(conn, *store_names(ledger))
        return ledger


def money_ceilings(settings: Settings) -> MoneyCeilings:
    return MoneyCeilings(
        balance_max_major=settings.balance_max,
        overdraft_max_major=settings.overdraft_max,
        teller_overdraft_max_major=settings.teller_overdraft_max,
    )


# The store's topics whose events are decoded into envelopes (accounts, cases, watchlist).
ENVELOPE_TOPICS = ("domain.account:", "domain.case:", "domain.watchlist:")


def stored_envelope(ledger: Ledger, notification_id: int, stored: StoredEvent) -> dict[str, Any]:
    """The envelope of a stored event (decrypted, decompressed, decoded). Read from the
    stored JSON without building the event, which is most of the cost where thousands a
    second are read (relay, replays); through the library's mapper when the fast reading
    does not apply (a class version to upcast, a time the library wrote otherwise)."""
    event_class = resolve_topic(stored.topic)
    fields = stored_fields(ledger, stored)
    timestamp = fields.get("timestamp")
    if (
        isinstance(timestamp, dict)
        and timestamp.get("_type_") == DATETIME_TRANSCODING
        and getattr(event_class, "class_version", 1) == 1
        and "class_version" not in fields
        and issubclass(event_class, ChainedAggregate.Event)
    ):
        # KeyError: a field the state lacks, that the event class would give its default.
        with contextlib.suppress(KeyError):
            return envelope_of(
                notification_id,
                event_class,
                stored.originator_id,
                stored.originator_version,
                datetime.fromisoformat(timestamp["_data_"]),
                fields,
            )
    event: Any = ledger.mapper.to_domain_event(stored)
    return envelope(notification_id, event)


# The library's transcoding of datetimes: {"_type_": "datetime_iso", "_data_": isoformat()}.
DATETIME_TRANSCODING = "datetime_iso"


def stored_fields(ledger: Ledger, stored: StoredEvent) -> dict[str, Any]:
    """A stored event's state as the library's mapper reads it (decrypted, decompressed),
    parsed by orjson; values the library transcoded stay as their `_type_`/`_data_` dicts."""
    state = stored.state
    mapper = ledger.mapper
    if mapper.cipher is not None:
        state = mapper.cipher.decrypt(state)
    if mapper.compressor is not None:
        state = mapper.compressor.decompress(state)
    fields = orjson.loads(state)
    if not isinstance(fields, dict):
        raise TypeError(f"a stored state is an object, not {type(fields).__name__}")
    return fields


def envelope_pages(ledger: Ledger, page_events: int) -> Iterator[list[Envelope]]:
    """The whole store, in notification order, a page at a time, as the projections
    receive it: for replays and back-tests that read the store instead of Kafka."""
    position: int | None = None
    while True:
        notifications = ledger.recorder.select_notifications(
            position, page_events, inclusive_of_start=False
        )
        if not notifications:
            return
        page: list[Envelope] = []
        for notification in notifications:
            if not notification.topic.startswith(ENVELOPE_TOPICS):
                continue
            try:
                body = stored_envelope(ledger, notification.id, notification)
            except Exception as error:
                # The relay quarantines such an event and every projection steps over its
                # id; a replay does the same rather than stop on it.
                log.error(
                    "event_undecodable", notification_id=notification.id, error=describe(error)
                )
                continue
            page.append(Envelope.from_json(body))
        if page:
            yield page
        position = notifications[-1].id
