"""The chain hash's canonical JSON: orjson writes exactly the standard library's bytes."""

from __future__ import annotations

import hashlib
import json
from typing import Any
from uuid import UUID

import pytest
from hypothesis import given
from hypothesis import strategies as st

from application.commands import Deposit, OpenAccount, Submission, fingerprint
from domain.integrity import Actor, canonical, stdlib_canonical, use_canonical_encoder
from domain.money import Money
from infrastructure.eventstore.canonical import install, orjson_canonical

scalars = (
    st.none() | st.booleans() | st.integers(min_value=-(2**63), max_value=2**64 - 1) | st.text()
)
values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
    max_leaves=12,
)
records = st.dictionaries(st.text(), values, max_size=8)


@given(records)
def test_orjson_writes_the_canonical_bytes(record: dict[str, Any]) -> None:
    try:
        expected = stdlib_canonical(record)
    except UnicodeEncodeError:  # a lone surrogate: neither encoder can write it
        with pytest.raises((UnicodeEncodeError, TypeError, ValueError)):
            orjson_canonical(record)
        return
    assert orjson_canonical(record) == expected


def test_integers_beyond_64_bits_fall_back_to_the_definition() -> None:
    record = {"big": 2**70, "small": -(2**70)}
    assert orjson_canonical(record) == stdlib_canonical(record)


def test_an_encoder_that_disagrees_with_the_definition_is_refused() -> None:
    def spaced(record: dict[str, Any]) -> bytes:
        return stdlib_canonical(record).replace(b":", b": ")

    with pytest.raises(ValueError, match="canonical form"):
        use_canonical_encoder(spaced)
    assert canonical({"a": 1}) == b'{"a":1}'


@given(owner=st.text(), reference=st.none() | st.text(), subject=st.text())
def test_command_fingerprints_are_the_escaped_json_whatever_encoder_runs(
    owner: str, reference: str | None, subject: str
) -> None:
    actor = Actor(subject, "teller")
    opening = OpenAccount(UUID(int=1), owner, "001", "GBP", 0)
    deposit = Deposit(UUID(int=2), Money(150, "GBP"), UUID(int=3), "wire", reference)
    definition = {
        "kind": "open_account",
        "subject": subject,
        "role": "teller",
        "owner": owner,
        "branch": "001",
        "currency": "GBP",
        "overdraft_limit_minor": 0,
    }
    deposited = {
        "kind": "deposit",
        "subject": subject,
        "role": "teller",
        "account_id": str(UUID(int=2)),
        "amount_minor": 150,
        "currency": "GBP",
        "channel": "wire",
        "reference": reference,
    }
    install()  # orjson, as on the command path
    for command, described in ((opening, definition), (deposit, deposited)):
        expected = json.dumps(described, sort_keys=True, separators=(",", ":")).encode()
        submission = Submission(command, actor, "corr")
        assert fingerprint(submission) == hashlib.sha256(expected).hexdigest()
