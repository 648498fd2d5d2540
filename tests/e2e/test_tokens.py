"""Bearer tokens over real HTTP: every kind of bad token is a 401 problem, and key
rotation (two configured kids) accepts tokens signed with either key."""

from __future__ import annotations

import base64
import json
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest

from infrastructure.settings import Settings
from interfaces.api.http.tokens import issue_token
from tests.conftest import ApiServer, start_command_api
from tests.e2e.conftest import HTTP_TIMEOUT_S, assert_problem, bearer

pytestmark = pytest.mark.e2e

OTHER_SECRET = "another-secret-" + "y" * 40


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _segment(value: dict[str, Any]) -> str:
    return _b64(json.dumps(value, separators=(",", ":")).encode())


def _claims(settings: Settings, **changes: Any) -> dict[str, Any]:
    """An admin's valid claims; `changes` override them, a value of None drops the claim."""
    now_s = int(time.time())
    claims: dict[str, Any] = {
        "sub": f"token-test-{uuid.uuid4()}",
        "role": "admin",
        "iss": settings.jwt_issuer,
        "aud": settings.jwt_audience,
        "iat": now_s,
        "nbf": now_s,
        "exp": now_s + 600,
    }
    for name, value in changes.items():
        if value is None:
            claims.pop(name, None)
        else:
            claims[name] = value
    return claims


def _sign(
    settings: Settings,
    claims: dict[str, Any],
    *,
    key: str | None = None,
    algorithm: str = "HS256",
    headers: dict[str, Any] | None = None,
) -> str:
    kid = settings.jwt_kid
    secret = key if key is not None else settings.jwt_keys_resolved()[kid]
    return jwt.encode(
        claims, secret, algorithm=algorithm, headers={"kid": kid} if headers is None else headers
    )


def _alg_none(settings: Settings) -> str:
    header = {"alg": "none", "typ": "JWT", "kid": settings.jwt_kid}
    return f"{_segment(header)}.{_segment(_claims(settings))}."


def _tampered(settings: Settings) -> str:
    """A real viewer token whose payload now says admin, signature kept."""
    valid = issue_token(settings, role="viewer", subject=f"tamper-{uuid.uuid4()}")
    header, payload, signature = valid.split(".")
    claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    claims["role"] = "admin"
    return f"{header}.{_segment(claims)}.{signature}"


def _without_kid(settings: Settings) -> str:
    secret = settings.jwt_keys_resolved()[settings.jwt_kid]
    return jwt.encode(_claims(settings), secret, algorithm="HS256")


BAD_TOKENS: dict[str, Callable[[Settings], str]] = {
    "expired": lambda s: issue_token(s, role="admin", ttl_s=60, now=time.time() - 3600),
    "not_yet_valid": lambda s: _sign(s, _claims(s, nbf=int(time.time()) + 3600)),
    "other_audience": lambda s: _sign(s, _claims(s, aud="someone-else")),
    "other_issuer": lambda s: _sign(s, _claims(s, iss="not-vigil")),
    "other_key": lambda s: _sign(s, _claims(s), key=OTHER_SECRET),
    "unknown_kid": lambda s: _sign(s, _claims(s), headers={"kid": "nobody-knows-me"}),
    "no_kid": _without_kid,
    "alg_none": _alg_none,
    "hs512": lambda s: _sign(s, _claims(s), algorithm="HS512"),
    "tampered_role": _tampered,
    "missing_sub": lambda s: _sign(s, _claims(s, sub=None)),
    "missing_exp": lambda s: _sign(s, _claims(s, exp=None)),
    "missing_role": lambda s: _sign(s, _claims(s, role=None)),
    "missing_nbf": lambda s: _sign(s, _claims(s, nbf=None)),
    "missing_iat": lambda s: _sign(s, _claims(s, iat=None)),
    "missing_iss": lambda s: _sign(s, _claims(s, iss=None)),
    "missing_aud": lambda s: _sign(s, _claims(s, aud=None)),
    "unknown_role": lambda s: _sign(s, _claims(s, role="superuser")),
    "system_role": lambda s: _sign(s, _claims(s, role="system")),
    "teller_without_branch": lambda s: _sign(s, _claims(s, role="teller")),
    "empty_subject": lambda s: _sign(s, _claims(s, sub="")),
    "garbage": lambda s: "garbage",
    "garbage_three_segments": lambda s: "abc.def.ghi",
    "garbage_base64_json": lambda s: f"{_segment({'alg': 'HS256'})}.{_segment({})}",
    "oversized": lambda s: "a" * 9000,
}


def _open_account_body() -> dict[str, str]:
    return {"owner": f"token-test-{uuid.uuid4()}", "branch": "001", "currency": "GBP"}


