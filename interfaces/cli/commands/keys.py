"""`vigil keys generate DIR`: every secret production needs, made fresh, as files.

- `signing-key.pem`: the Ed25519 key that signs checkpoints and export manifests
  (VIGIL_SIGNING_KEY_FILE), and its public half in `public/<key id>.pub`
  (VIGIL_SIGNING_PUBLIC_KEYS_DIR);
- `vigil.env`: VIGIL_AUDIT_MAC_KEY, VIGIL_CIPHER_KEY (base64 of 32 random bytes),
  VIGIL_METRICS_TOKEN and an HS256 key for tokens of a stack without an identity provider
  (VIGIL_JWT_KEYS, VIGIL_JWT_KID), as `NAME=value` lines (an env file for compose, a Secret
  for Kubernetes);
- `metrics-token`: VIGIL_METRICS_TOKEN alone, the file a Prometheus scrape config reads
  as its bearer (`credentials_file`).

Every file is 0600 in a 0700 directory; nothing is overwritten (generate into a new
directory, then move what you rotate). No setting is read: it runs before there are any.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import secrets
from datetime import UTC, datetime
from pathlib import Path

from infrastructure.settings import Settings
from interfaces.cli.parsing import UsageError

ENV_FILE = "vigil.env"
SIGNING_KEY_FILE = "signing-key.pem"
METRICS_TOKEN_FILE = "metrics-token"  # noqa: S105 - a file name, not a token
PUBLIC_DIR = "public"


def run_generate_cli(args: argparse.Namespace, settings: Settings | None) -> int:
    del settings  # made before there are any
    try:
        made = generate_keys(args.directory)
    except (FileExistsError, OSError) as error:
        raise UsageError(f"keys: {error}") from error
    for path in made:
        print(f"wrote {path}")
    print(
        f"point VIGIL_SIGNING_KEY_FILE at {made[0]} and VIGIL_SIGNING_PUBLIC_KEYS_DIR at "
        f"{made[1].parent}; load {made[2]} into the environment (or a Secret)"
    )
    return 0


def generate_keys(directory: Path) -> list[Path]:
    """Write the keys into `directory` (made 0700 if missing; refused if it holds any of
    them); the paths written, the signing key first."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from infrastructure.audit.signing import key_id, public_key_pem

    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    (directory / PUBLIC_DIR).mkdir(mode=0o700, exist_ok=True)
    for name in (SIGNING_KEY_FILE, ENV_FILE, METRICS_TOKEN_FILE):
        if (directory / name).exists():
            raise FileExistsError(f"{directory / name} exists: generate into a new directory")
    key = Ed25519PrivateKey.generate()
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    public = directory / PUBLIC_DIR / f"{key_id(key.public_key())}.pub"
    kid = datetime.now(UTC).strftime("%Y-%m")
    values = {
        "VIGIL_AUDIT_MAC_KEY": secrets.token_urlsafe(48),
        "VIGIL_CIPHER_KEY": base64.b64encode(secrets.token_bytes(32)).decode(),
        "VIGIL_METRICS_TOKEN": secrets.token_urlsafe(48),
        "VIGIL_JWT_KEYS": json.dumps({kid: secrets.token_urlsafe(48)}, separators=(",", ":")),
        "VIGIL_JWT_KID": kid,
    }
    env = "".join(f"{name}={value}\n" for name, value in values.items())
    written = [directory / SIGNING_KEY_FILE, public, directory / ENV_FILE]
    written.append(directory / METRICS_TOKEN_FILE)
    contents = [pem, public_key_pem(key.public_key()).encode(), env.encode()]
    contents.append(values["VIGIL_METRICS_TOKEN"].encode())
    for path, content in zip(written, contents, strict=True):
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as out:
            out.write(content)
    return written
