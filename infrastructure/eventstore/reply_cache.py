"""Committed command replies cached in Redis. Best effort: a Redis outage costs one
PostgreSQL query per command, never a wrong answer (replies never change once committed)."""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping
from uuid import UUID

import orjson
import redis
import structlog

from application.commands import ReplyRecord

log = structlog.get_logger(__name__)

# After a failure, leave Redis alone for a moment instead of paying its timeout per request.
_BACKOFF_S = 2.0


class RedisReplyCache:
    def __init__(self, client: redis.Redis, *, prefix: str, ttl_s: int) -> None:
        self.client = client
        self.prefix = prefix
        self.ttl_s = ttl_s
        self._down_until = 0.0

    @classmethod
    def from_url(cls, url: str, *, prefix: str, ttl_s: int, timeout_s: float) -> RedisReplyCache:
        client = redis.Redis.from_url(
            url, socket_timeout=timeout_s, socket_connect_timeout=timeout_s, retry_on_timeout=False
        )
        return cls(client, prefix=prefix, ttl_s=ttl_s)

    def _key(self, command_id: UUID) -> str:
        return f"{self.prefix}reply:{command_id}"

    def get_many(self, command_ids: Iterable[UUID]) -> dict[UUID, ReplyRecord]:
        ids = list(command_ids)
        if not ids or time.monotonic() < self._down_until:
            return {}
        try:
            raw = self.client.mget([self._key(i) for i in ids])
        except redis.RedisError as error:
            self._mark_down(error)
            return {}
        found: dict[UUID, ReplyRecord] = {}
        for command_id, value in zip(ids, raw, strict=True):
            if value is None:
                continue
            data = orjson.loads(value)
            found[command_id] = ReplyRecord(
                command_id=command_id,
                kind=data["kind"],
                subject=data["subject"],
                fingerprint=data["fingerprint"],
                body=data["body"],
            )
        return found

    def put_many(self, replies: Mapping[UUID, ReplyRecord]) -> None:
        if not replies or time.monotonic() < self._down_until:
            return
        try:
            pipe = self.client.pipeline(transaction=False)
            for command_id, reply in replies.items():
                value = orjson.dumps(
                    {
                        "kind": reply.kind,
                        "subject": reply.subject,
                        "fingerprint": reply.fingerprint,
                        "body": reply.body,
                    }
                )
                # The raw command: redis-py's `set` inspects its arguments on every call.
                pipe.execute_command(  # type: ignore[no-untyped-call]
                    "SET", self._key(command_id), value, "EX", self.ttl_s
                )
            pipe.execute()
        except redis.RedisError as error:
            self._mark_down(error)

    def ping(self) -> bool:
        try:
            return bool(self.client.ping())
        except redis.RedisError:
            return False

    def _mark_down(self, error: Exception) -> None:
        self._down_until = time.monotonic() + _BACKOFF_S
        log.warning("reply_cache_unavailable", error=type(error).__name__)
