"""Builds the ledger application from Settings: the event store's environment, and the
ledger itself, its tables created under the migration lock."""

from __future__ import annotations

import json
from urllib.parse import parse_qsl, unquote, urlsplit

from eventsourcing.utils import get_topic

from application.ledger import Ledger, LedgerOptions
from application.ports import NoReplyCache, ReplyCache
from application.terms import MoneyCeilings
from domain.screening import Screening
from infrastructure.eventstore import canonical
from infrastructure.eventstore.cipher import RotatingCipher
from infrastructure.eventstore.persistence import CONNECT_PARAMS, VigilPostgresFactory
from infrastructure.eventstore.recorder import VigilRecorder
from infrastructure.eventstore.schema import store_names, warn_if_behind
from infrastructure.eventstore.transcoder import OrjsonTranscoder
from infrastructure.postgres.connect import connect
from infrastructure.postgres.locks import migration_lock
from infrastructure.settings import ConfigurationError, Settings


def event_store_env(settings: Settings, *, create_table: bool) -> dict[str, str]:
    """The library's settings for the store, from `Settings` alone (never `os.environ`)."""
    url = urlsplit(settings.resolved_database_url())
    if url.scheme not in ("postgresql", "postgres"):
        raise ConfigurationError(f"VIGIL_DATABASE_URL must be postgresql://, not {url.scheme}")
    env = {
        "PERSISTENCE_MODULE": get_topic(VigilPostgresFactory),
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
        # No AGGREGATE_CACHE_MAXSIZE: the library's repository keeps no cache. Hot
        # accounts are held by the ledger itself (`accounts_in_memory_max`).
    }
    # The rest of the URL (sslmode and the certificates, above all): the library has no
    # setting for them and would connect without.
    params = dict(parse_qsl(url.query, keep_blank_values=True))
    if params:
        env[CONNECT_PARAMS] = json.dumps(params)
    cipher_keys = settings.cipher_keys_resolved()
    if cipher_keys:
        # AES-GCM from the `cryptography` package, under named keys that rotate.
        env["CIPHER_TOPIC"] = get_topic(RotatingCipher)
        env["CIPHER_KEYS"] = json.dumps(cipher_keys)
        env["CIPHER_KID"] = settings.cipher_kid
    return env


def open_ledger(
    settings: Settings,
    reply_cache: ReplyCache | None = None,
    screening: Screening | None = None,
) -> Ledger:
    """The ledger, with its tables created (once, under a lock) if missing, unless
    `migrate_on_start` is off (production: `vigil migrate` did it as the owning role).
    `screening`: what stops a movement before it posts (the command side's processes
    pass the rules file's; tools that only read pass none)."""
    canonical.install()
    options = LedgerOptions(
        mac_key=settings.audit_mac_key_resolved(),
        mac_kid=settings.audit_mac_kid,
        ceilings=money_ceilings(settings),
        retries_max=settings.command_retries_max,
        accounts_in_memory_max=settings.aggregate_cache_max,
        reply_cache=reply_cache or NoReplyCache(),
        screening=screening,
    )
    with connect(settings, "ledger-open", autocommit=True) as conn:
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
