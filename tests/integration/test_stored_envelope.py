"""The envelope read straight from a stored event's state (relay, replays, exports) is the
envelope of the event the library's mapper builds, for every kind of event, encrypted or
not; and the checkpointer's hash read from the state is the event's own."""

from __future__ import annotations

import base64
import os
from collections.abc import Iterator
from uuid import uuid4

import pytest

from application.commands import ChangeStatus, Deposit, OpenAccount, Submission, Transfer
from application.compliance import Compliance
from application.envelope import envelope
from application.ledger import Ledger
from domain.integrity import Actor
from domain.money import Money
from infrastructure.audit.checkpoints import decoded_hash
from infrastructure.eventstore.envelopes import stored_envelope
from infrastructure.eventstore.ledger import open_ledger
from infrastructure.settings import Settings
from tests.integration.test_compliance import alert

pytestmark = pytest.mark.integration

TELLER = Actor("alice", "teller")
ADMIN = Actor("root", "admin")
OFFICER = Actor("olivia", "compliance")


@pytest.fixture(params=["plain", "encrypted"])
def ledger(request: pytest.FixtureRequest, settings_factory) -> Iterator[Ledger]:  # type: ignore[no-untyped-def]
    key = base64.b64encode(os.urandom(32)).decode() if request.param == "encrypted" else None
    settings: Settings = settings_factory(cipher_key=key) if key else settings_factory()
    app = open_ledger(settings)
    yield app
    app.close()


def every_kind_of_event(ledger: Ledger) -> None:
    a, b = uuid4(), uuid4()
    gbp = Money(12_345, "GBP")
    commands = [
        OpenAccount(a, "Zoë Ångström ✓", "001", "GBP", 5_000),
        OpenAccount(b, "Bob", "002", "GBP", 0),
        Deposit(a, gbp, uuid4(), "wire", "ref “quoted” \\ slash"),
        Transfer(a, b, Money(345, "GBP"), uuid4()),
    ]
    for command in commands:
        ledger.execute_one(Submission(command, TELLER, "corr-envelope"))
    ledger.execute_one(Submission(ChangeStatus(b, "freeze", "review"), ADMIN, "corr-freeze"))
    compliance = Compliance(ledger)
    compliance.open_case(alert(a), "corr-case")
    compliance.add_to_watchlist(b, "sanctions hit", OFFICER, "corr-watch")
    compliance.remove_from_watchlist(b, "cleared", OFFICER, "corr-watch-2")


def test_the_envelope_read_from_the_state_is_the_envelope_of_the_decoded_event(
    ledger: Ledger,
) -> None:
    every_kind_of_event(ledger)
    notifications = ledger.recorder.select_notifications(start=None, limit=1_000)
    kinds = set()
    for notification in notifications:
        event = ledger.mapper.to_domain_event(notification)
        fast = stored_envelope(ledger, notification.id, notification)
        assert fast == envelope(notification.id, event)  # type: ignore[arg-type]
        assert decoded_hash(ledger, notification) == event.hash  # type: ignore[attr-defined]
        kinds.add(fast["event_type"])
    assert {"AccountOpened", "Deposited", "CaseOpened", "WatchlistEntryRemoved"} <= kinds
    assert len(kinds) >= 7
