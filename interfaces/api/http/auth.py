"""Who is calling and what they may do: bearer JWT verification and the one RBAC table.

The core (`TokenVerifier`, `PERMISSIONS`, `authorize`, `check_branch`) knows nothing of
FastAPI; `require(action)` adapts it into a typed route parameter:

    Teller = Annotated[Principal, Depends(require("account.deposit"))]
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Annotated, Any, Final

import jwt
from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from domain.errors import AccountNotFound, DomainError, Forbidden, ValidationFailed
from domain.text import BRANCH_PATTERN, TextRefused, acceptable_text
from interfaces.api.http.idp import ALGORITHMS, ClaimMapping, JwksKeys, PublicKey, load_key_files
from interfaces.api.http.roles import TOKEN_ROLES, Role

if TYPE_CHECKING:
    from infrastructure.settings import Settings

ALGORITHM = "HS256"
REQUIRED_CLAIMS = ("exp", "nbf", "iat", "iss", "aud", "sub")
# Headers beyond this are not tokens we issue; refuse before spending time parsing them.
TOKEN_CHARS_MAX = 8192
SUBJECT_CHARS_MAX = 256
# Subjects Vigil's own actors use (`system:rules`, `system:holds`); no token may claim one.
SYSTEM_SUBJECT_PREFIX = "system:"
# Time claims are whole seconds since the epoch, below this (the year 2255): `exp: 10**30`
# is not a token anyone meant to issue.
TIME_CLAIM_MAX = 9_000_000_000
TIME_CLAIMS = ("exp", "nbf", "iat")
LIFETIME_MAX_S_DEFAULT = 86_400
# What a refused caller is told; the reason is logged, never sent back.
UNAUTHORIZED_DETAIL = "the bearer token is missing or not valid"


@dataclass(frozen=True, slots=True)
class Principal:
    subject: str
    role: Role
    branch: str | None = None

    @property
    def actor(self) -> dict[str, str]:
        """The `actor` every event records (the API contract: `{"subject", "role"}`)."""
        return {"subject": self.subject, "role": self.role.value}


class Unauthorized(Exception):
    """The caller could not be identified. `reason` is ours and short; never the token."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class UnknownKey(Unauthorized):
    """The token names a key id none of the configured sources holds (yet)."""


# --- RBAC: the one table (the API contract's matrix). Deny by default. ---------------------

_T, _A, _U, _C, _V = Role.TELLER, Role.ADMIN, Role.AUDITOR, Role.COMPLIANCE, Role.VIEWER

PERMISSIONS: Mapping[str, frozenset[Role]] = {
    # Command API
    "account.open": frozenset({_T, _A}),
    "account.deposit": frozenset({_T}),
    "account.withdraw": frozenset({_T}),
    "transfer.create": frozenset({_T}),
    "batch.submit": frozenset({_T}),
    "account.freeze": frozenset({_A, _C}),
    "account.unfreeze": frozenset({_A}),
    "account.close": frozenset({_A}),
    "case.acknowledge": frozenset({_C}),
    "case.assign": frozenset({_C}),
    "case.escalate": frozenset({_C}),
    "case.close": frozenset({_C}),
    "case.comment": frozenset({_C}),
    "case.freeze_account": frozenset({_A, _C}),
    "watchlist.manage": frozenset({_C}),
    "hold.place": frozenset({_T}),
    "hold.capture": frozenset({_T, _A}),
    "hold.void": frozenset({_T, _A, _C}),
    "transaction.reverse": frozenset({_A}),
    "case.release": frozenset({_C}),
    "case.reject": frozenset({_C}),
    "suppression.manage": frozenset({_C}),
    # Query API
    "account.read": frozenset({_T, _A, _U, _C, _V}),
    "stats.read": frozenset({_V, _A, _U, _C}),
    "projections.read": frozenset({_A, _U}),
    "alerts.read": frozenset({_C, _U, _A}),
    "alerts.evidence": frozenset({_C, _U}),
    "cases.read": frozenset({_C, _U, _A}),
    "watchlist.read": frozenset({_C, _U}),
    "suppressions.read": frozenset({_C, _U}),
    "audit.read": frozenset({_U, _C}),
    "audit.export": frozenset({_U, _C}),
    "audit.access_log": frozenset({_U}),
}


