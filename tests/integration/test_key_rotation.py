"""Keys that rotate, on real PostgreSQL: events record the MAC key and cipher key that
sealed and encrypted them; after a rotation old and new events verify and decrypt; an
event whose key is gone makes `vigil audit verify` name that key; and states the library's
own cipher wrote before keys had ids still decrypt with the key called `default`."""

from __future__ import annotations

import argparse
import base64
import os
import secrets
from typing import Any
from uuid import UUID, uuid4

import psycopg
import pytest
from pydantic import SecretStr

from application.commands import Deposit, OpenAccount, Submission
from application.ledger import Ledger
from domain.integrity import Actor, mac_matches
from domain.money import Money
from infrastructure.audit.verify import verify_store
from infrastructure.eventstore.cipher import MAGIC
from infrastructure.eventstore.ledger import event_store_env, open_ledger
from infrastructure.eventstore.schema import EVENTS_TABLE
from infrastructure.settings import Settings
from interfaces.cli.commands.audit import run_verify_cli

pytestmark = pytest.mark.integration

TELLER = Actor("alice", "teller")


def _aes_key() -> str:
    return base64.b64encode(os.urandom(32)).decode()


MAC_2026, MAC_2027 = secrets.token_bytes(32).hex(), secrets.token_bytes(32).hex()
AES_C1, AES_C2 = _aes_key(), _aes_key()


def _run(ledger: Ledger, *commands: Any) -> None:
    outcomes = ledger.execute([Submission(c, TELLER, f"c-{uuid4()}") for c in commands])
    assert all(o.error is None for o in outcomes), outcomes


def _states(settings: Settings, account_id: UUID) -> list[bytes]:
    with psycopg.connect(settings.resolved_database_url()) as conn:
        rows = conn.execute(
            f"SELECT state FROM {EVENTS_TABLE} WHERE originator_id = %s "
            "ORDER BY originator_version",
            (account_id,),
        ).fetchall()
    return [bytes(row[0]) for row in rows]


def _prefix(kid: str) -> bytes:
    return MAGIC + bytes([len(kid)]) + kid.encode()


def test_old_events_verify_and_decrypt_after_both_keys_rotate(settings_factory: Any) -> None:
    before: Settings = settings_factory(
        audit_mac_key=None,
        audit_mac_keys={"2026": MAC_2026},
        audit_mac_kid="2026",
        cipher_keys={"c1": AES_C1},
        cipher_kid="c1",
    )
    account_id = uuid4()
    ledger = open_ledger(before)
    try:
        _run(ledger, OpenAccount(account_id, "Ada", "001", "GBP", 0))
        _run(ledger, Deposit(account_id, Money(500, "GBP"), uuid4()))
    finally:
        ledger.close()

    after = before.model_copy(
        update={
            "audit_mac_keys": {"2026": SecretStr(MAC_2026), "2027": SecretStr(MAC_2027)},
            "audit_mac_kid": "2027",
            "cipher_keys": {"c1": SecretStr(AES_C1), "c2": SecretStr(AES_C2)},
            "cipher_kid": "c2",
        }
    )
    ledger = open_ledger(after)
    try:
        _run(ledger, Deposit(account_id, Money(250, "GBP"), uuid4()))
        events = list(ledger.repository.event_store.get(account_id))
        assert [e.mac_kid for e in events] == ["2026", "2026", "2027"]
        keys = {"2026": MAC_2026.encode(), "2027": MAC_2027.encode()}
        assert all(mac_matches(keys[e.mac_kid], e.hash, e.mac) for e in events)
        assert ledger.get_account(account_id).balance_minor == 750
        report = verify_store(after, ledger=ledger)
    finally:
        ledger.close()
    assert report.clean, report.findings
    states = _states(after, account_id)
    assert [s.startswith(_prefix("c1")) for s in states] == [True, True, False]
    assert states[2].startswith(_prefix("c2"))

    # The 2026 MAC key withdrawn: its events are named as failing, with the key's id.
    without_2026 = after.model_copy(
        update={"audit_mac_keys": {"2027": SecretStr(MAC_2027)}, "audit_mac_kid": "2027"}
    )
    report = verify_store(without_2026)
    assert not report.clean
    assert {f.version for f in report.findings} == {1, 2}
    assert all("'2026'" in f.detail for f in report.findings), report.findings
    args = argparse.Namespace(since=None, until=None, json=False)
    assert run_verify_cli(args, without_2026) == 1


def test_states_the_library_encrypted_before_keys_had_ids_decrypt_with_the_default_key(
    settings_factory: Any,
) -> None:
    legacy_key = _aes_key()
    settings: Settings = settings_factory(cipher_key=legacy_key)
    account_id = uuid4()
    # Written as before: the library's AESCipher, no key id in the state.
    env = event_store_env(settings, create_table=True)
    env.pop("CIPHER_KEYS")
    env.pop("CIPHER_KID")
    env |= {"CIPHER_TOPIC": "eventsourcing.cryptography:AESCipher", "CIPHER_KEY": legacy_key}
    ledger = open_ledger(settings)
    old = Ledger(env=env, options=ledger.options)
    try:
        _run(old, OpenAccount(account_id, "Ada", "001", "GBP", 0))
    finally:
        old.close()
    try:
        assert not _states(settings, account_id)[0].startswith(MAGIC)
        assert ledger.get_account(account_id).owner == "Ada"
        _run(ledger, Deposit(account_id, Money(100, "GBP"), uuid4()))
    finally:
        ledger.close()
    states = _states(settings, account_id)
    assert states[1].startswith(_prefix("default"))
