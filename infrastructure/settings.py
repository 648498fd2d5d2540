"""The one settings object. Nothing else in Vigil reads the environment.

Settings come from `VIGIL_*` environment variables. What is left unset falls back,
in development only, to what `vigil up` keeps under `var/`: the URLs of its
embedded servers (`var/up.json`) and its development secrets (`var/dev-keys.json`).
"""

from __future__ import annotations

import importlib.util
import ipaddress
import json
import math
import os
import secrets
from collections import Counter
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from infrastructure.limits import check_money_ceilings

DEV_KEYS_FILE = "dev-keys.json"
UP_FILE = "up.json"
# A production secret: at least this long, and at least this many bits by the Shannon
# estimate of its characters (`aaaa...` has none; 32 random bytes, hex or base64, ~200).
KEY_CHARS_MIN = 32
KEY_ENTROPY_BITS_MIN = 128


TokenAlgorithm = Literal["HS256", "RS256", "ES256"]
TOKEN_ALGORITHMS: tuple[TokenAlgorithm, ...] = ("HS256", "RS256", "ES256")


class ConfigurationError(RuntimeError):
    """Settings that cannot work: refuse to start rather than run wrong."""


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="VIGIL_", extra="ignore", frozen=True)

    env: Literal["development", "production"] = "development"
    var_dir: Path = Path("var")
    host: str = "127.0.0.1"

    database_url: str | None = None
    redis_url: str | None = None
    kafka_bootstrap: str | None = None
    redis_key_prefix: str = "vigil:"

    command_port: int = Field(default=8000, ge=0, le=65535)
    query_port: int = Field(default=8001, ge=0, le=65535)
    # Where the console (served by the query API) sends the commands of its forms; unset:
    # the command API on this host and `command_port`.
    command_api_url: str | None = None
    # The console's sign-in through the identity provider (authorization code with PKCE):
    # its authorization and token endpoints and the console's client id. Unset: sign in by
    # pasting a token. The tokens it returns are verified like any (VIGIL_JWKS_URL, ...).
    console_authorize_url: str | None = None
    console_token_url: str | None = None
    console_client_id: str | None = None
    workers_metrics_port: int = Field(default=9101, ge=0, le=65535)
    relay_metrics_port: int = Field(default=9102, ge=0, le=65535)
    case_opener_metrics_port: int = Field(default=9103, ge=0, le=65535)

    jwt_secret: SecretStr | None = None
    jwt_keys: dict[str, SecretStr] | None = None
    jwt_kid: str = "dev"
    jwt_issuer: str = "vigil"
    jwt_audience: str = "vigil-api"
    jwt_leeway_s: int = Field(default=0, ge=0, le=300)
    token_ttl_s_default: int = Field(default=3600, gt=0)
    # The longest `exp - iat` a token may have, whoever signed it.
    jwt_lifetime_max_s: int = Field(default=86_400, gt=0, le=31_536_000)
    # The identity provider's keys: a JWKS URL (fetched, cached) and/or PEM public key
    # files by kid; the algorithms accepted (production refuses HS256 unless waived); which
    # claims carry the role (a string, or a list such as `groups`) and the branch, and how
    # the provider's values map onto Vigil's roles (empty: the claim holds the role).
    jwks_url: str | None = None
    # An unknown kid fetches the JWKS again at most this often (it is also refreshed hourly).
    jwks_refetch_interval_s: float = Field(default=30, ge=0.1, le=3_600)
    jwt_public_key_files: dict[str, Path] = Field(default_factory=dict)
    jwt_algorithms: list[TokenAlgorithm] = Field(
        default_factory=lambda: list(TOKEN_ALGORITHMS), min_length=1
    )
    jwt_role_claim: str = "role"
    jwt_role_map: dict[str, Literal["teller", "admin", "auditor", "compliance", "viewer"]] = Field(
        default_factory=dict
    )
    jwt_branch_claim: str = "branch"
    jwt_hs256_in_production: bool = False

    # Ceilings in major units of any currency; `limits` says how they must relate.
    amount_max: int = Field(default=100_000_000, gt=0)
    overdraft_max: int = Field(default=100_000_000, ge=0)
    teller_overdraft_max: int = Field(default=10_000, ge=0)
    balance_max: int = Field(default=1_000_000_000_000, gt=0)
    body_max_bytes: int = Field(default=1_048_576, gt=0)
    batch_items_max: int = Field(default=1000, gt=0, le=10_000)

    # How every Kafka client reaches the broker (producers, consumers, admin clients).
    kafka_security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = "PLAINTEXT"
    # AWS_MSK_IAM: OAUTHBEARER with tokens signed by the pod's AWS credentials (IRSA), for
    # MSK with IAM access control; needs the `msk-iam` extra and a region, no password.
    kafka_sasl_mechanism: (
        Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512", "AWS_MSK_IAM"] | None
    ) = None
    kafka_aws_region: str | None = Field(default=None, pattern=r"^[a-z]{2}(-[a-z]+)+-\d$")
    kafka_sasl_username: str | None = None
    kafka_sasl_password: SecretStr | None = None
    kafka_ssl_cafile: Path | None = None
    # Production: transport TLS to Kafka, PostgreSQL and Redis; false waives it explicitly
    # (logged at start and listed by /health/ready).
    tls_required: bool = True

    topic_prefix: str = ""
    topic_partitions: int = Field(default=12, gt=0)
    # Copies of each partition the relay asks for when it creates a topic (3 in production:
    # one broker may fail without losing an acknowledged event), and how many must have a
    # write before it is acknowledged (0: one fewer than the copies, at least 1).
    topic_replication_factor: int = Field(default=1, ge=1, le=16)
    topic_min_insync_replicas: int = Field(default=0, ge=0, le=16)

    group_commit_window_ms: float = Field(default=2, ge=0)
    # While concurrent commands keep arriving, a group gathers until at least this long
    # after the previous one closed: fewer, larger transactions under load. 0: no pacing.
    group_commit_interval_ms: float = Field(default=10, ge=0, le=1_000)
    group_commit_max: int = Field(default=1000, gt=0)
    # The money routes served past FastAPI's router and general dependency solver (same
    # replies, a third less of the command API's time per single command); off: the usual way.
    fast_routes: bool = True
    command_retries_max: int = Field(default=8, ge=1, le=100)

    db_pool_size: int = Field(default=8, gt=0)
    # The query API's pool: how long a request waits for a connection, how many may wait.
    query_pool_wait_s: float = Field(default=5.0, gt=0, le=60)
    query_pool_waiting_max: int = Field(default=1_000, ge=0, le=100_000)
    aggregate_cache_max: int = Field(default=50_000, gt=0)
    db_connect_timeout_s: int = Field(default=5, gt=0)
    redis_timeout_s: float = Field(default=0.25, gt=0)
    reply_cache_ttl_s: int = Field(default=86_400, gt=0)

    # The relay: events read, sent and recorded together; the wait when a NOTIFY was
    # missed; how often it checks the broker still has its log; the backoff of a broker
    # or store outage; how often a second relay polls for the lock. The alerts outbox
    # relay, in the same process, shares the backoff and the lock retry.
    relay_batch_events_max: int = Field(default=1_000, ge=1, le=100_000)
    relay_poll_interval_s: float = Field(default=1.0, gt=0, le=60)
    relay_gather_s: float = Field(default=0.15, ge=0, le=1)
    relay_health_interval_s: float = Field(default=2.0, gt=0, le=300)
    relay_backoff_s_min: float = Field(default=0.1, gt=0, le=60)
    relay_backoff_s_max: float = Field(default=2.0, gt=0, le=300)
    relay_lock_retry_s: float = Field(default=1.0, gt=0, le=60)
    outbox_batch_events_max: int = Field(default=500, ge=1, le=100_000)
    outbox_poll_interval_s: float = Field(default=1.0, gt=0, le=60)
    # How long an alert the case opener has routed stays in the outbox (a broker that lost
    # its log is sent again every alert still there); then it is deleted.
    outbox_retention_h: float = Field(default=168, gt=0, le=87_600)
    # Records one fetch may bring. A projection batch is one transaction per projection,
    # applied with a fixed number of statements: when the projections lag, the bigger the
    # batch the sooner they catch up; when they keep up, batches hold only what arrived
    # meanwhile. Enough for a whole round of fetches over the partitions, taken together.
    projections_fetch_records_max: int = Field(default=10_000, ge=1, le=100_000)
    case_opener_fetch_records_max: int = Field(default=500, ge=1, le=100_000)
    # The least time between the starts of two batches of a read model that does not set
    # the workers' pace (statements, KPIs, cases, watchlist: not the balances or alerts,
    # which apply every fetch): each of its batches is a transaction whatever it holds, so
    # under load it applies what queued meanwhile together. 0: every fetch, as the others.
    read_models_apply_interval_s: float = Field(default=0.5, ge=0, le=10)
    # How often the case opener's sweep expires pending holds past their `expires_at`:
    # a hold is expired at most this late.
    hold_sweep_interval_s: float = Field(default=5.0, gt=0, le=3600)
    # How long a transfer screening holds for review waits for compliance (30 days at most,
    # the longest a hold may last).
    screening_review_timeout_s: int = Field(default=259_200, ge=1, le=2_592_000)

    rules_config: Path | None = None
    checkpoint_interval_s: float = Field(default=1, gt=0)
    checkpoint_file: Path | None = None
    signing_key_file: Path | None = None
    # Retired (and current) public keys, `*.pub` PEM: default var/signing-keys.
    signing_public_keys_dir: Path | None = None
    audit_mac_key: SecretStr | None = None
    # Keys that rotate: {kid: key}; AUDIT_MAC_KID names the one that seals new events
    # (each event records its kid, so old events verify with the key that sealed them).
    # A single AUDIT_MAC_KEY is the key of that kid.
    audit_mac_keys: dict[str, SecretStr] | None = None
    audit_mac_kid: str = Field(default="default", pattern=r"^[A-Za-z0-9._-]{1,64}$")
    cipher_key: SecretStr | None = None
    # Keys that rotate: {kid: base64 AES key}; CIPHER_KID names the one new events use
    # (each event records it); a single CIPHER_KEY is the key of that kid.
    cipher_keys: dict[str, SecretStr] | None = None
    cipher_kid: str = Field(default="default", pattern=r"^[A-Za-z0-9._-]{1,64}$")
    cipher_off_in_production: bool = False
    # Production runs `vigil migrate` as the owning role, and the services with this off.
    migrate_on_start: bool = True
    export_dir: Path | None = None  # default var/exports
    verify_page_events: int = Field(default=5_000, gt=0)

    # Past this, the query API's readiness lists a projection as lagging (still 200).
    projection_lag_degraded_s: float = Field(default=30.0, gt=0, le=86_400)

    # Rate limits: token buckets in Redis (0 per second: off). Per subject and route class
    # (commands on the command API, reads on the query API), and per client address for
    # requests without a valid token; `X-Forwarded-For` counts only from TRUSTED_PROXIES.
    rate_limit_commands_per_s: float = Field(default=0, ge=0)
    rate_limit_commands_burst: int = Field(default=200, ge=1)
    rate_limit_reads_per_s: float = Field(default=0, ge=0)
    rate_limit_reads_burst: int = Field(default=400, ge=1)
    rate_limit_anonymous_per_s: float = Field(default=5, ge=0)
    rate_limit_anonymous_burst: int = Field(default=50, ge=1)
    trusted_proxies: list[str] = Field(default_factory=list)
    # Connections one API process serves at once (more get 503 from uvicorn), and how long
    # a request may take to arrive, headers and body (slow senders are cut off).
    http_concurrency_max: int = Field(default=2_000, ge=1)
    request_receive_timeout_s: float = Field(default=30, gt=0, le=600)

    # `/docs` and `/openapi.json`: on in development, off in production unless set true.
    api_docs: bool | None = None
    # The bearer token a Prometheus scrape of an API's `/metrics` must carry (production
    # requires one); without it, development serves `/metrics` to anyone who can connect.
    metrics_token: SecretStr | None = None

    log_level: str = "INFO"

    @field_validator("trusted_proxies")
    @classmethod
    def _proxies_are_networks(cls, value: list[str]) -> list[str]:
        for network in value:
            try:
                ipaddress.ip_network(network, strict=False)
            except ValueError:
                raise ValueError(f"{network!r} is not an IP address or network") from None
        return value

    @field_validator("topic_prefix")
    @classmethod
    def _topic_prefix_is_plain(cls, value: str) -> str:
        if any(c.isspace() for c in value):
            raise ValueError("topic prefix must not contain whitespace")
        return value

    @model_validator(mode="after")
    def _relay_backoff_is_a_range(self) -> Settings:
        if self.relay_backoff_s_min > self.relay_backoff_s_max:
            raise ValueError(
                f"VIGIL_RELAY_BACKOFF_S_MIN ({self.relay_backoff_s_min}) must be at most "
                f"VIGIL_RELAY_BACKOFF_S_MAX ({self.relay_backoff_s_max})"
            )
        return self

    @model_validator(mode="after")
    def _mac_kid_names_a_key(self) -> Settings:
        if self.audit_mac_keys and self.audit_mac_kid not in self.audit_mac_keys:
            raise ValueError(
                f"VIGIL_AUDIT_MAC_KID names {self.audit_mac_kid!r}, which "
                "VIGIL_AUDIT_MAC_KEYS does not hold"
            )
        if self.audit_mac_keys and self.audit_mac_key is not None:
            raise ValueError("give VIGIL_AUDIT_MAC_KEY or VIGIL_AUDIT_MAC_KEYS, not both")
        if self.cipher_keys and self.cipher_kid not in self.cipher_keys:
            raise ValueError(
                f"VIGIL_CIPHER_KID names {self.cipher_kid!r}, which VIGIL_CIPHER_KEYS does not hold"
            )
        if self.cipher_keys and self.cipher_key is not None:
            raise ValueError("give VIGIL_CIPHER_KEY or VIGIL_CIPHER_KEYS, not both")
        return self

    @model_validator(mode="after")
    def _kafka_sasl_is_whole(self) -> Settings:
        sasl = self.kafka_security_protocol.startswith("SASL_")
        if self.kafka_sasl_mechanism == "AWS_MSK_IAM":
            return self._kafka_msk_iam_is_whole()
        given = (self.kafka_sasl_mechanism, self.kafka_sasl_username, self.kafka_sasl_password)
        if sasl and any(value is None for value in given):
            raise ValueError(
                f"VIGIL_KAFKA_SECURITY_PROTOCOL={self.kafka_security_protocol} needs "
                "VIGIL_KAFKA_SASL_MECHANISM, VIGIL_KAFKA_SASL_USERNAME and "
                "VIGIL_KAFKA_SASL_PASSWORD"
            )
        return self

    def _kafka_msk_iam_is_whole(self) -> Settings:
        if self.kafka_security_protocol != "SASL_SSL":
            raise ValueError("VIGIL_KAFKA_SASL_MECHANISM=AWS_MSK_IAM needs SASL_SSL")
        if self.kafka_aws_region is None:
            raise ValueError(
                "VIGIL_KAFKA_SASL_MECHANISM=AWS_MSK_IAM needs VIGIL_KAFKA_AWS_REGION (the "
                "MSK cluster's region, e.g. eu-west-2)"
            )
        if importlib.util.find_spec("aws_msk_iam_sasl_signer") is None:
            raise ValueError(
                "VIGIL_KAFKA_SASL_MECHANISM=AWS_MSK_IAM needs AWS's token signer: "
                "pip install 'vigil[msk-iam]' (the image: --build-arg VIGIL_EXTRAS=msk-iam)"
            )
        return self

    @model_validator(mode="after")
    def _insync_within_replicas(self) -> Settings:
        if self.topic_min_insync_replicas > self.topic_replication_factor:
            raise ValueError(
                "VIGIL_TOPIC_MIN_INSYNC_REPLICAS cannot exceed VIGIL_TOPIC_REPLICATION_FACTOR "
                "(no write could ever be acknowledged)"
            )
        return self

    def min_insync_replicas(self) -> int:
        """min.insync.replicas of the topics the relay creates."""
        if self.topic_min_insync_replicas:
            return self.topic_min_insync_replicas
        return max(1, self.topic_replication_factor - 1)

    @model_validator(mode="after")
    def _money_ceilings_relate(self) -> Settings:
        check_money_ceilings(
            self.amount_max, self.overdraft_max, self.teller_overdraft_max, self.balance_max
        )
        return self

    @model_validator(mode="after")
    def _production_refuses_dev_keys(self) -> Settings:
        """Production starts only with everything it needs, and says at once all that is
        missing or too weak (one error, every item named), not one item per try."""
        if self.env != "production":
            return self
        problems = [*self._production_token_keys(), *self._production_secrets()]
        if self.database_url is None:
            problems.append("VIGIL_DATABASE_URL")
        if self.signing_key_file is None:
            problems.append("VIGIL_SIGNING_KEY_FILE (the Ed25519 key that signs checkpoints)")
        elif not self.signing_key_file.is_file():
            problems.append(f"VIGIL_SIGNING_KEY_FILE: no file at {self.signing_key_file}")
        if self.tls_required:
            untls = self.plaintext_transports()
            if untls:
                problems.append(
                    f"TLS to {', '.join(untls)} (VIGIL_KAFKA_SECURITY_PROTOCOL SSL or SASL_SSL,"
                    " sslmode=verify-full in VIGIL_DATABASE_URL, rediss:// in"
                    " VIGIL_REDIS_URL), or VIGIL_TLS_REQUIRED=false to waive it"
                )
        if problems:
            raise ValueError("production needs: " + "; ".join(problems))
        return self

    def _production_secrets(self) -> list[str]:
        problems = []
        if self.audit_mac_key is None and not self.audit_mac_keys:
            problems.append("VIGIL_AUDIT_MAC_KEY or VIGIL_AUDIT_MAC_KEYS")
        if self.cipher_key is None and not self.cipher_keys and not self.cipher_off_in_production:
            # Encryption at rest is on in production unless someone says, in writing, no.
            problems.append("VIGIL_CIPHER_KEY (or VIGIL_CIPHER_OFF_IN_PRODUCTION=true)")
        if self.metrics_token is None:
            problems.append("VIGIL_METRICS_TOKEN (the bearer of /metrics)")
        strengths: list[tuple[str, str]] = []
        if self.audit_mac_key is not None or self.audit_mac_keys:
            strengths += [
                (f"the audit MAC key {kid!r}", key.decode())
                for kid, key in self.audit_mac_keys_resolved().items()
            ]
        strengths += [
            (f"the cipher key {kid!r}", key) for kid, key in self.cipher_keys_resolved().items()
        ]
        strengths += [(f"the JWT key {kid!r}", key) for kid, key in self._jwt_secrets().items()]
        if self.metrics_token is not None:
            strengths.append(("VIGIL_METRICS_TOKEN", self.metrics_token.get_secret_value()))
        for what, secret in strengths:
            try:
                strong_enough(what, secret)
            except ValueError as error:
                problems.append(str(error).removeprefix("production needs "))
        return problems

    def _production_token_keys(self) -> list[str]:
        """Production verifies the identity provider's signatures; shared HMAC secrets
        only when waived in writing (VIGIL_JWT_HS256_IN_PRODUCTION=true)."""
        hs256 = "HS256" in self.jwt_algorithms and self.jwt_keys_given()
        if hs256 and not self.jwt_hs256_in_production:
            return [
                "the identity provider's keys (production refuses HS256 tokens): VIGIL_JWKS_URL"
                ' or VIGIL_JWT_PUBLIC_KEY_FILES with VIGIL_JWT_ALGORITHMS ["RS256"] or'
                ' ["ES256"], or HS256 waived with VIGIL_JWT_HS256_IN_PRODUCTION=true'
            ]
        if not hs256 and not (self.jwks_url or self.jwt_public_key_files):
            return [
                "VIGIL_JWKS_URL or VIGIL_JWT_PUBLIC_KEY_FILES (or VIGIL_JWT_KEYS with"
                " VIGIL_JWT_HS256_IN_PRODUCTION=true)"
            ]
        if self.jwks_url and not self.jwks_url.startswith("https://"):
            return ["VIGIL_JWKS_URL over https (production fetches it over https only)"]
        return []

    def tls_waived(self) -> list[str]:
        """Production reaching a server without TLS because VIGIL_TLS_REQUIRED=false said
        so: what every process logs at start and lists in /health/ready."""
        plain = self.plaintext_transports() if self.env == "production" else []
        if not plain or self.tls_required:
            return []
        return [f"transport TLS waived (VIGIL_TLS_REQUIRED=false): {', '.join(plain)} in plaintext"]

    def plaintext_transports(self) -> list[str]:
        """The servers this process would reach without TLS (empty: all encrypted)."""
        plain = []
        if self.kafka_security_protocol not in ("SSL", "SASL_SSL"):
            plain.append("Kafka")
        if self.database_url and not any(
            f"sslmode={mode}" in self.database_url
            for mode in ("require", "verify-ca", "verify-full")
        ):
            plain.append("PostgreSQL")
        if self.redis_url and not self.redis_url.startswith("rediss://"):
            plain.append("Redis")
        return plain

    def docs_served(self) -> bool:
        return self.env != "production" if self.api_docs is None else self.api_docs

    def _jwt_secrets(self) -> dict[str, str]:
        if self.jwt_keys:
            return {kid: s.get_secret_value() for kid, s in self.jwt_keys.items()}
        if self.jwt_secret is not None:
            return {self.jwt_kid: self.jwt_secret.get_secret_value()}
        return {}

    # Resolution of what was left unset ------------------------------------------------

    def up_file(self) -> Path:
        return self.var_dir / UP_FILE

    def read_up_file(self) -> dict[str, Any] | None:
        path = self.up_file()
        if not path.exists():
            return None
        try:
            data: dict[str, Any] = json.loads(path.read_text())
        except (OSError, ValueError):
            return None
        return data

    def resolved_command_api_url(self) -> str:
        if self.command_api_url:
            return self.command_api_url.rstrip("/")
        host = "127.0.0.1" if self.host in ("", "0.0.0.0", "::") else self.host
        return f"http://{host}:{self.command_port}"

    def resolved_database_url(self) -> str:
        return self._resolved_url(self.database_url, "database_url", "VIGIL_DATABASE_URL")

    def resolved_redis_url(self) -> str:
        return self._resolved_url(self.redis_url, "redis_url", "VIGIL_REDIS_URL")

    def resolved_kafka_bootstrap(self) -> str:
        return self._resolved_url(self.kafka_bootstrap, "kafka_bootstrap", "VIGIL_KAFKA_BOOTSTRAP")

    def _resolved_url(self, value: str | None, key: str, variable: str) -> str:
        if value:
            return value
        up = self.require_up(variable)
        if up.get(key):
            return str(up[key])
        raise ConfigurationError(f"{variable} is not set and {self.up_file()} names no {key}")

    def require_up(self, variable: str) -> dict[str, Any]:
        """The running `vigil up`'s up.json, for a setting left unset; refused without one."""
        up = self.read_up_file()
        if up is None:
            raise ConfigurationError(
                f"{variable} is not set and no `vigil up` is running here "
                f"({self.up_file()} missing)"
            )
        return up

    def jwt_keys_given(self) -> bool:
        return bool(self._jwt_secrets())

    def hs256_keys(self) -> dict[str, str]:
        """The HMAC keys tokens may be verified with: those given; in development the dev
        key too when nothing else is configured; none in production otherwise."""
        if self.jwt_keys_given():
            return self._jwt_secrets()
        if self.env == "production" or self.jwks_url or self.jwt_public_key_files:
            return {}
        return self.jwt_keys_resolved()

    def jwt_keys_resolved(self) -> dict[str, str]:
        """kid -> secret. Development falls back to the dev key `vigil up` keeps in var/."""
        keys = self._jwt_secrets()
        if keys:
            return keys
        return {self.jwt_kid: self.dev_keys()["jwt_secret"]}

    def cipher_keys_resolved(self) -> dict[str, str]:
        """kid -> base64 AES key; empty: events are not encrypted."""
        if self.cipher_keys:
            return {kid: key.get_secret_value() for kid, key in self.cipher_keys.items()}
        if self.cipher_key is not None:
            return {self.cipher_kid: self.cipher_key.get_secret_value()}
        return {}

    def audit_mac_key_resolved(self) -> bytes:
        """The key that seals new events (`audit_mac_kid`'s)."""
        return self.audit_mac_keys_resolved()[self.audit_mac_kid]

    def audit_mac_keys_resolved(self) -> dict[str, bytes]:
        """kid -> MAC key, every key events may have been sealed with."""
        if self.audit_mac_keys:
            return {kid: k.get_secret_value().encode() for kid, k in self.audit_mac_keys.items()}
        if self.audit_mac_key is not None:
            return {self.audit_mac_kid: self.audit_mac_key.get_secret_value().encode()}
        return {self.audit_mac_kid: self.dev_keys()["audit_mac_key"].encode()}

    def dev_keys(self) -> dict[str, str]:
        """The development secrets in var/dev-keys.json, made on first use (mode 0600)."""
        if self.env == "production":
            raise ConfigurationError("production refuses development keys")
        path = self.var_dir / DEV_KEYS_FILE
        if path.exists():
            data: dict[str, str] = json.loads(path.read_text())
            return data
        self.var_dir.mkdir(parents=True, exist_ok=True)
        data = {
            "jwt_secret": secrets.token_urlsafe(48),
            "audit_mac_key": secrets.token_urlsafe(48),
        }
        write_once(path, json.dumps(data).encode())
        winner: dict[str, str] = json.loads(path.read_text())
        return winner


