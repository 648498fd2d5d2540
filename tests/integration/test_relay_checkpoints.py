"""The checkpointer beside the relay, on real PostgreSQL and a real broker: it folds the
hashes of the events the relay has just read instead of reading each event a second time,
reads from the store whatever the relay has not handed over, and signs what the store
holds either way."""

from __future__ import annotations

from typing import Any

import pytest

from application.ledger import Ledger
from infrastructure.audit.checkpoints import ROLLING_GENESIS, CheckpointWriter, HashFeed, fold
from infrastructure.audit.signing import Signer
from infrastructure.audit.verify import verify_store
from infrastructure.relay.events import Relay, RelayLimits
from infrastructure.settings import Settings
from tests.integration.test_relay import (  # the relay's fixtures and helpers
    RelayThread,
    caught_up,
    ledger,
    move_money,
    open_accounts,
    settings,
    stored_envelopes,
    wait_until,
)

__all__ = ["ledger", "settings"]  # fixtures, used by name

pytestmark = pytest.mark.integration


def checkpoint_with(settings: Settings, ledger: Ledger, feed: HashFeed) -> tuple[Any, int]:
    """A checkpoint over every event after the last one; how many events the feed gave."""
    writer = CheckpointWriter(settings, ledger, Signer.from_settings(settings), feed=feed)
    try:
        assert writer.try_lock()
        assert writer.resume()
        return writer.write_next(), writer.fed_events
    finally:
        writer.close()


def store_fold(ledger: Ledger) -> tuple[int, str]:
    """The head and the rolling hash of every stored event, as the checkpoints define it."""
    expected = stored_envelopes(ledger)
    rolling = ROLLING_GENESIS
    for notification_id in sorted(expected):
        rolling = fold(rolling, expected[notification_id]["hash"])
    return max(expected), rolling


def test_the_checkpointer_folds_the_hashes_the_relay_read_and_signs_what_the_store_holds(
    settings: Settings, ledger: Ledger
) -> None:
    """In the relay process the checkpointer folds the hashes the relay read instead of
    reading every event again; either way the checkpoint is the store's."""
    accounts = open_accounts(ledger, 5)
    move_money(ledger, accounts, 8)
    feed = HashFeed()
    limits = RelayLimits.from_settings(settings, batch_events_max=10)  # several spans

    with RelayThread(Relay(settings, limits, feed=feed)):
        wait_until(caught_up(settings, ledger), "relay caught up")
    checkpoint, fed = checkpoint_with(settings, ledger, feed)

    assert checkpoint is not None
    assert (checkpoint.notification_id, checkpoint.rolling_hash) == store_fold(ledger)
    assert fed == len(stored_envelopes(ledger))  # not one event read twice
    assert verify_store(settings, ledger=ledger).clean


def test_what_the_feed_no_longer_holds_the_checkpointer_reads_from_the_store(
    settings: Settings, ledger: Ledger
) -> None:
    accounts = open_accounts(ledger, 5)
    move_money(ledger, accounts, 8)
    feed = HashFeed(events_max=25)  # the relay reads more than that: the oldest go
    limits = RelayLimits.from_settings(settings, batch_events_max=10)

    with RelayThread(Relay(settings, limits, feed=feed)):
        wait_until(caught_up(settings, ledger), "relay caught up")
        first, fed_first = checkpoint_with(settings, ledger, feed)
        assert first is not None
        assert (first.notification_id, first.rolling_hash) == store_fold(ledger)
        assert fed_first == 0  # the start was let go: read from the store to its end
        move_money(ledger, accounts, 1)
        wait_until(caught_up(settings, ledger), "relay caught up again")
    second, fed_second = checkpoint_with(settings, ledger, feed)

    assert second is not None
    assert (second.notification_id, second.rolling_hash) == store_fold(ledger)
    assert 0 < fed_second <= 25
    assert verify_store(settings, ledger=ledger).clean
