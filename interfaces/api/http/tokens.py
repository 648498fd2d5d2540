"""Signing tokens that `TokenVerifier` accepts: for `vigil token issue`, tests and load runs."""

from __future__ import annotations

import time
from pathlib import Path

import jwt
from cryptography.hazmat.primitives.serialization import load_pem_private_key

from infrastructure.settings import ConfigurationError, Settings
from interfaces.api.http.auth import ALGORITHM
from interfaces.api.http.idp import algorithm_of
from interfaces.api.http.roles import TOKEN_ROLES, Role


def issue_token(
    settings: Settings,
    *,
    role: str,
    subject: str | None = None,
    branch: str | None = None,
    ttl_s: int | None = None,
    now: float | None = None,
    key_file: Path | None = None,
    kid: str | None = None,
) -> str:
    """An HS256 token signed with the key `settings.jwt_kid` names, carrying that kid; or,
    with `key_file` (a PEM private key), RS256 or ES256 as the key's type says, carrying
    `kid` (default: the file's stem), as an identity provider would sign it."""
    check_claims(role, branch, ttl_s)
    lifetime_s = settings.token_ttl_s_default if ttl_s is None else ttl_s
    if lifetime_s > settings.jwt_lifetime_max_s:
        raise ValueError(
            f"--ttl-s may be at most VIGIL_JWT_LIFETIME_MAX_S ({settings.jwt_lifetime_max_s})"
        )
    issued_at_s = int(time.time() if now is None else now)
    claims: dict[str, str | int] = {
        "sub": subject or f"{role}-dev",
        "role": role,
        "iss": settings.jwt_issuer,
        "aud": settings.jwt_audience,
        "iat": issued_at_s,
        "nbf": issued_at_s,
        "exp": issued_at_s + lifetime_s,
    }
    if branch:
        claims["branch"] = branch
    if key_file is not None:
        private = load_pem_private_key(key_file.read_bytes(), password=None)
        algorithm = algorithm_of(private.public_key())
        headers = {"kid": kid or key_file.stem}
        return jwt.encode(claims, private, algorithm=algorithm, headers=headers)  # type: ignore[arg-type]
    keys = settings.jwt_keys_resolved()
    key = keys.get(settings.jwt_kid)
    if key is None:
        raise ConfigurationError(
            f"VIGIL_JWT_KID names {settings.jwt_kid!r}, which is not among the configured keys"
        )
    return jwt.encode(claims, key, algorithm=ALGORITHM, headers={"kid": settings.jwt_kid})


def check_claims(role: str, branch: str | None, ttl_s: int | None) -> None:
    """ValueError, in the words of `vigil token issue`'s options, for a token not to issue."""
    if role not in TOKEN_ROLES:
        allowed = ", ".join(sorted(TOKEN_ROLES))
        raise ValueError(f"role must be one of {allowed}, not {role!r}")
    if role == Role.TELLER and not branch:
        raise ValueError("a teller token needs a branch (e.g. --branch 001)")
    if ttl_s is not None and ttl_s <= 0:
        raise ValueError(f"--ttl-s must be a positive number of seconds, not {ttl_s}")
