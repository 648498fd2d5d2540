"""The group commit's loader and saver over the event store.

Loading: one query brings the accounts of a group up to date (the events stored after
the versions held in memory, all of them for an account not held) and finds the replies
already given to its command ids. Saving: the new events, their index rows and the new
replies go to the recorder as typed arguments, and it writes them in one transaction.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from typing import Any
from uuid import UUID

from eventsourcing.domain import DomainEventProtocol
from eventsourcing.persistence import Mapper, StoredEvent

from application.commands import ReplyRecord
from application.envelope import IndexRow
from application.ports import GroupRecorder, LoadedGroup
from domain.account import Account


class EventStoreGroups:
    """`GroupLoader` and `GroupSaver` over the application's mapper and recorder."""

    def __init__(self, mapper: Mapper[UUID], recorder: GroupRecorder) -> None:
        self.mapper = mapper
        self.recorder = recorder

    def load_group(
        self,
        held: Mapping[UUID, Account],
        account_ids: Collection[UUID],
        command_ids: Sequence[UUID],
    ) -> LoadedGroup:
        """The accounts among `account_ids` that exist (those `held` brought forward in
        place), and the stored replies to `command_ids`, in one round trip."""
        state = self.recorder.select_group_state(
            {i: held[i].version if i in held else 0 for i in account_ids}, command_ids
        )
        aggregates = self._mutated(dict(held), state.events)
        # An id that names a case or a watchlist entry is no account.
        accounts = {i: a for i, a in aggregates.items() if isinstance(a, Account)}
        others = {i: a for i, a in aggregates.items() if not isinstance(a, Account)}
        return LoadedGroup(accounts=accounts, replies=state.replies, others=others)

    def load_aggregates(self, aggregate_ids: Collection[UUID]) -> dict[UUID, object]:
        state = self.recorder.select_group_state(dict.fromkeys(aggregate_ids, 0), ())
        return self._mutated({}, state.events)

    def _mutated(
        self, aggregates: dict[UUID, Any], events: Sequence[StoredEvent]
    ) -> dict[UUID, Any]:
        for stored_event in events:
            event: Any = self.mapper.to_domain_event(stored_event)
            aggregate_id = stored_event.originator_id
            assert isinstance(aggregate_id, UUID)
            aggregates[aggregate_id] = event.mutate(aggregates.get(aggregate_id))
        return aggregates

    def save_group(
        self,
        events: Sequence[DomainEventProtocol[UUID]],
        index_rows: Sequence[IndexRow],
        replies: Sequence[ReplyRecord],
    ) -> None:
        """All in one transaction, or nothing (`IntegrityError` on a lost race)."""
        assert len(index_rows) == len(events), "one index row per event"
        if not events:
            assert not replies, "a reply answers for events saved with it"
            return
        stored_events = [self.mapper.to_stored_event(event) for event in events]
        self.recorder.insert_events(stored_events, index_rows=index_rows, replies=replies)
