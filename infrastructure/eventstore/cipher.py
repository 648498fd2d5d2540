"""Encryption at rest with keys that rotate: AES-GCM under named keys.

Each stored state written here starts with `MAGIC`, the key's id (one length byte, then
the id) and then the library's AES-GCM layout (nonce, tag, ciphertext), so every event
records which key encrypted it. A state without the prefix was written by the library's
own `AESCipher` before keys had ids: it is decrypted with the key called `default`. After
a rotation (a new `VIGIL_CIPHER_KID`, the old key kept in `VIGIL_CIPHER_KEYS`) new events
use the new key and old ones still decrypt; re-encrypting old events is not needed.
"""

from __future__ import annotations

import json
from typing import Final

from cryptography.exceptions import InvalidTag
from eventsourcing.cryptography import AESCipher
from eventsourcing.persistence import Cipher
from eventsourcing.utils import Environment

# Eight bytes no nonce of the library's layout is likely to start with (2^-64).
MAGIC: Final = b"\x00VIGILK1"
LEGACY_KID: Final = "default"
KEYS_VARIABLE: Final = "CIPHER_KEYS"
KID_VARIABLE: Final = "CIPHER_KID"


class UnknownCipherKey(ValueError):
    """A stored state names a key this process was not given."""


class RotatingCipher(Cipher):
    def __init__(self, environment: Environment) -> None:
        raw = environment.get(KEYS_VARIABLE)
        kid = environment.get(KID_VARIABLE) or LEGACY_KID
        if not raw:
            raise OSError(f"'{KEYS_VARIABLE}' not in env")
        keys: dict[str, str] = json.loads(raw)
        if kid not in keys:
            raise OSError(f"{KID_VARIABLE} {kid!r} names no key of {KEYS_VARIABLE}")
        self.kid = kid
        encoded_kid = kid.encode()
        assert 0 < len(encoded_kid) < 256, kid
        self._prefix = MAGIC + bytes([len(encoded_kid)]) + encoded_kid
        self._ciphers = {
            name: AESCipher(Environment(env={AESCipher.CIPHER_KEY: key}))
            for name, key in keys.items()
        }

    def encrypt(self, plaintext: bytes) -> bytes:
        return self._prefix + self._ciphers[self.kid].encrypt(plaintext)

    def decrypt(self, ciphertext: bytes) -> bytes:
        if ciphertext.startswith(MAGIC):
            kid, body = self._split(ciphertext)
            cipher = self._ciphers.get(kid)
            if cipher is None:
                raise UnknownCipherKey(f"encrypted with cipher key {kid!r}, not configured")
            try:
                return cipher.decrypt(body)
            except (InvalidTag, ValueError):
                # A legacy state whose random nonce began with MAGIC (2^-64): try it so.
                if LEGACY_KID not in self._ciphers:
                    raise
        legacy = self._ciphers.get(LEGACY_KID)
        if legacy is None:
            raise UnknownCipherKey(f"written before keys had ids; no cipher key {LEGACY_KID!r}")
        return legacy.decrypt(ciphertext)

    @staticmethod
    def _split(ciphertext: bytes) -> tuple[str, bytes]:
        length = ciphertext[len(MAGIC)] if len(ciphertext) > len(MAGIC) else 0
        start = len(MAGIC) + 1
        kid = ciphertext[start : start + length].decode(errors="replace")
        return kid, ciphertext[start + length :]