def entropy_bits(secret: str) -> float:
    """The Shannon estimate of a secret's information: its length times the entropy of
    its characters' frequencies. A lower bound for nothing, but repeated and short keys
    score low, which is what it is for."""
    counts = Counter(secret)
    total = len(secret)
    per_char = -sum(n / total * math.log2(n / total) for n in counts.values())
    return per_char * total


def strong_enough(name: str, secret: str) -> None:
    """ValueError (naming the setting, never the value) for a key too weak for production."""
    if len(secret) < KEY_CHARS_MIN:
        raise ValueError(f"production needs {name} of at least {KEY_CHARS_MIN} characters")
    if entropy_bits(secret) < KEY_ENTROPY_BITS_MIN:
        raise ValueError(
            f"production needs {name} to be random (at least {KEY_ENTROPY_BITS_MIN} bits); "
            "make one with `python -c 'import secrets; print(secrets.token_urlsafe(48))'`"
        )


def describe_errors(error: ValidationError) -> str:
    """A validation error in the settings' own names, without the values given: pydantic's
    message would quote the input (`input_value=...`), secrets included."""
    lines = []
    for problem in error.errors(include_url=False, include_input=False, include_context=False):
        field = ".".join(str(part) for part in problem["loc"])
        message = str(problem["msg"]).removeprefix("Value error, ")
        lines.append(f"VIGIL_{field.upper()}: {message}" if field else message)
    return "invalid settings: " + "; ".join(lines)


def write_once(path: Path, content: bytes) -> None:
    """Create `path` (mode 0600) with `content`, unless it exists: of processes racing to
    make it, whichever file lands first is kept, whole (written aside, then linked)."""
    tmp = path.with_suffix(f".{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as out:
        out.write(content)
    try:
        os.link(tmp, path)
    except FileExistsError:
        pass
    finally:
        tmp.unlink()


def load_settings(**overrides: Any) -> Settings:
    """Build the settings once, at startup, and pass them down."""
    try:
        return Settings(**overrides)
    except ValidationError as error:
        raise ConfigurationError(describe_errors(error)) from None
    except ValueError as error:
        # pydantic-settings' own parse errors name the variable, not its value.
        raise ConfigurationError(str(error)) from None
