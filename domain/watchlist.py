"""The watchlist: one event-sourced entry per account that compliance watches.

An entry is added once, then removed and restored as often as compliance decides; its
events are the watchlist's history, so the rules can ask what it was at any moment
(by design: "watchlist changes event-sourced"). Every event's payload names the account.
"""

from __future__ import annotations

from typing import Any, ClassVar
from uuid import UUID

from eventsourcing.domain import Aggregate

from domain.chained import ChainedAggregate
from domain.errors import AlreadyListed, ValidationFailed, WatchlistEntryNotFound
from domain.ids import watchlist_entry_id
from domain.integrity import Stamp

__all__ = ["REASON_CHARS_MAX", "WatchlistEntry", "list_account", "watchlist_entry_id"]

REASON_CHARS_MAX = 500


class WatchlistEntry(ChainedAggregate):
    """Whether one account is on the watchlist, and why."""

    class Event(ChainedAggregate.Event):
        PAYLOAD = ("account_id", "reason")
        LISTED: ClassVar[bool] = True

        account_id: str
        reason: str

        def apply(self, aggregate: Any) -> None:
            super().apply(aggregate)
            aggregate.listed = self.LISTED
            aggregate.reason = self.reason

    class WatchlistEntryAdded(Event, Aggregate.Created):
        pass

    class WatchlistEntryRemoved(Event):
        LISTED = False

    class WatchlistEntryRestored(Event):
        pass

    def __init__(self, account_id: str, reason: str, hash: str) -> None:
        self.account_id = account_id
        self.reason = reason
        self.listed = True
        self.last_hash = hash

    @classmethod
    def add(cls, account_id: UUID, reason: str, stamp: Stamp) -> WatchlistEntry:
        fields = {"account_id": str(account_id), "reason": _reason(reason)}
        return cls._start(cls.WatchlistEntryAdded, watchlist_entry_id(account_id), fields, stamp)

    def restore(self, reason: str, stamp: Stamp) -> None:
        reason = _reason(reason)
        if self.listed:
            raise AlreadyListed(f"account {self.account_id} is already on the watchlist")
        self._trigger(self.WatchlistEntryRestored, stamp, account_id=self.account_id, reason=reason)

    def remove(self, reason: str, stamp: Stamp) -> None:
        reason = _reason(reason)
        if not self.listed:
            raise WatchlistEntryNotFound(f"account {self.account_id} is not on the watchlist")
        self._trigger(self.WatchlistEntryRemoved, stamp, account_id=self.account_id, reason=reason)


def list_account(
    entry: WatchlistEntry | None, account_id: UUID, reason: str, stamp: Stamp
) -> WatchlistEntry:
    """Put an account on the watchlist: a new entry, or the old one restored."""
    if entry is None:
        return WatchlistEntry.add(account_id, reason, stamp)
    assert entry.account_id == str(account_id), "an entry's id is derived from its account"
    entry.restore(reason, stamp)
    return entry


def _reason(reason: str) -> str:
    reason = reason.strip()
    if not reason or len(reason) > REASON_CHARS_MAX:
        raise ValidationFailed(f"reason must be 1 to {REASON_CHARS_MAX} characters", "body.reason")
    return reason
