"""What the relay puts on the broker, beyond the envelope: a partition's events over
several record batches of its own making, in order; and an event whose message no request
to the broker could carry, set aside instead of stopping the relay."""

from __future__ import annotations

from uuid import uuid4

import orjson
import psycopg
import pytest

from application.commands import Deposit, OpenAccount
from application.ledger import Ledger
from domain import account as account_module
from domain.money import Money
from infrastructure.relay.events import MESSAGE_BYTES_MAX, Relay
from infrastructure.settings import Settings
from tests.integration.test_relay import (  # the relay's fixtures and helpers
    RelayThread,
    caught_up,
    consume,
    ledger,
    move_money,
    notification_id,
    open_accounts,
    partition_of,
    relay_state,
    settings,
    stored_envelopes,
    sub,
    wait_until,
)

__all__ = ["ledger", "settings"]  # fixtures, used by name

pytestmark = pytest.mark.integration


def test_a_partitions_events_beyond_one_record_batch_go_out_in_order_in_several(
    settings: Settings, ledger: Ledger
) -> None:
    """One account's events fill more than one record batch (256 KiB, about 200
    envelopes): every one arrives once, in the account's order, at consecutive offsets."""
    (account,) = open_accounts(ledger, 1)
    for start in range(0, 800, 100):
        group = [
            sub(Deposit(account, Money(100 + k, "GBP"), uuid4()), f"many-{k}")
            for k in range(start, start + 100)
        ]
        assert all(o.error is None for o in ledger.execute(group))
    expected = stored_envelopes(ledger)
    assert len(expected) == 801

    relay = Relay(settings)
    with RelayThread(relay):
        wait_until(caught_up(settings, ledger), "relay caught up")
    records = consume(settings, set(expected))

    assert sorted(notification_id(r) for r in records) == sorted(expected)
    assert {r.partition for r in records} == {partition_of(account, 6)}
    in_log_order = sorted(records, key=lambda r: r.offset)
    assert [orjson.loads(r.value)["version"] for r in in_log_order] == list(range(1, 802))
    offsets = [r.offset for r in in_log_order]
    assert offsets == list(range(offsets[0], offsets[0] + 801))
    sent_bytes = sum(len(r.value) for r in records)
    assert sent_bytes > 2 * 256 * 1024, "more than two batches' worth, in one read"
    assert relay.batches_published == 1
    # What the relay recorded as acknowledged: the last record's offset, not its batch's.
    assert relay.state.offsets == {partition_of(account, 6): offsets[-1]}


def test_an_event_too_big_for_any_broker_request_is_quarantined_and_the_rest_published(
    settings: Settings, ledger: Ledger, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Nothing the APIs or the domain accept comes near a request's size, but an event
    written another way (here: by a domain whose bound on owner names was far wider) must
    not stop the relay: over the bound it is set aside, loudly; a big event under it is
    published like any other."""
    monkeypatch.setattr(account_module, "OWNER_CHARS_MAX", 2 * MESSAGE_BYTES_MAX)
    huge, big, plain = uuid4(), uuid4(), uuid4()
    opened = [
        sub(OpenAccount(huge, "H" * (MESSAGE_BYTES_MAX + 1), "001", "GBP", 0), "huge"),
        sub(OpenAccount(big, "B" * 600_000, "001", "GBP", 0), "big"),
        sub(OpenAccount(plain, "Ada", "001", "GBP", 0), "plain"),
    ]
    assert all(o.error is None for o in ledger.execute(opened))
    move_money(ledger, [big, plain], 2)
    expected = stored_envelopes(ledger)
    [huge_id] = [n for n, body in expected.items() if body["aggregate_id"] == str(huge)]

    with RelayThread(Relay(settings)):
        wait_until(caught_up(settings, ledger), "relay caught up")
    published = set(expected) - {huge_id}
    records = consume(settings, published)

    assert sorted(notification_id(r) for r in records) == sorted(published)
    with psycopg.connect(settings.resolved_database_url(), autocommit=True) as conn:
        quarantined = conn.execute(
            "SELECT notification_id, originator_id, error FROM relay_quarantine"
        ).fetchall()
    assert [(n, o) for n, o, _ in quarantined] == [(huge_id, huge)]
    assert "a request to the broker may carry" in quarantined[0][2]
    assert relay_state(settings) == (max(expected), 1)
