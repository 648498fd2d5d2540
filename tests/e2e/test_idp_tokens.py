"""Tokens from an identity provider, over real HTTP: the test serves a JWKS document
itself; the command API fetches it, accepts RS256 and ES256 tokens whose `groups` map onto
Vigil's roles, refuses HS256 when not allowed, picks up a key added later (refetching on
an unknown kid, at most once per interval however many made-up kids arrive), and
`vigil token issue --key-file` signs tokens such keys verify."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from infrastructure.settings import Settings
from interfaces.api.http.auth import TokenVerifier
from interfaces.api.http.idp import load_key_files
from interfaces.api.http.tokens import issue_token
from tests.conftest import ROOT, ApiServer, Databases, settings_env, start_command_api
from tests.e2e.conftest import assert_problem

pytestmark = pytest.mark.e2e

REFETCH_S = 2.0
ROLE_MAP = {"vigil-tellers": "teller", "vigil-admins": "admin", "vigil-viewers": "viewer"}


@dataclass
class Jwks:
    """A JWKS document served over HTTP by this test, and how often it was fetched."""

    keys: dict[str, Any] = field(default_factory=dict)
    fetches: int = 0

    def add(self, kid: str, private: Any) -> None:
        jwk = json.loads(jwt.algorithms.get_default_algorithms()[_alg(private)].to_jwk(
            private.public_key()
        ))  # fmt: skip
        self.keys[kid] = {**jwk, "kid": kid, "use": "sig", "alg": _alg(private)}


def _alg(private: Any) -> str:
    return "RS256" if isinstance(private, rsa.RSAPrivateKey) else "ES256"


@pytest.fixture(scope="module")
def jwks() -> Iterator[tuple[Jwks, str]]:
    document = Jwks()

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            document.fetches += 1
            body = json.dumps({"keys": list(document.keys.values())}).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield document, f"http://127.0.0.1:{server.server_address[1]}/.well-known/jwks.json"
    server.shutdown()


RSA_KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)
EC_KEY = ec.generate_private_key(ec.SECP256R1())


@pytest.fixture(scope="module")
def idp_api(
    databases: Databases, tmp_path_factory: pytest.TempPathFactory, jwks: tuple[Jwks, str]
) -> Iterator[ApiServer]:
    document, url = jwks
    document.add("rsa-1", RSA_KEY)
    document.add("ec-1", EC_KEY)
    tmp = tmp_path_factory.mktemp("idp")
    settings = databases.settings_for(
        databases.fresh(),
        tmp,
        jwks_url=url,
        jwt_algorithms=["RS256", "ES256"],
        jwt_role_claim="groups",
        jwt_role_map=ROLE_MAP,
        jwt_branch_claim="branch_code",
        jwks_refetch_interval_s=REFETCH_S,
    )
    server = start_command_api(settings, tmp / "logs")
    yield server
    server.stop()


def _idp_token(settings: Settings, private: Any, kid: str, **claims: Any) -> str:
    now = int(time.time())
    body = {
        "sub": f"idp-{uuid.uuid4()}",
        "iss": settings.jwt_issuer,
        "aud": settings.jwt_audience,
        "iat": now,
        "nbf": now,
        "exp": now + 600,
        **claims,
    }
    return jwt.encode(body, private, algorithm=_alg(private), headers={"kid": kid})


def _open(server: ApiServer, token: str, branch: str = "001") -> httpx.Response:
    body = {"owner": f"idp-{uuid.uuid4()}", "branch": branch, "currency": "GBP"}
    return httpx.post(
        f"{server.url}/v1/accounts",
        json=body,
        headers={"Authorization": f"Bearer {token}"},
        timeout=10,
    )


def test_rs256_and_es256_tokens_from_the_jwks_map_their_groups_to_roles(
    idp_api: ApiServer,
) -> None:
    settings = idp_api.settings
    teller = _idp_token(
        settings, RSA_KEY, "rsa-1", groups=["staff", "vigil-tellers"], branch_code="001"
    )
    assert _open(idp_api, teller).status_code == 201
    assert_problem(_open(idp_api, teller, branch="002"), 403, "forbidden")
    admin = _idp_token(settings, EC_KEY, "ec-1", groups=["vigil-admins"])
    assert _open(idp_api, admin, branch="002").status_code == 201
    viewer = _idp_token(settings, EC_KEY, "ec-1", groups="vigil-viewers")
    assert_problem(_open(idp_api, viewer), 403, "forbidden")


@pytest.mark.parametrize(
    "claims",
    [
        {"groups": ["vigil-tellers", "vigil-admins"], "branch_code": "001"},  # two roles
        {"groups": ["staff"]},  # none
        {"groups": ["vigil-tellers"]},  # a teller without a branch
        {"role": "admin"},  # Vigil's own claim is not the provider's
    ],
)
def test_claims_that_map_to_no_single_role_are_refused(
    idp_api: ApiServer, claims: dict[str, Any]
) -> None:
    token = _idp_token(idp_api.settings, RSA_KEY, "rsa-1", **claims)
    assert_problem(_open(idp_api, token), 401, "unauthorized")


def test_hs256_tokens_are_refused_when_only_the_providers_algorithms_are_allowed(
    idp_api: ApiServer,
) -> None:
    token = issue_token(idp_api.settings, role="admin")
    assert_problem(_open(idp_api, token), 401, "unauthorized")


def test_a_key_published_later_is_fetched_once_and_made_up_kids_cost_no_more_fetches(
    idp_api: ApiServer, jwks: tuple[Jwks, str]
) -> None:
    document, _ = jwks
    rotated = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    document.add("rsa-2", rotated)
    time.sleep(REFETCH_S)  # past the interval of the fetches before
    before = document.fetches
    token = _idp_token(idp_api.settings, rotated, "rsa-2", groups=["vigil-admins"])
    assert _open(idp_api, token).status_code == 201
    picked_up = document.fetches
    assert picked_up >= before + 1  # the new kid made it fetch the document again
    started = time.monotonic()
    for _ in range(20):
        forged = _idp_token(idp_api.settings, rotated, f"made-up-{uuid.uuid4()}", groups=[])
        assert_problem(_open(idp_api, forged), 401, "unauthorized")
    # At most one fetch per interval however many made-up kids: on a loaded machine the
    # 20 requests may outlast an interval (2 s), which allows one more each time.
    intervals = int((time.monotonic() - started) / REFETCH_S)
    assert document.fetches <= picked_up + intervals, (document.fetches, intervals)


def test_vigil_token_issue_signs_with_a_key_file_that_its_public_key_verifies(
    tmp_path: Path, api_settings: Settings
) -> None:
    for private, name in ((RSA_KEY, "bank-rsa"), (EC_KEY, "bank-ec")):
        pem = tmp_path / f"{name}.pem"
        pem.write_bytes(
            private.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )
        public = tmp_path / f"{name}.pub"
        public.write_bytes(
            private.public_key().public_bytes(
                serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
            )
        )
        issued = subprocess.run(
            [
                *(sys.executable, "-m", "interfaces.cli", "token", "issue"),
                *("--role", "teller", "--branch", "007", "--key-file", str(pem)),
            ],
            cwd=ROOT,
            env=settings_env(api_settings),
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        )
        token = issued.stdout.strip()
        assert jwt.get_unverified_header(token) == {"alg": _alg(private), "kid": name, "typ": "JWT"}
        verifier = TokenVerifier(
            {},
            issuer=api_settings.jwt_issuer,
            audience=api_settings.jwt_audience,
            public_keys=load_key_files({name: public}),
        )
        principal = verifier.verify(token)
        assert (principal.role.value, principal.branch) == ("teller", "007")
