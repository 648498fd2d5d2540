"""Ed25519 signing keys for checkpoints and export manifests, kept outside the database.

The private key is `VIGIL_SIGNING_KEY_FILE` (PEM, PKCS#8); in development, a key made
once at `var/signing-key.pem` (mode 0600), whose public half is also written to the
public keys directory. Production refuses the development key.

Keys rotate: a signature names its key by `key_id` (the first 16 hex digits of the
SHA-256 of the raw public key), and verification accepts the current key's public half
plus every retired public key (`<anything>.pub`, PEM) in `VIGIL_SIGNING_PUBLIC_KEYS_DIR`
(default `var/signing-keys/`). To rotate, put the old key's public half there and point
`VIGIL_SIGNING_KEY_FILE` at the new key; old checkpoints and exports still verify.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from infrastructure.settings import ConfigurationError, Settings, write_once

DEV_SIGNING_KEY_FILE: Final = "signing-key.pem"
PUBLIC_KEYS_DIR: Final = "signing-keys"
PUBLIC_KEY_SUFFIX: Final = ".pub"
KEY_ID_HEX_CHARS: Final = 16
# A public key file is about 113 bytes; anything much larger is not one of ours.
PUBLIC_KEY_FILE_BYTES_MAX: Final = 4_096

PublicKeys = dict[str, Ed25519PublicKey]


def key_id(public_key: Ed25519PublicKey) -> str:
    raw = public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()[:KEY_ID_HEX_CHARS]


def public_key_pem(public_key: Ed25519PublicKey) -> str:
    return public_key.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    ).decode()


def public_key_from_pem(pem: str | bytes) -> Ed25519PublicKey:
    key = serialization.load_pem_public_key(pem.encode() if isinstance(pem, str) else pem)
    if not isinstance(key, Ed25519PublicKey):
        raise ConfigurationError(f"not an Ed25519 public key: {type(key).__name__}")
    return key


@dataclass(frozen=True)
class Signer:
    """The current private key and its id."""

    private_key: Ed25519PrivateKey
    key_id: str

    @classmethod
    def from_settings(cls, settings: Settings) -> Signer:
        private_key = signing_key(settings)
        return cls(private_key, key_id(private_key.public_key()))

    def sign(self, payload: bytes) -> tuple[str, str]:
        """(key_id, signature as lowercase hex) of `payload`, the exact bytes signed."""
        return self.key_id, self.private_key.sign(payload).hex()

    def public_key(self) -> Ed25519PublicKey:
        return self.private_key.public_key()


def signing_key(settings: Settings) -> Ed25519PrivateKey:
    """The private key of `VIGIL_SIGNING_KEY_FILE`, else (development only) the dev key."""
    if settings.signing_key_file is not None:
        return _load_private_key(settings.signing_key_file)
    if settings.env == "production":
        raise ConfigurationError("production needs VIGIL_SIGNING_KEY_FILE (no development key)")
    return _dev_signing_key(settings)


def public_keys_dir(settings: Settings) -> Path:
    return settings.signing_public_keys_dir or settings.var_dir / PUBLIC_KEYS_DIR


def public_keys(settings: Settings) -> PublicKeys:
    """key_id -> public key: retired keys in the public keys directory, and the current
    key's public half (when this process can read the current key)."""
    found: PublicKeys = {}
    directory = public_keys_dir(settings)
    if directory.is_dir():
        for path in sorted(directory.glob(f"*{PUBLIC_KEY_SUFFIX}")):
            if path.stat().st_size > PUBLIC_KEY_FILE_BYTES_MAX:
                raise ConfigurationError(f"{path} is too large to be a public key")
            key = public_key_from_pem(path.read_bytes())
            found[key_id(key)] = key
    # A verifier (the query API, an auditor's machine) may hold public keys only.
    if settings.signing_key_file is not None or settings.env != "production":
        current = signing_key(settings).public_key()
        found[key_id(current)] = current
    return found


def verify_signature(keys: PublicKeys, signed_by: str, payload: bytes, signature: str) -> bool:
    """Whether `signature` (hex) over `payload` is valid for the key named `signed_by`;
    False for an unknown key id or a malformed signature."""
    key = keys.get(signed_by)
    if key is None:
        return False
    try:
        key.verify(bytes.fromhex(signature), payload)
    except (InvalidSignature, ValueError):
        return False
    return True


def _load_private_key(path: Path) -> Ed25519PrivateKey:
    try:
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    except (OSError, ValueError) as error:
        raise ConfigurationError(f"cannot read the signing key {path}: {error}") from error
    if not isinstance(key, Ed25519PrivateKey):
        raise ConfigurationError(f"{path} is not an Ed25519 private key")
    return key


def _dev_signing_key(settings: Settings) -> Ed25519PrivateKey:
    """Made on first use (mode 0600), like `Settings.dev_keys`; concurrent first uses
    keep whichever file landed first."""
    path = settings.var_dir / DEV_SIGNING_KEY_FILE
    if not path.exists():
        settings.var_dir.mkdir(parents=True, exist_ok=True)
        pem = Ed25519PrivateKey.generate().private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        write_once(path, pem)
    key = _load_private_key(path)
    _publish_dev_public_key(settings, key.public_key())
    return key


def _publish_dev_public_key(settings: Settings, public_key: Ed25519PublicKey) -> None:
    # So deleting var/signing-key.pem (a development "rotation") leaves the old
    # public half behind and old checkpoints still verify.
    directory = public_keys_dir(settings)
    path = directory / f"{key_id(public_key)}{PUBLIC_KEY_SUFFIX}"
    if path.exists():
        return
    directory.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".{os.getpid()}.tmp")
    tmp.write_text(public_key_pem(public_key))
    os.replace(tmp, path)
