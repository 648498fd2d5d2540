"""Rate limits and receive deadlines over real HTTP, with the session's Redis: a subject
past its bucket gets 429 `rate_limited` with Retry-After and RateLimit-* headers, others
keep theirs; callers without a valid token are limited by address (X-Forwarded-For only
from a trusted proxy); Redis down lets everything through; a request that will not
arrive whole is cut off."""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from pathlib import Path
from uuid import uuid4

import httpx
import orjson
import pytest

from infrastructure.settings import Settings
from tests.conftest import ApiServer, Databases, start_command_api
from tests.e2e.conftest import assert_problem, bearer, make_token

pytestmark = pytest.mark.e2e

CLOSE_BOUND_S = 6.0


def _server(databases: Databases, tmp: Path, **overrides: object) -> Iterator[ApiServer]:
    values: dict[str, object] = {"redis_key_prefix": f"vigil-test-rl-{uuid4().hex[:8]}:"}
    values.update(overrides)
    settings = databases.settings_for(databases.fresh(), tmp, **values)
    server = start_command_api(settings, tmp / "logs")
    yield server
    server.stop()


@pytest.fixture(scope="module")
def limited(databases: Databases, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ApiServer]:
    yield from _server(
        databases,
        tmp_path_factory.mktemp("limited"),
        rate_limit_commands_per_s=0.2,
        rate_limit_commands_burst=3,
        rate_limit_anonymous_per_s=0.2,
        rate_limit_anonymous_burst=2,
        trusted_proxies=["127.0.0.1/32"],
        request_receive_timeout_s=1,
    )


def _post(server: ApiServer, headers: dict[str, str]) -> httpx.Response:
    return httpx.post(f"{server.url}/v1/transfers", json={}, headers=headers, timeout=10)


def _token(settings: Settings, subject: str) -> dict[str, str]:
    return bearer(make_token(settings, "teller", subject=subject))


def test_a_subject_past_its_bucket_gets_429_and_another_subject_does_not(
    limited: ApiServer,
) -> None:
    alice = _token(limited.settings, f"alice-{uuid4()}")
    answers = [_post(limited, alice) for _ in range(3)]
    assert [a.status_code for a in answers] == [422, 422, 422]
    assert [a.headers["RateLimit-Remaining"] for a in answers] == ["2", "1", "0"]
    assert answers[0].headers["RateLimit-Limit"] == "3"

    refused = _post(limited, alice)
    assert_problem(refused, 429, "rate_limited")
    assert 1 <= int(refused.headers["Retry-After"]) <= 5
    assert refused.headers["RateLimit-Remaining"] == "0"
    assert int(refused.headers["RateLimit-Reset"]) >= 1

    assert _post(limited, _token(limited.settings, f"bob-{uuid4()}")).status_code == 422


def test_callers_without_a_valid_token_are_limited_by_their_forwarded_address(
    limited: ApiServer,
) -> None:
    # Never .7, the other address below: one run in 200 drew it and shared its bucket.
    first = {"X-Forwarded-For": f"198.51.100.{uuid4().int % 200 + 10}"}
    assert [_post(limited, first).status_code for _ in range(2)] == [401, 401]
    assert_problem(_post(limited, first), 429, "rate_limited")
    forged = {**first, "Authorization": "Bearer x.y.z"}
    assert_problem(_post(limited, forged), 429, "rate_limited")
    # Another address (the peer, 127.0.0.1, is a trusted proxy) has a bucket of its own.
    assert _post(limited, {"X-Forwarded-For": "203.0.113.9, 198.51.100.7"}).status_code == 401


def test_probes_are_never_limited(limited: ApiServer) -> None:
    for _ in range(5):
        assert httpx.get(f"{limited.url}/health/live", timeout=5).status_code == 200


def _closed_within(sock: socket.socket, bound_s: float) -> float:
    started = time.monotonic()
    sock.settimeout(bound_s)
    while True:
        chunk = sock.recv(4096)
        if not chunk:
            return time.monotonic() - started


@pytest.mark.parametrize(
    "partial",
    [
        b"POST /v1/transfers HTTP/1.1\r\nHost: x\r\nContent-Type: app",
        b"POST /v1/transfers HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b'Content-Length: 100\r\n\r\n{"amount":',
    ],
    ids=["headers", "body"],
)
def test_a_request_that_does_not_arrive_whole_in_time_is_cut_off(
    limited: ApiServer, partial: bytes
) -> None:
    with socket.create_connection(("127.0.0.1", limited.port), timeout=5) as sock:
        sock.sendall(partial)
        assert _closed_within(sock, CLOSE_BOUND_S) < CLOSE_BOUND_S


@pytest.mark.parametrize(
    "request_bytes",
    [
        b"POST /v1/transfers HTTP/1.1\r\nHost: x\r\nIdempotency-Key: a\x00b\r\n"
        b"Content-Length: 2\r\n\r\n{}",
        b"POST /v1/transfers HTTP/1.1\r\nHost: x\r\nContent-Length: -1\r\n\r\n{}",
        b"POST /v1/transfers HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n{}",
        b"GET /v1/transfers HTTP/9\r\n\r\n",
    ],
    ids=["nul-in-header", "negative-length", "length-and-chunked", "bad-version"],
)
def test_a_request_that_is_not_http_gets_a_bad_request_problem(
    limited: ApiServer, request_bytes: bytes
) -> None:
    """The HTTP parser refuses it before the app sees it; the answer is still a problem."""
    with socket.create_connection(("127.0.0.1", limited.port), timeout=5) as sock:
        sock.sendall(request_bytes)
        reply = b""
        sock.settimeout(CLOSE_BOUND_S)
        while chunk := sock.recv(4096):  # the server closes the connection after it
            reply += chunk
    head, _, body = reply.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 400 "), reply
    assert b"content-type: application/problem+json" in head.lower()
    problem = orjson.loads(body)
    assert (problem["status"], problem["code"]) == (400, "bad_request")
    assert problem["detail"]


def test_when_redis_is_down_requests_pass_unlimited(
    databases: Databases, tmp_path_factory: pytest.TempPathFactory
) -> None:
    for server in _server(
        databases,
        tmp_path_factory.mktemp("no-redis"),
        redis_url="redis://127.0.0.1:1/0",
        rate_limit_commands_per_s=0.1,
        rate_limit_commands_burst=1,
    ):
        alice = _token(server.settings, "alice")
        assert [_post(server, alice).status_code for _ in range(4)] == [422] * 4
        metrics = httpx.get(f"{server.url}/metrics", timeout=5).text
        line = next(
            line
            for line in metrics.splitlines()
            if line.startswith("vigil_rate_limit_unavailable_total ")
        )
        assert float(line.split()[1]) >= 4