def authorize(principal: Principal, action: str) -> None:
    """Raise Forbidden unless the principal's role may perform `action`."""
    if principal.role not in PERMISSIONS.get(action, frozenset()):
        raise Forbidden(f"role {principal.role.value} may not perform {action}")


def check_branch(principal: Principal, branch: str) -> None:
    """Tellers act only on their own branch; other roles are not branch-scoped."""
    if principal.role is Role.TELLER and principal.branch != branch:
        raise Forbidden("tellers may act only on accounts of their own branch")


def missing_account(principal: Principal, account_id: object) -> DomainError:
    """What to raise for an account that does not exist: for a teller, the same 403 as
    another branch's account, so that a teller learns nothing of other branches."""
    if principal.role is Role.TELLER:
        return Forbidden("tellers may act only on accounts of their own branch")
    return AccountNotFound(f"account {account_id} not found")


# --- Token verification ---------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _CacheEntry:
    principal: Principal
    valid_until_s: float


class TokenVerifier:
    """Verifies Vigil bearer tokens; caches successes briefly so hot paths skip the HMAC."""

    def __init__(
        self,
        keys: Mapping[str, str],
        issuer: str,
        audience: str,
        leeway_s: int = 0,
        *,
        lifetime_max_s: int = LIFETIME_MAX_S_DEFAULT,
        public_keys: Mapping[str, PublicKey] | None = None,
        jwks: JwksKeys | None = None,
        algorithms: Iterable[str] = ("HS256", "RS256", "ES256"),
        claims: ClaimMapping | None = None,
        cache_entries_max: int = 10_000,
        cache_ttl_s: float = 30.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if not keys and not public_keys and jwks is None:
            raise ValueError("TokenVerifier needs at least one key")
        self._keys = dict(keys)
        self._public_keys = dict(public_keys or {})
        self.jwks = jwks
        self._algorithms = frozenset(algorithms) & ALGORITHMS
        self._claims = claims or ClaimMapping()
        self._issuer = issuer
        self._audience = audience
        self._leeway_s = leeway_s
        self._lifetime_max_s = lifetime_max_s
        self._cache_entries_max = cache_entries_max
        self._cache_ttl_s = cache_ttl_s
        self._clock = clock
        self._cache: OrderedDict[str, _CacheEntry] = OrderedDict()
        self._lock = threading.Lock()

    @classmethod
    def from_settings(cls, settings: Settings) -> TokenVerifier:
        return cls(
            settings.hs256_keys(),
            issuer=settings.jwt_issuer,
            audience=settings.jwt_audience,
            leeway_s=settings.jwt_leeway_s,
            lifetime_max_s=settings.jwt_lifetime_max_s,
            public_keys=load_key_files(settings.jwt_public_key_files),
            jwks=JwksKeys(settings.jwks_url, refetch_interval_s=settings.jwks_refetch_interval_s)
            if settings.jwks_url
            else None,
            algorithms=settings.jwt_algorithms,
            claims=ClaimMapping(
                role_claim=settings.jwt_role_claim,
                branch_claim=settings.jwt_branch_claim,
                role_map=settings.jwt_role_map,
            ),
        )

    async def verify_async(self, token: str) -> Principal:
        """`verify`, fetching the provider's keys again for a key id it does not know (at
        most once per interval, whatever the tokens say)."""
        if self.jwks is not None and self.jwks.stale:
            await self.jwks.refresh()
        try:
            return self.verify(token)
        except UnknownKey:
            if self.jwks is None or not await self.jwks.refresh():
                raise
        return self.verify(token)

    def verify(self, token: str) -> Principal:
        now_s = self._clock()
        cached = self._cached(token, now_s)
        if cached is not None:
            return cached
        claims = self._decode(token)
        _check_time_claims(claims, now_s, self._lifetime_max_s, self._leeway_s)
        principal = _principal_from_claims(claims, self._claims)
        # Never trust a cached success past the token's own expiry.
        self._remember(token, principal, min(float(claims["exp"]), now_s + self._cache_ttl_s))
        return principal

    def _decode(self, token: str) -> dict[str, Any]:
        if not token or len(token) > TOKEN_CHARS_MAX:
            raise Unauthorized("malformed token")
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError:
            raise Unauthorized("malformed token") from None
        # An allow-list: `none`, HS512 and friends never pass; and the key found must have
        # been configured for the token's algorithm (no RS256 public key as HMAC secret).
        algorithm = header.get("alg")
        if algorithm not in self._algorithms:
            raise Unauthorized("token algorithm not allowed")
        kid = header.get("kid")
        if not isinstance(kid, str) or not kid:
            raise Unauthorized("token has no key id")
        key = self._key(kid, algorithm)
        try:
            claims: dict[str, Any] = jwt.decode(
                token,
                key,
                algorithms=[algorithm],
                audience=self._audience,
                issuer=self._issuer,
                leeway=self._leeway_s,
                options={"require": list(REQUIRED_CLAIMS), "verify_signature": True},
            )
        except jwt.ExpiredSignatureError:
            raise Unauthorized("token expired") from None
        except jwt.ImmatureSignatureError:
            raise Unauthorized("token not yet valid") from None
        except jwt.InvalidAudienceError:
            raise Unauthorized("token audience is wrong") from None
        except jwt.InvalidIssuerError:
            raise Unauthorized("token issuer is wrong") from None
        except jwt.MissingRequiredClaimError:
            raise Unauthorized("token lacks a required claim") from None
        except jwt.InvalidSignatureError:
            raise Unauthorized("token signature is invalid") from None
        except jwt.PyJWTError:
            raise Unauthorized("invalid token") from None
        return claims

    def _key(self, kid: str, algorithm: str) -> Any:
        if algorithm == ALGORITHM:
            secret = self._keys.get(kid)
            if secret is None:
                raise UnknownKey("token key id is unknown")
            return secret
        public = self._public_keys.get(kid)
        if public is None and self.jwks is not None:
            public = self.jwks.cached(kid)
        if public is None:
            raise UnknownKey("token key id is unknown")
        if public.algorithm != algorithm:
            raise Unauthorized("token algorithm does not match its key")
        return public.key

    def _cached(self, token: str, now_s: float) -> Principal | None:
        with self._lock:
            entry = self._cache.get(token)
            if entry is None:
                return None
            if entry.valid_until_s <= now_s:
                del self._cache[token]
                return None
            self._cache.move_to_end(token)
            return entry.principal

    def _remember(self, token: str, principal: Principal, valid_until_s: float) -> None:
        with self._lock:
            self._cache[token] = _CacheEntry(principal, valid_until_s)
            self._cache.move_to_end(token)
            while len(self._cache) > self._cache_entries_max:
                self._cache.popitem(last=False)


def _acceptable_subject(subject: str) -> bool:
    """The subject goes into every event the token's holder causes: it must be text the
    record can keep, exactly as sent (already NFC, no surrounding space)."""
    try:
        return acceptable_text(subject, chars_max=SUBJECT_CHARS_MAX) == subject
    except TextRefused:
        return False


def _check_time_claims(
    claims: Mapping[str, Any], now_s: float, lifetime_max_s: int, leeway_s: int
) -> None:
    """Whole seconds, of the right type (PyJWT takes `"exp": "1700000000"` and `nbf: true`),
    and a lifetime no longer than the operator allows, however it was signed."""
    for name in TIME_CLAIMS:
        value = claims.get(name)
        if type(value) is not int or not 0 <= value <= TIME_CLAIM_MAX:
            raise Unauthorized(f"token claim {name} is not a time in whole seconds")
    if claims["iat"] > now_s + leeway_s:
        raise Unauthorized("token issued in the future")
    if claims["exp"] - claims["iat"] > lifetime_max_s:
        raise Unauthorized("token lifetime exceeds the maximum")


def _principal_from_claims(claims: Mapping[str, Any], mapping: ClaimMapping) -> Principal:
    subject = claims.get("sub")
    if not isinstance(subject, str) or not _acceptable_subject(subject):
        raise Unauthorized("token subject is invalid")
    if subject.startswith(SYSTEM_SUBJECT_PREFIX):
        raise Unauthorized("token subject is reserved for the system")
    raw_role = mapping.role(claims)
    if raw_role is None or raw_role not in TOKEN_ROLES:
        raise Unauthorized("token role is missing or not allowed")
    role = Role(raw_role)
    branch = mapping.branch(claims)
    if branch is not None and (not isinstance(branch, str) or not BRANCH_PATTERN.fullmatch(branch)):
        raise Unauthorized("token branch is invalid")
    if role is Role.TELLER and branch is None:
        raise Unauthorized("teller token has no branch")
    return Principal(subject=subject, role=role, branch=branch)


# --- FastAPI adapter ------------------------------------------------------------------

# auto_error=False: a missing header must become our 401 problem, not FastAPI's default.
# As a sub-dependency it also puts the bearer scheme into the OpenAPI document.
bearer_scheme = HTTPBearer(
    auto_error=False,
    bearerFormat="JWT",
    description="JWT; `vigil token issue --role R [--branch B]` makes one.",
)

Bearer = Annotated[HTTPAuthorizationCredentials | None, Depends(bearer_scheme)]


# Headers a request may carry once (RFC 9110: a list of them has no meaning). Given twice,
# which one counts would be a guess a proxy in front of us might guess otherwise: whose
# token, which retry.
_AUTHORIZATION: Final = b"authorization"
_IDEMPOTENCY_KEY: Final = b"idempotency-key"
_SINGLETONS: Final = frozenset((_AUTHORIZATION, _IDEMPOTENCY_KEY))


def _repeated(request: Request) -> set[bytes]:
    """The singleton headers the request gives more than once, in one pass over them."""
    seen: set[bytes] = set()
    repeated: set[bytes] = set()
    for key, _ in request.scope["headers"]:
        if key in _SINGLETONS:
            (repeated if key in seen else seen).add(key)
    return repeated


async def authenticate(
    request: Request, credentials: HTTPAuthorizationCredentials | None
) -> Principal:
    """Verify the bearer token with the app's verifier and remember who called. A request
    with two Authorization headers is 401, with two Idempotency-Key headers 422."""
    repeated = _repeated(request)
    if _AUTHORIZATION in repeated:
        raise Unauthorized("the Authorization header is given more than once")
    if _IDEMPOTENCY_KEY in repeated:
        raise ValidationFailed(
            "the Idempotency-Key header is given more than once", field="header.Idempotency-Key"
        )
    if credentials is None:
        raise Unauthorized("missing bearer token")
    verifier: TokenVerifier = request.app.state.verifier
    principal = await verifier.verify_async(credentials.credentials)
    # The access log names the subject, even when the request is then forbidden.
    request.state.principal = principal
    return principal


def require(action: str) -> Callable[..., Awaitable[Principal]]:
    """A dependency: authenticated (401 otherwise) and allowed `action` (403 otherwise)."""
    if action not in PERMISSIONS:
        # A typo would deny everyone silently; fail when the route is declared instead.
        raise ValueError(f"unknown action {action!r}: add it to PERMISSIONS")

    async def dependency(request: Request, credentials: Bearer) -> Principal:
        principal = await authenticate(request, credentials)
        authorize(principal, action)
        return principal

    dependency.__name__ = f"require_{action.replace('.', '_')}"
    return dependency
