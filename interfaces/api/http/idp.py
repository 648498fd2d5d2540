"""Tokens from the bank's identity provider: public keys (a JWKS document fetched from a
URL, or PEM files) and the mapping of its claims onto Vigil's roles and branches.

The JWKS document is fetched at start and cached; a token naming a `kid` the cache lacks
makes the verifier fetch it again, at most once per `VIGIL_JWKS_REFETCH_INTERVAL_S` (a flood of
made-up kids costs one request to the provider per interval, not one per token), and the
cache is refreshed anyway after `JWKS_TTL_S`. Each key is bound to its algorithm (the
JWK's `alg`, else its key type's): a token must be signed with the algorithm its key was
published for, so an RSA public key can never serve as an HMAC secret.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import httpx
import jwt
import structlog
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.serialization import load_pem_public_key

log = structlog.get_logger("vigil.idp")

PUBLIC_ALGORITHMS: Final = frozenset({"RS256", "ES256"})
ALGORITHMS: Final = frozenset({"HS256", *PUBLIC_ALGORITHMS})
JWKS_TTL_S: Final = 3_600.0
JWKS_REFETCH_INTERVAL_S: Final = 30.0
JWKS_TIMEOUT_S: Final = 5.0
JWKS_BYTES_MAX: Final = 1_000_000
JWKS_KEYS_MAX: Final = 100


@dataclass(frozen=True, slots=True)
class PublicKey:
    algorithm: str
    key: Any  # a cryptography public key


def algorithm_of(key: Any) -> str:
    """The one algorithm Vigil accepts for a public key of this type."""
    if isinstance(key, rsa.RSAPublicKey):
        return "RS256"
    if isinstance(key, ec.EllipticCurvePublicKey) and isinstance(key.curve, ec.SECP256R1):
        return "ES256"
    raise ValueError("only RSA and P-256 EC public keys are accepted")


def load_key_files(files: Mapping[str, Path]) -> dict[str, PublicKey]:
    """kid -> public key, from PEM files (`VIGIL_JWT_PUBLIC_KEY_FILES`)."""
    keys = {}
    for kid, path in files.items():
        key = load_pem_public_key(path.read_bytes())
        keys[kid] = PublicKey(algorithm_of(key), key)
    return keys


def parse_jwks(document: Any) -> dict[str, PublicKey]:
    """kid -> key of a JWKS document; keys without `kid`, for other uses or of other
    algorithms are left out."""
    if not isinstance(document, dict) or not isinstance(document.get("keys"), list):
        raise ValueError("a JWKS document is an object with a list of keys")
    keys: dict[str, PublicKey] = {}
    for jwk in document["keys"][:JWKS_KEYS_MAX]:
        if not isinstance(jwk, dict) or not isinstance(jwk.get("kid"), str):
            continue
        if jwk.get("use", "sig") != "sig":
            continue
        try:
            parsed = jwt.PyJWK(jwk)
            algorithm = algorithm_of(parsed.key)
        except (jwt.PyJWTError, ValueError, TypeError):
            continue
        if jwk.get("alg", algorithm) != algorithm:
            continue
        keys[jwk["kid"]] = PublicKey(algorithm, parsed.key)
    return keys


class JwksKeys:
    """The provider's keys, from its JWKS URL, cached."""

    def __init__(
        self,
        url: str,
        *,
        refetch_interval_s: float = JWKS_REFETCH_INTERVAL_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        assert refetch_interval_s > 0, refetch_interval_s
        self.url = url
        self.refetch_interval_s = refetch_interval_s
        self._clock = clock
        self._keys: dict[str, PublicKey] = {}
        self._fetched_at: float | None = None
        self._attempted_at: float | None = None
        self._lock = asyncio.Lock()

    def cached(self, kid: str) -> PublicKey | None:
        return self._keys.get(kid)

    @property
    def stale(self) -> bool:
        return self._fetched_at is None or self._clock() - self._fetched_at > JWKS_TTL_S

    async def refresh(self) -> bool:
        """Fetch the document again unless that was tried within the interval; whether
        the keys were fetched now."""
        async with self._lock:
            now = self._clock()
            if self._attempted_at is not None and now - self._attempted_at < (
                self.refetch_interval_s
            ):
                return False
            self._attempted_at = now
            try:
                async with httpx.AsyncClient(timeout=JWKS_TIMEOUT_S) as client:
                    reply = await client.get(self.url, headers={"Accept": "application/json"})
                reply.raise_for_status()
                if len(reply.content) > JWKS_BYTES_MAX:
                    raise ValueError(f"JWKS document over {JWKS_BYTES_MAX} bytes")
                self._keys = parse_jwks(reply.json())
            except (httpx.HTTPError, ValueError) as error:
                log.warning("jwks_fetch_failed", url=self.url, error=type(error).__name__)
                return False
            self._fetched_at = now
            log.info("jwks_fetched", url=self.url, keys=sorted(self._keys))
            return True


@dataclass(frozen=True, slots=True)
class ClaimMapping:
    """Which claims name the role and branch, and how the provider's values (groups,
    app roles) map onto Vigil's roles. Without a map, the claim holds the role itself."""

    role_claim: str = "role"
    branch_claim: str = "branch"
    role_map: Mapping[str, str] = field(default_factory=dict)

    def role_values(self, claims: Mapping[str, Any]) -> Sequence[str] | None:
        raw = claims.get(self.role_claim)
        if isinstance(raw, str):
            return [raw]
        if isinstance(raw, list) and all(isinstance(value, str) for value in raw):
            return raw
        return None

    def role(self, claims: Mapping[str, Any]) -> str | None:
        """The one Vigil role the claims map to; None if none or several."""
        values = self.role_values(claims)
        if values is None:
            return None
        if not self.role_map:
            return values[0] if len(values) == 1 else None
        roles = {self.role_map[value] for value in values if value in self.role_map}
        return roles.pop() if len(roles) == 1 else None

    def branch(self, claims: Mapping[str, Any]) -> object:
        return claims.get(self.branch_claim)
