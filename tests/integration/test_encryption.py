"""Encryption at rest: with VIGIL_CIPHER_KEY, no payload field is readable in the stored
events table, and the ledger, its hash chain and its projections work the same."""

from __future__ import annotations

import base64
import os
from uuid import uuid4

import psycopg
import pytest

from application.commands import Deposit, OpenAccount, Submission, Transfer
from domain.account import Account
from domain.integrity import GENESIS_HASH, Actor, chain_hash, mac_matches
from domain.money import Money
from infrastructure.eventstore.ledger import open_ledger
from infrastructure.settings import Settings

pytestmark = pytest.mark.integration

OWNER = "Zebedee Quartermaine-Unusualname"
REFERENCE = "invoice-7719-marmalade"


@pytest.fixture
def settings(settings_factory) -> Settings:  # type: ignore[no-untyped-def]
    key = base64.b64encode(os.urandom(32)).decode()
    return settings_factory(cipher_key=key)  # type: ignore[no-any-return]


def test_no_payload_field_is_stored_in_plain_text_and_everything_still_works(
    settings: Settings,
) -> None:
    ledger = open_ledger(settings)
    actor = Actor("alice-cipher", "teller")
    a, b = uuid4(), uuid4()
    try:
        for command in (
            OpenAccount(a, OWNER, "001", "GBP", 0),
            OpenAccount(b, "Other", "001", "GBP", 0),
            Deposit(a, Money(123_456, "GBP"), uuid4(), reference=REFERENCE),
            Transfer(a, b, Money(23_456, "GBP"), uuid4(), reference=REFERENCE),
        ):
            [outcome] = ledger.execute([Submission(command, actor, "corr-cipher")])
            assert outcome.error is None
        assert ledger.get_account(a).balance_minor == 100_000
        previous = GENESIS_HASH
        for event in ledger.events.get(a):
            assert isinstance(event, Account.Event)
            assert event.previous_hash == previous
            assert chain_hash(event.chain_record()) == event.hash
            assert mac_matches(settings.audit_mac_key_resolved(), event.hash, event.mac)
            previous = event.hash
    finally:
        ledger.close()
    with psycopg.connect(settings.resolved_database_url()) as conn:
        states = [bytes(row[0]) for row in conn.execute("SELECT state FROM ledger_events")]
    assert len(states) == 5
    for secret in (OWNER, REFERENCE, "alice-cipher", "123456", "corr-cipher", "amount_minor"):
        assert not any(secret.encode() in state for state in states), secret
