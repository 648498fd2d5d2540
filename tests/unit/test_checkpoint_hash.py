"""Checkpoints in the API contract's exact form, with golden vectors an outside auditor can
recompute with nothing but SHA-256, JSON and Ed25519."""

from __future__ import annotations

import hashlib
import json

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from infrastructure.audit.checkpoints import (
    ROLLING_GENESIS,
    Checkpoint,
    checkpoint_payload,
    fold,
)
from infrastructure.audit.signing import (
    Signer,
    key_id,
    public_key_from_pem,
    public_key_pem,
    verify_signature,
)

# The two golden events of test_hash_chain.py, in notification order.
OPENED_HASH = "06421eb3451ff5ccd6420b6afb687937d589cda910061a4657ad8c9b4f7fc082"
DEPOSITED_HASH = "35f110dcd1b4cd82c43fedbcaefe9584b2d49a7bc562c8265205ad4c46b3976b"

# Golden vectors. These literals are the contract: changing them breaks every
# auditor's tooling, so a change here needs a reason in the release notes.
ROLLING_AFTER_OPENED = "23b52182a0f21374b1573679802e40962fce8b2722694450a4203f44799867e6"
ROLLING_AFTER_DEPOSITED = "ec9965bd8684ff74d8f076cdb8267ad2488f1ff703968b3b84ebd58efbf0874b"
CHECKPOINT_TIME = "2026-03-01T09:30:01.000000Z"
PAYLOAD = (
    '{"notification_id":2,'
    '"rolling_hash":"ec9965bd8684ff74d8f076cdb8267ad2488f1ff703968b3b84ebd58efbf0874b",'
    '"time":"2026-03-01T09:30:01.000000Z"}'
)
# Ed25519 is deterministic: this key (seed bytes 0..31) always gives this signature.
SEED = bytes(range(32))
KEY_ID = "56475aa75463474c"
SIGNATURE = (
    "ee45ea56aa9644186cd82c7c0475f26a8a84e60f0e78cc9f7ef6498d04fe18d79ca178ade53720e107b47f"
    "53a8233e89d699def02e6ee1038e4faaeadda6ba08"
)


def golden_signer() -> Signer:
    private_key = Ed25519PrivateKey.from_private_bytes(SEED)
    return Signer(private_key, key_id(private_key.public_key()))


def test_rolling_hash_starts_from_64_zeros_and_hashes_the_hex_concatenation() -> None:
    assert ROLLING_GENESIS == "0" * 64
    by_hand = hashlib.sha256(("0" * 64 + OPENED_HASH).encode("ascii")).hexdigest()
    assert fold(ROLLING_GENESIS, OPENED_HASH) == by_hand == ROLLING_AFTER_OPENED
    assert fold(ROLLING_AFTER_OPENED, DEPOSITED_HASH) == ROLLING_AFTER_DEPOSITED


def test_rolling_hash_depends_on_notification_order() -> None:
    swapped = fold(fold(ROLLING_GENESIS, DEPOSITED_HASH), OPENED_HASH)
    assert swapped != ROLLING_AFTER_DEPOSITED


def test_signed_payload_is_canonical_json_of_notification_id_rolling_hash_and_time() -> None:
    payload = checkpoint_payload(2, ROLLING_AFTER_DEPOSITED, CHECKPOINT_TIME)
    assert payload == PAYLOAD.encode()
    assert json.loads(payload) == {
        "notification_id": 2,
        "rolling_hash": ROLLING_AFTER_DEPOSITED,
        "time": CHECKPOINT_TIME,
    }


def test_checkpoint_signature_and_key_id_are_the_golden_ones() -> None:
    signer = golden_signer()
    assert signer.key_id == KEY_ID
    assert hashlib.sha256(seed_public_raw()).hexdigest()[:16] == KEY_ID
    assert signer.sign(PAYLOAD.encode()) == (KEY_ID, SIGNATURE)
    keys = {KEY_ID: signer.public_key()}
    assert verify_signature(keys, KEY_ID, PAYLOAD.encode(), SIGNATURE)


def seed_public_raw() -> bytes:
    public_key = Ed25519PrivateKey.from_private_bytes(SEED).public_key()
    return public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def test_a_signature_fails_for_a_changed_payload_an_unknown_key_or_garbage() -> None:
    signer = golden_signer()
    keys = {KEY_ID: signer.public_key()}
    changed = PAYLOAD.replace('"notification_id":2', '"notification_id":3').encode()
    assert not verify_signature(keys, KEY_ID, changed, SIGNATURE)
    assert not verify_signature(keys, "0000000000000000", PAYLOAD.encode(), SIGNATURE)
    assert not verify_signature(keys, KEY_ID, PAYLOAD.encode(), "not hex")
    assert not verify_signature(keys, KEY_ID, PAYLOAD.encode(), "00" * 64)


def test_a_public_key_survives_pem_and_keeps_its_id() -> None:
    public_key = golden_signer().public_key()
    again = public_key_from_pem(public_key_pem(public_key))
    assert key_id(again) == KEY_ID


def test_checkpoint_file_line_is_canonical_json_of_the_five_contract_fields() -> None:
    checkpoint = Checkpoint(2, ROLLING_AFTER_DEPOSITED, CHECKPOINT_TIME, KEY_ID, SIGNATURE)
    line = checkpoint.line()
    assert (
        line
        == (
            '{"key_id":"56475aa75463474c","notification_id":2,'
            f'"rolling_hash":"{ROLLING_AFTER_DEPOSITED}","signature":"{SIGNATURE}",'
            '"time":"2026-03-01T09:30:01.000000Z"}\n'
        ).encode()
    )
    assert Checkpoint.from_json(json.loads(line)) == checkpoint
    assert checkpoint.payload() == PAYLOAD.encode()


@pytest.mark.parametrize(
    "change",
    [
        {"extra": 1},
        {"notification_id": "2"},
        {"notification_id": 0},
        {"signature": None},
    ],
)
def test_a_checkpoint_line_with_other_fields_or_types_is_refused(change: dict[str, object]) -> None:
    data = {
        "notification_id": 2,
        "rolling_hash": ROLLING_AFTER_DEPOSITED,
        "time": CHECKPOINT_TIME,
        "key_id": KEY_ID,
        "signature": SIGNATURE,
    } | change
    with pytest.raises(ValueError, match=r"checkpoint|must be"):
        Checkpoint.from_json(data)
