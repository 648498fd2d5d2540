"""Rate limits: a token bucket per caller in Redis, taken in one atomic script.

A request with a valid token draws from its subject's bucket for the app's route class
(`commands` on the command API, `reads` on the query API); any other request draws from
its client address's bucket (`anonymous`), the address being the peer's, or, when the peer
is one of `VIGIL_TRUSTED_PROXIES`, the last `X-Forwarded-For` hop before them. Past the
bucket: 429 `rate_limited` with `Retry-After`; every limited reply carries `RateLimit-Limit`,
`RateLimit-Remaining` and `RateLimit-Reset`.

Redis keeps no money and decides nothing: when it does not answer (in `REDIS_TIMEOUT_S`)
the request passes, and `vigil_rate_limit_unavailable_total` counts it (fail open).

Cost: one Redis round trip (EVALSHA) per limited request; a class whose rate is 0 is off
and costs nothing. Probes and scrapes are never limited.
"""

from __future__ import annotations

import ipaddress
import math
from dataclasses import dataclass
from typing import Final

import redis.asyncio as aioredis
import structlog
from prometheus_client import Counter
from redis.exceptions import RedisError
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from infrastructure.settings import Settings
from interfaces.api.http.auth import TokenVerifier, Unauthorized
from interfaces.api.http.problems import problem_response

log = structlog.get_logger("vigil.ratelimit")

UNLIMITED_PATHS: Final = frozenset({"/health/live", "/health/ready", "/metrics"})
ANONYMOUS: Final = "anonymous"
FORWARDED_HOPS_MAX: Final = 16

# KEYS[1]: the bucket; ARGV: rate per second, burst. Redis's own clock, so that every API
# process agrees. Returns {allowed (0/1), tokens left (text), seconds until one is back}.
BUCKET_SCRIPT_LUA: Final = """
local rate = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local clock = redis.call('TIME')
local now = tonumber(clock[1]) + tonumber(clock[2]) / 1000000
local state = redis.call('HMGET', KEYS[1], 'tokens', 'at')
local tokens = tonumber(state[1]) or burst
local at = tonumber(state[2]) or now
tokens = math.min(burst, tokens + math.max(0, now - at) * rate)
local allowed = 0
local wait = 0
if tokens >= 1 then
  tokens = tokens - 1
  allowed = 1
else
  wait = (1 - tokens) / rate
end
redis.call('HSET', KEYS[1], 'tokens', tostring(tokens), 'at', tostring(now))
redis.call('PEXPIRE', KEYS[1], math.ceil(burst / rate * 1000) + 1000)
return {allowed, tostring(tokens), tostring(wait)}
"""

LIMITED = Counter(
    "vigil_rate_limited_total", "Requests refused with 429, by bucket class.", ["bucket"]
)
UNAVAILABLE = Counter(
    "vigil_rate_limit_unavailable_total",
    "Requests let through unchecked because Redis did not answer (fail open).",
)


@dataclass(frozen=True, slots=True)
class Bucket:
    rate_per_s: float
    burst: int

    @property
    def enabled(self) -> bool:
        return self.rate_per_s > 0


@dataclass(frozen=True, slots=True)
class Verdict:
    allowed: bool
    remaining: int
    wait_s: float


