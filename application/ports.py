"""What the application needs from infrastructure; infrastructure satisfies these
structurally, without importing them."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Protocol
from uuid import UUID

from eventsourcing.persistence import StoredEvent

from application.commands import ReplyRecord


@dataclass(frozen=True, slots=True)
class GroupState:
    """What a group needs from the store before it is judged: its aggregates' events
    after the versions it holds, and the replies already given to its command ids."""

    events: list[StoredEvent]
    replies: dict[UUID, ReplyRecord]


class ReplyStore(Protocol):
    """Replies kept in PostgreSQL, written in the same transaction as the events."""

    def select_group_state(
        self, versions: Mapping[UUID, int], command_ids: Iterable[UUID]
    ) -> GroupState: ...


class ReplyCache(Protocol):
    """A best-effort cache of committed replies. Losing it loses nothing."""

    def get_many(self, command_ids: Iterable[UUID]) -> dict[UUID, ReplyRecord]: ...

    def put_many(self, replies: Mapping[UUID, ReplyRecord]) -> None: ...


class NoReplyCache:
    """For tests and tools that run without Redis."""

    def get_many(self, command_ids: Iterable[UUID]) -> dict[UUID, ReplyRecord]:
        return {}

    def put_many(self, replies: Mapping[UUID, ReplyRecord]) -> None:
        return None
