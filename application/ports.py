"""What the application needs from infrastructure; infrastructure satisfies these
structurally, without importing them."""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol
from uuid import UUID

from eventsourcing.domain import DomainEventProtocol
from eventsourcing.persistence import StoredEvent

from application.commands import ReplyRecord
from application.envelope import IndexRow
from domain.account import Account


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

    def select_first_events(self, originator_ids: Sequence[UUID]) -> list[StoredEvent]:
        """The first event (version 1) of each of these aggregates that exists."""
        ...


class GroupRecorder(ReplyStore, Protocol):
    """The event store's recorder as the group commit uses it: one query to load a group,
    one transaction to save it (events, their index rows, replies)."""

    def insert_events(
        self,
        stored_events: Sequence[StoredEvent],
        *,
        index_rows: Sequence[IndexRow] = (),
        replies: Sequence[ReplyRecord] = (),
    ) -> Sequence[int] | None: ...


@dataclass(frozen=True, slots=True)
class LoadedGroup:
    """A group's accounts, up to date with the store, and the replies already stored for
    its command ids."""

    accounts: dict[UUID, Account]
    replies: dict[UUID, ReplyRecord]
    # Other aggregates the group reads or changes (watchlist entries, cases), by id.
    others: dict[UUID, object] = field(default_factory=dict)


class GroupLoader(Protocol):
    """Brings a group's accounts and replies up to date, in one query."""

    def load_aggregates(self, aggregate_ids: Collection[UUID]) -> dict[UUID, object]:
        """Those of these aggregates that exist, of any kind, from all their events."""
        ...

    def load_group(
        self,
        held: Mapping[UUID, Account],
        account_ids: Collection[UUID],
        command_ids: Sequence[UUID],
    ) -> LoadedGroup: ...


class GroupSaver(Protocol):
    """Saves new events, their index rows and new replies in one transaction: all or
    nothing (`IntegrityError` when another writer took a version or a command id)."""

    def save_group(
        self,
        events: Sequence[DomainEventProtocol[UUID]],
        index_rows: Sequence[IndexRow],
        replies: Sequence[ReplyRecord],
    ) -> None: ...


class ReplyCache(Protocol):
    """A best-effort cache of committed replies, filled by the look-ups that read them (a
    hold's, a transfer to reverse). Losing it loses nothing."""

    def get_many(self, command_ids: Iterable[UUID]) -> dict[UUID, ReplyRecord]: ...

    def put_many(self, replies: Mapping[UUID, ReplyRecord]) -> None: ...


class NoReplyCache:
    """For tests and tools that run without Redis."""

    def get_many(self, command_ids: Iterable[UUID]) -> dict[UUID, ReplyRecord]:
        return {}

    def put_many(self, replies: Mapping[UUID, ReplyRecord]) -> None:
        return None
