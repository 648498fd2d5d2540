"""Token verification, the RBAC matrix and token issuing. No I/O: keys live in memory."""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jwt
import pytest

from domain.errors import Forbidden
from infrastructure.settings import ConfigurationError, Settings
from interfaces.api.http.auth import (
    PERMISSIONS,
    Principal,
    TokenVerifier,
    Unauthorized,
    authorize,
    check_branch,
    require,
)
from interfaces.api.http.roles import Role
from interfaces.api.http.tokens import issue_token

# 64 bytes: PyJWT warns about shorter HMAC keys for HS512, which one test signs with.
KEY = "k" * 64
OTHER_KEY = "o" * 64
ISSUER = "vigil"
AUDIENCE = "vigil-api"


def _verifier(**kwargs: Any) -> TokenVerifier:
    return TokenVerifier({"dev": KEY, "old": OTHER_KEY}, issuer=ISSUER, audience=AUDIENCE, **kwargs)


def _claims(**overrides: Any) -> dict[str, Any]:
    now = int(time.time())
    claims: dict[str, Any] = {
        "sub": "alice",
        "role": "teller",
        "branch": "001",
        "iss": ISSUER,
        "aud": AUDIENCE,
        "iat": now,
        "nbf": now,
        "exp": now + 300,
    }
    claims.update(overrides)
    return {name: value for name, value in claims.items() if value is not None}


def _token(
    claims: dict[str, Any] | None = None,
    *,
    key: str = KEY,
    kid: str | None = "dev",
    algorithm: str = "HS256",
) -> str:
    headers = {"kid": kid} if kid is not None else {}
    return jwt.encode(claims or _claims(), key, algorithm=algorithm, headers=headers)