def _assert_unauthorized(response: httpx.Response) -> None:
    assert_problem(response, 401, "unauthorized")
    assert response.headers.get("www-authenticate", "").startswith("Bearer"), response.headers


# HS512 with our 52-byte key is exactly the kind of token we refuse; pyjwt warns on making it.
@pytest.mark.filterwarnings("ignore::jwt.warnings.InsecureKeyLengthWarning")
@pytest.mark.parametrize("kind", list(BAD_TOKENS))
def test_a_bad_bearer_token_is_unauthorized(
    http: httpx.Client, api_settings: Settings, kind: str
) -> None:
    token = BAD_TOKENS[kind](api_settings)
    response = http.post("/v1/accounts", json=_open_account_body(), headers=bearer(token))
    _assert_unauthorized(response)
    if len(token) > 20:
        assert token not in response.text, "a refused token is never echoed back"


@pytest.mark.parametrize(
    "headers",
    [
        pytest.param({}, id="no_authorization_header"),
        pytest.param({"Authorization": "Basic YWRtaW46YWRtaW4="}, id="basic_scheme"),
        pytest.param({"Authorization": "Bearer"}, id="bearer_without_token"),
        pytest.param({"Authorization": "Token abc"}, id="other_scheme"),
    ],
)
def test_a_missing_or_non_bearer_authorization_is_unauthorized(
    http: httpx.Client, headers: dict[str, str]
) -> None:
    response = http.post("/v1/accounts", json=_open_account_body(), headers=headers)
    _assert_unauthorized(response)


def test_authentication_is_checked_before_the_body(http: httpx.Client) -> None:
    """A caller without a token learns nothing, not even that its body is wrong."""
    response = http.post("/v1/accounts", json={"nonsense": True})
    _assert_unauthorized(response)


def test_a_valid_token_is_accepted(http: httpx.Client, api_settings: Settings) -> None:
    response = http.post(
        "/v1/accounts",
        json=_open_account_body(),
        headers=bearer(_sign(api_settings, _claims(api_settings))),
    )
    assert response.status_code == 201, response.text


def test_a_rejected_token_does_not_poison_the_valid_one_it_was_tampered_from(
    http: httpx.Client, api_settings: Settings
) -> None:
    valid = issue_token(api_settings, role="admin", subject=f"cache-{uuid.uuid4()}")
    assert (
        http.post("/v1/accounts", json=_open_account_body(), headers=bearer(valid)).status_code
        == 201
    )
    header, payload, signature = valid.split(".")
    forged = f"{header}.{payload}.{signature[:-4]}AAAA"
    _assert_unauthorized(
        http.post("/v1/accounts", json=_open_account_body(), headers=bearer(forged))
    )
    assert (
        http.post("/v1/accounts", json=_open_account_body(), headers=bearer(valid)).status_code
        == 201
    )


@pytest.fixture
def rotating_server(settings_factory: Any, tmp_path: Path) -> Iterator[ApiServer]:
    settings = settings_factory(
        jwt_keys={"old": "old-key-" + "o" * 40, "new": "new-key-" + "n" * 40}, jwt_kid="new"
    )
    server = start_command_api(settings, tmp_path / "logs")
    yield server
    server.stop()


def test_during_key_rotation_tokens_signed_with_either_key_are_accepted(
    rotating_server: ApiServer,
) -> None:
    new_settings: Settings = rotating_server.settings
    old_settings = new_settings.model_copy(update={"jwt_kid": "old"})
    new_token = issue_token(new_settings, role="admin", subject="rotation-new")
    old_token = issue_token(old_settings, role="admin", subject="rotation-old")
    assert jwt.get_unverified_header(new_token)["kid"] == "new"
    assert jwt.get_unverified_header(old_token)["kid"] == "old"
    with httpx.Client(base_url=rotating_server.url, timeout=HTTP_TIMEOUT_S) as client:
        for token in (new_token, old_token):
            response = client.post("/v1/accounts", json=_open_account_body(), headers=bearer(token))
            assert response.status_code == 201, response.text
        # The kid must name the key that signed it: the old key under the new kid fails.
        crossed = jwt.encode(
            _claims(new_settings), "old-key-" + "o" * 40, algorithm="HS256", headers={"kid": "new"}
        )
        _assert_unauthorized(
            client.post("/v1/accounts", json=_open_account_body(), headers=bearer(crossed))
        )
        # The session server's key is not one of this server's.
        stranger = jwt.encode(
            _claims(new_settings),
            "test-secret-" + "x" * 40,
            algorithm="HS256",
            headers={"kid": "test"},
        )
        _assert_unauthorized(
            client.post("/v1/accounts", json=_open_account_body(), headers=bearer(stranger))
        )