class RateLimiter:
    """The buckets of one app, in the Redis its settings name."""

    def __init__(self, settings: Settings, route_class: str) -> None:
        self.route_class = route_class
        if route_class == "commands":
            rate, burst = settings.rate_limit_commands_per_s, settings.rate_limit_commands_burst
        else:
            rate, burst = settings.rate_limit_reads_per_s, settings.rate_limit_reads_burst
        self.subject_bucket = Bucket(rate, burst)
        self.anonymous_bucket = Bucket(
            settings.rate_limit_anonymous_per_s, settings.rate_limit_anonymous_burst
        )
        self.prefix = f"{settings.redis_key_prefix}rl:"
        self.proxies = [ipaddress.ip_network(p, strict=False) for p in settings.trusted_proxies]
        self._settings = settings
        self._timeout_s = settings.redis_timeout_s
        self._client: aioredis.Redis | None = None
        self._script: object | None = None

    @property
    def enabled(self) -> bool:
        """Whether any of its buckets limits anything (off: the middleware is not installed)."""
        return self.subject_bucket.enabled or self.anonymous_bucket.enabled

    def _redis(self) -> aioredis.Redis:
        if self._client is None:
            # Resolved on first use: building the app needs no Redis (nor its URL).
            self._client = aioredis.Redis.from_url(
                self._settings.resolved_redis_url(),
                socket_timeout=self._timeout_s,
                socket_connect_timeout=self._timeout_s,
            )
            self._script = self._client.register_script(BUCKET_SCRIPT_LUA)
        return self._client

    async def close(self) -> None:
        if self._client is not None:
            await self._client.aclose()

    async def take(self, key: str, bucket: Bucket) -> Verdict | None:
        """One token from `key`'s bucket; None when Redis did not answer (let it pass)."""
        self._redis()
        assert self._script is not None
        try:
            allowed, tokens, wait = await self._script(  # type: ignore[operator]
                keys=[self.prefix + key], args=[bucket.rate_per_s, bucket.burst]
            )
        except (RedisError, OSError, TimeoutError) as error:
            UNAVAILABLE.inc()
            log.warning("rate_limit_unavailable", error=type(error).__name__)
            return None
        return Verdict(bool(int(allowed)), int(float(tokens)), float(wait))

    def client_address(self, scope: Scope) -> str:
        peer = (scope.get("client") or ("unknown", 0))[0]
        if not self.proxies or not self._trusted(peer):
            return str(peer)
        forwarded = _header(scope, b"x-forwarded-for")
        if forwarded is None:
            return str(peer)
        hops = [h.strip() for h in forwarded.split(",")][-FORWARDED_HOPS_MAX:]
        # From the right: the first hop that is not one of our proxies is the client.
        for hop in reversed(hops):
            if not self._trusted(hop):
                return hop
        return str(peer)

    def _trusted(self, address: str) -> bool:
        try:
            ip = ipaddress.ip_address(address)
        except ValueError:
            return False
        return any(ip in network for network in self.proxies)


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope.get("headers", ()):
        if key == name:
            return bytes(value).decode("latin-1")
    return None


def _subject(verifier: TokenVerifier, scope: Scope) -> str | None:
    authorization = _header(scope, b"authorization")
    if authorization is None or not authorization.startswith("Bearer "):
        return None
    try:
        return verifier.verify(authorization.removeprefix("Bearer ")).subject
    except Unauthorized:
        return None


class RateLimitMiddleware:
    """Draws a token before the app runs; 429 when there is none."""

    def __init__(self, app: ASGIApp, *, limiter: RateLimiter, verifier: TokenVerifier) -> None:
        self.app = app
        self.limiter = limiter
        self.verifier = verifier

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope.get("path") in UNLIMITED_PATHS:
            await self.app(scope, receive, send)
            return
        limiter = self.limiter
        # The verifier caches tokens it accepted: the route's own check costs nothing more.
        subject = _subject(self.verifier, scope)
        if subject is not None:
            bucket, name = limiter.subject_bucket, limiter.route_class
            key = f"{name}:s:{subject}"
        else:
            bucket, name = limiter.anonymous_bucket, ANONYMOUS
            key = f"{name}:{limiter.client_address(scope)}"
        if not bucket.enabled:
            await self.app(scope, receive, send)
            return
        verdict = await limiter.take(key, bucket)
        if verdict is None:
            await self.app(scope, receive, send)
            return
        headers = _rate_headers(bucket, verdict)
        if not verdict.allowed:
            LIMITED.labels(name).inc()
            retry_after_s = str(max(1, math.ceil(verdict.wait_s)))
            response = problem_response(
                "rate_limited",
                f"too many requests; retry after {retry_after_s} s",
                headers={"Retry-After": retry_after_s, **headers},
            )
            await response(scope, receive, send)
            return
        raw = [(k.lower().encode(), v.encode()) for k, v in headers.items()]

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", ()), *raw]
            await send(message)

        await self.app(scope, receive, send_with_headers)


def _rate_headers(bucket: Bucket, verdict: Verdict) -> dict[str, str]:
    reset_s = 0 if verdict.remaining >= 1 else max(1, math.ceil(verdict.wait_s))
    return {
        "RateLimit-Limit": str(bucket.burst),
        "RateLimit-Remaining": str(max(0, verdict.remaining)),
        "RateLimit-Reset": str(reset_s),
    }
