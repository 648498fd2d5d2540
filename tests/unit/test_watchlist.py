"""The WatchlistEntry aggregate: added once, then removed and restored; refusals change
nothing; its events chain like every other aggregate's."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from uuid import uuid4

import pytest

from domain.errors import AlreadyListed, DomainError, ValidationFailed, WatchlistEntryNotFound
from domain.integrity import GENESIS_HASH, Actor, Stamp, chain_hash, mac_matches
from domain.watchlist import REASON_CHARS_MAX, WatchlistEntry, list_account, watchlist_entry_id

T0 = datetime(2026, 3, 1, 9, 0, tzinfo=UTC)
MAC_KEY = b"watchlist-test-key"
OFFICER = Actor("olivia", "compliance")
ACCOUNT = uuid4()


def stamp(minutes: int = 0) -> Stamp:
    return Stamp(OFFICER, T0 + timedelta(minutes=minutes), f"corr-{minutes}", None, MAC_KEY)


def entry_in(state: str) -> WatchlistEntry:
    entry = WatchlistEntry.add(ACCOUNT, "sanctions hit", stamp())
    if state == "removed":
        entry.remove("cleared", stamp(1))
    assert entry.listed is (state == "listed")
    return entry


def snapshot(entry: WatchlistEntry) -> dict[str, object]:
    return {k: v for k, v in entry.__dict__.items() if k != "_pending_events"}


def refuses(entry: WatchlistEntry, error: type[DomainError], command: Callable[[], object]) -> None:
    before, pending = snapshot(entry), len(entry.pending_events)
    with pytest.raises(error):
        command()
    assert snapshot(entry) == before, "a refused command changes nothing"
    assert len(entry.pending_events) == pending


ACTIONS: dict[str, Callable[[WatchlistEntry], object]] = {
    "list": lambda entry: list_account(entry, ACCOUNT, "seen again", stamp(5)),
    "restore": lambda entry: entry.restore("seen again", stamp(5)),
    "remove": lambda entry: entry.remove("cleared again", stamp(5)),
}

# state x action, written out: listed afterwards, or the refusal.
MATRIX = [
    ("listed", "list", AlreadyListed),
    ("listed", "restore", AlreadyListed),
    ("listed", "remove", False),
    ("removed", "list", True),
    ("removed", "restore", True),
    ("removed", "remove", WatchlistEntryNotFound),
]


@pytest.mark.parametrize(
    ("state", "action", "outcome"),
    [pytest.param(*row, id=f"{row[0]}-{row[1]}") for row in MATRIX],
)
def test_each_action_in_each_state_lists_unlists_or_is_refused(
    state: str, action: str, outcome: bool | type[DomainError]
) -> None:
    entry = entry_in(state)
    if isinstance(outcome, bool):
        version = entry.version
        ACTIONS[action](entry)
        assert entry.listed is outcome
        assert entry.version == version + 1
    else:
        refuses(entry, outcome, lambda: ACTIONS[action](entry))


def test_listing_an_account_never_listed_adds_an_entry_with_the_derived_id() -> None:
    account_id = uuid4()
    entry = list_account(None, account_id, "  adverse media  ", stamp())
    assert entry.id == watchlist_entry_id(account_id)
    assert (entry.listed, entry.reason, entry.account_id) == (
        True,
        "adverse media",
        str(account_id),
    )
    (event,) = entry.pending_events
    assert isinstance(event, WatchlistEntry.WatchlistEntryAdded)
    assert event.payload() == {"account_id": str(account_id), "reason": "adverse media"}


@pytest.mark.parametrize("reason", ["", "   ", "x" * (REASON_CHARS_MAX + 1)])
def test_a_missing_or_overlong_reason_is_refused(reason: str) -> None:
    with pytest.raises(ValidationFailed):
        WatchlistEntry.add(uuid4(), reason, stamp())
    listed = entry_in("listed")
    refuses(listed, ValidationFailed, lambda: listed.remove(reason, stamp(2)))
    removed = entry_in("removed")
    refuses(removed, ValidationFailed, lambda: removed.restore(reason, stamp(2)))


def history() -> WatchlistEntry:
    entry = WatchlistEntry.add(ACCOUNT, "sanctions hit", stamp())
    entry.remove("cleared", stamp(1))
    entry.restore("new hit", stamp(2))
    entry.remove("cleared again", stamp(3))
    return entry


def test_every_change_names_the_account_and_who_made_it() -> None:
    events = history().pending_events
    assert [type(e).__name__ for e in events] == [
        "WatchlistEntryAdded",
        "WatchlistEntryRemoved",
        "WatchlistEntryRestored",
        "WatchlistEntryRemoved",
    ]
    assert all(e.payload()["account_id"] == str(ACCOUNT) for e in events)
    assert all(e.actor == {"subject": "olivia", "role": "compliance"} for e in events)


def test_the_entry_rebuilt_from_its_events_equals_the_live_one() -> None:
    entry = history()
    rebuilt: WatchlistEntry | None = None
    for event in entry.collect_events():
        rebuilt = event.mutate(rebuilt)
    assert rebuilt == entry
    assert rebuilt is not None
    assert (rebuilt.listed, rebuilt.reason) == (False, "cleared again")


def test_the_entry_events_form_a_hash_chain_sealed_with_the_mac() -> None:
    entry = history()
    previous = GENESIS_HASH
    for event in entry.collect_events():
        assert event.previous_hash == previous
        assert chain_hash(event.chain_record()) == event.hash
        assert mac_matches(MAC_KEY, event.hash, event.mac)
        previous = event.hash
    assert entry.last_hash == previous