def _b64(data: dict[str, Any]) -> str:
    raw = json.dumps(data, separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def _unsigned_token(header: dict[str, Any], claims: dict[str, Any]) -> str:
    return f"{_b64(header)}.{_b64(claims)}."


def _settings(tmp_path: Path, **overrides: Any) -> Settings:
    values: dict[str, Any] = {"jwt_secret": KEY, "jwt_kid": "dev", "var_dir": tmp_path}
    values.update(overrides)
    return Settings(**values)


# --- TokenVerifier: accepted ----------------------------------------------------------


def test_a_valid_teller_token_yields_its_subject_role_and_branch() -> None:
    principal = _verifier().verify(_token())

    assert principal == Principal(subject="alice", role=Role.TELLER, branch="001")
    assert principal.actor == {"subject": "alice", "role": "teller"}


def test_a_token_signed_with_a_second_configured_key_is_accepted_by_its_kid() -> None:
    principal = _verifier().verify(_token(key=OTHER_KEY, kid="old"))

    assert principal.subject == "alice"


def test_a_non_teller_token_needs_no_branch() -> None:
    principal = _verifier().verify(_token(_claims(role="auditor", branch=None)))

    assert principal == Principal(subject="alice", role=Role.AUDITOR, branch=None)


def test_leeway_accepts_a_token_just_past_its_expiry() -> None:
    now = int(time.time())
    token = _token(_claims(iat=now - 100, nbf=now - 100, exp=now - 5))

    assert _verifier(leeway_s=30).verify(token).subject == "alice"


# --- TokenVerifier: refused -----------------------------------------------------------


def _refused(token: str) -> str:
    with pytest.raises(Unauthorized) as refusal:
        _verifier().verify(token)
    reason = refusal.value.reason
    if token:
        assert token not in reason
    return reason


def test_an_expired_token_is_refused() -> None:
    now = int(time.time())
    assert "expired" in _refused(_token(_claims(iat=now - 600, nbf=now - 600, exp=now - 1)))


def test_a_token_not_yet_valid_is_refused() -> None:
    now = int(time.time())
    assert "not yet valid" in _refused(_token(_claims(nbf=now + 120, exp=now + 600)))


def test_a_token_for_another_audience_is_refused() -> None:
    assert "audience" in _refused(_token(_claims(aud="someone-else")))


def test_a_token_from_another_issuer_is_refused() -> None:
    assert "issuer" in _refused(_token(_claims(iss="mallory")))


def test_a_token_signed_with_an_unconfigured_key_is_refused() -> None:
    assert "signature" in _refused(_token(key="x" * 64))


def test_a_token_signed_with_another_configured_key_than_its_kid_names_is_refused() -> None:
    _refused(_token(key=OTHER_KEY, kid="dev"))


def test_a_token_naming_an_unknown_kid_is_refused() -> None:
    assert "key id" in _refused(_token(kid="nope"))


def test_a_token_without_kid_is_refused() -> None:
    assert "key id" in _refused(_token(kid=None))


def test_an_alg_none_token_is_refused() -> None:
    token = _unsigned_token({"alg": "none", "typ": "JWT", "kid": "dev"}, _claims())

    assert "algorithm" in _refused(token)


def test_an_alg_none_token_in_other_spelling_is_refused() -> None:
    token = _unsigned_token({"alg": "None", "kid": "dev"}, _claims())

    assert "algorithm" in _refused(token)


def test_a_token_signed_with_hs512_is_refused() -> None:
    assert "algorithm" in _refused(_token(algorithm="HS512"))


def test_a_token_claiming_rs256_is_refused() -> None:
    # Hand-made: the classic confusion attack signs with the HMAC key but says RS256.
    token = _unsigned_token({"alg": "RS256", "typ": "JWT", "kid": "dev"}, _claims()) + "c2ln"

    # "dev" is an HMAC key: no RS256 key has that id.
    assert "key id" in _refused(token)


def test_a_token_with_a_tampered_payload_is_refused() -> None:
    header, _, signature = _token().split(".")
    forged = _b64(_claims(role="admin"))

    assert "signature" in _refused(f"{header}.{forged}.{signature}")


@pytest.mark.parametrize("claim", ["exp", "nbf", "iat", "iss", "aud", "sub"])
def test_a_token_missing_a_required_claim_is_refused(claim: str) -> None:
    claims = _claims()
    del claims[claim]

    _refused(_token(claims))


def test_a_token_without_role_is_refused() -> None:
    assert "role" in _refused(_token(_claims(role=None)))


def test_a_teller_token_without_branch_is_refused() -> None:
    assert "branch" in _refused(_token(_claims(branch=None)))


def test_a_teller_token_with_an_empty_branch_is_refused() -> None:
    assert "branch" in _refused(_token(_claims(branch="")))


def test_a_token_with_an_unknown_role_is_refused() -> None:
    assert "role" in _refused(_token(_claims(role="superuser")))


def test_a_token_claiming_the_system_role_is_refused() -> None:
    assert "role" in _refused(_token(_claims(role="system", branch=None)))


@pytest.mark.parametrize("garbage", ["", "not-a-token", "a.b.c", "x" * 9000])
def test_garbage_is_refused(garbage: str) -> None:
    _refused(garbage)


def test_a_token_with_a_system_subject_is_refused_whatever_its_role() -> None:
    assert "reserved" in _refused(_token(_claims(sub="system:rules")))
    assert "reserved" in _refused(_token(_claims(sub="system:holds", role="admin")))


def _time_claims(**overrides: Any) -> dict[str, Any]:
    now = int(time.time())
    return _claims(**{"iat": now - 10, "nbf": now - 10, "exp": now + 300, **overrides})


@pytest.mark.parametrize(
    "overrides",
    [
        # Functions of the time the test runs, not the time it was collected.
        pytest.param(lambda now: {"exp": str(now + 300)}, id="exp-as-string"),
        pytest.param(lambda now: {"nbf": True}, id="nbf-true"),
        pytest.param(lambda now: {"iat": float(now)}, id="iat-as-float"),
        pytest.param(lambda now: {"exp": 10**30}, id="exp-far-future"),
        pytest.param(lambda now: {"iat": -5}, id="iat-negative"),
    ],
)
def test_a_time_claim_of_the_wrong_type_or_range_is_refused(
    overrides: Callable[[int], dict[str, Any]],
) -> None:
    claims = _time_claims(**overrides(int(time.time())))
    assert "whole seconds" in _refused(_token(claims))


def test_a_token_living_longer_than_the_maximum_is_refused() -> None:
    now = int(time.time())
    long_lived = _token(_claims(iat=now, nbf=now, exp=now + 3601))
    with pytest.raises(Unauthorized, match="lifetime"):
        _verifier(lifetime_max_s=3600).verify(long_lived)
    at_the_maximum = _token(_claims(iat=now, nbf=now, exp=now + 3600))
    assert _verifier(lifetime_max_s=3600).verify(at_the_maximum).subject == "alice"


def test_a_token_issued_in_the_future_is_refused() -> None:
    now = int(time.time())
    _refused(_token(_claims(iat=now + 600, nbf=now, exp=now + 900)))


def test_issuing_a_token_beyond_the_maximum_lifetime_is_refused(tmp_path: Path) -> None:
    settings = _settings(tmp_path, jwt_lifetime_max_s=600)
    with pytest.raises(ValueError, match="JWT_LIFETIME_MAX_S"):
        issue_token(settings, role="admin", ttl_s=601)


# --- TokenVerifier: cache -------------------------------------------------------------


class _Clock:
    def __init__(self) -> None:
        self.now_s = time.time()

    def __call__(self) -> float:
        return self.now_s


def test_a_cached_token_is_accepted_without_verifying_again() -> None:
    verifier = _verifier()
    token = _token()
    verifier.verify(token)
    verifier._keys.clear()  # Re-verification would now fail: only the cache can answer.

    assert verifier.verify(token).subject == "alice"


def test_a_cached_token_is_verified_again_after_the_cache_ttl() -> None:
    clock = _Clock()
    verifier = _verifier(clock=clock, cache_ttl_s=30)
    token = _token()
    verifier.verify(token)
    verifier._keys.clear()

    clock.now_s += 31

    with pytest.raises(Unauthorized):
        verifier.verify(token)


def test_a_cached_token_is_not_trusted_past_its_expiry() -> None:
    clock = _Clock()
    now = int(clock.now_s)
    verifier = _verifier(clock=clock, cache_ttl_s=30)
    token = _token(_claims(exp=now + 10))
    verifier.verify(token)
    verifier._keys.clear()

    clock.now_s = now + 11

    with pytest.raises(Unauthorized):
        verifier.verify(token)


def test_the_cache_keeps_at_most_its_bound_of_entries() -> None:
    verifier = _verifier(cache_entries_max=2)
    tokens = [_token(_claims(sub=f"user-{n}")) for n in range(3)]

    for token in tokens:
        verifier.verify(token)

    assert len(verifier._cache) == 2
    assert tokens[0] not in verifier._cache


# --- RBAC -----------------------------------------------------------------------------

T, A, U, C, V = "teller", "admin", "auditor", "compliance", "viewer"

# Written out from the API contract, not derived from PERMISSIONS, so a slip in one shows.
EXPECTED_MATRIX: dict[str, set[str]] = {
    "account.open": {T, A},
    "account.deposit": {T},
    "account.withdraw": {T},
    "transfer.create": {T},
    "batch.submit": {T},
    "account.freeze": {A, C},
    "account.unfreeze": {A},
    "account.close": {A},
    "case.acknowledge": {C},
    "case.assign": {C},
    "case.escalate": {C},
    "case.close": {C},
    "case.comment": {C},
    "case.freeze_account": {A, C},
    "watchlist.manage": {C},
    "hold.place": {T},
    "hold.capture": {T, A},
    "hold.void": {T, A, C},
    "transaction.reverse": {A},
    "case.release": {C},
    "case.reject": {C},
    "suppression.manage": {C},
    "account.read": {T, A, U, C, V},
    "stats.read": {V, A, U, C},
    "projections.read": {A, U},
    "alerts.read": {C, U, A},
    "alerts.evidence": {C, U},
    "cases.read": {C, U, A},
    "watchlist.read": {C, U},
    "suppressions.read": {C, U},
    "audit.read": {U, C},
    "audit.export": {U, C},
    "audit.access_log": {U},
}


def test_the_permission_table_names_exactly_the_contract_actions() -> None:
    assert set(PERMISSIONS) == set(EXPECTED_MATRIX)


@pytest.mark.parametrize("action", sorted(EXPECTED_MATRIX))
@pytest.mark.parametrize("role", list(Role))
def test_authorize_allows_exactly_the_roles_the_contract_lists(action: str, role: Role) -> None:
    principal = Principal(subject="someone", role=role, branch="001")
    if role.value in EXPECTED_MATRIX[action]:
        authorize(principal, action)
    else:
        with pytest.raises(Forbidden):
            authorize(principal, action)


@pytest.mark.parametrize("role", list(Role))
def test_an_action_missing_from_the_table_is_denied_to_everyone(role: Role) -> None:
    with pytest.raises(Forbidden):
        authorize(Principal(subject="someone", role=role, branch="001"), "account.delete")


def test_requiring_an_unknown_action_fails_when_the_route_is_declared() -> None:
    with pytest.raises(ValueError, match="unknown action"):
        require("account.delete")


def test_a_teller_may_act_on_their_own_branch() -> None:
    check_branch(Principal(subject="t", role=Role.TELLER, branch="001"), "001")


def test_a_teller_may_not_act_on_another_branch() -> None:
    with pytest.raises(Forbidden):
        check_branch(Principal(subject="t", role=Role.TELLER, branch="001"), "002")


@pytest.mark.parametrize("role", [Role.ADMIN, Role.AUDITOR, Role.COMPLIANCE, Role.VIEWER])
def test_roles_other_than_teller_are_not_branch_scoped(role: Role) -> None:
    check_branch(Principal(subject="x", role=role, branch=None), "002")


# --- issue_token ----------------------------------------------------------------------


def test_an_issued_teller_token_verifies_with_the_same_settings(tmp_path: Path) -> None:
    settings = _settings(tmp_path)
    token = issue_token(settings, role="teller", branch="001", subject="bob")

    principal = TokenVerifier.from_settings(settings).verify(token)

    assert principal == Principal(subject="bob", role=Role.TELLER, branch="001")
    assert jwt.get_unverified_header(token)["kid"] == "dev"


def test_an_issued_token_defaults_its_subject_to_the_role(tmp_path: Path) -> None:
    settings = _settings(tmp_path)

    principal = TokenVerifier.from_settings(settings).verify(issue_token(settings, role="admin"))

    assert principal == Principal(subject="admin-dev", role=Role.ADMIN, branch=None)


def test_an_issued_token_carries_every_required_claim_and_its_ttl(tmp_path: Path) -> None:
    settings = _settings(tmp_path)
    now = time.time()

    token = issue_token(settings, role="viewer", ttl_s=60, now=now)

    claims = jwt.decode(token, options={"verify_signature": False})
    assert {"sub", "role", "iss", "aud", "iat", "nbf", "exp"} <= set(claims)
    assert claims["exp"] - claims["iat"] == 60


def test_an_issued_token_signs_with_the_key_jwt_kid_names(tmp_path: Path) -> None:
    settings = _settings(
        tmp_path, jwt_secret=None, jwt_keys={"a": KEY, "b": OTHER_KEY}, jwt_kid="b"
    )

    token = issue_token(settings, role="auditor")

    assert jwt.get_unverified_header(token)["kid"] == "b"
    assert TokenVerifier.from_settings(settings).verify(token).role is Role.AUDITOR


def test_issuing_a_teller_token_without_branch_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="branch"):
        issue_token(_settings(tmp_path), role="teller")


def test_issuing_a_system_token_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="role"):
        issue_token(_settings(tmp_path), role="system")


def test_issuing_with_a_kid_that_names_no_key_is_a_configuration_error(tmp_path: Path) -> None:
    settings = _settings(tmp_path, jwt_secret=None, jwt_keys={"a": KEY}, jwt_kid="b")

    with pytest.raises(ConfigurationError):
        issue_token(settings, role="admin")


def test_an_expired_issued_token_is_refused(tmp_path: Path) -> None:
    settings = _settings(tmp_path)
    token = issue_token(settings, role="admin", ttl_s=60, now=time.time() - 120)

    with pytest.raises(Unauthorized):
        TokenVerifier.from_settings(settings).verify(token)
