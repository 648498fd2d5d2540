"""The money routes' shorter way through FastAPI answers exactly as FastAPI does.

Two command APIs, each a real process on a database of its own: one serves deposits,
withdrawals, transfers and batches the short way (the default), the other with
`VIGIL_FAST_ROUTES=false`. The same script of requests (successes, replays, conflicts,
every kind of refusal and malformed input) goes to both, with idempotency keys that give
the same ids on both, and every reply must be the same: status, body and headers (but
the date and the correlation id each request gets).
"""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from domain.ids import NAMESPACE
from infrastructure.settings import Settings
from tests.conftest import RUN_ID, ApiServer, Databases, start_command_api
from tests.e2e.conftest import bearer, make_token

pytestmark = pytest.mark.e2e

SUBJECT = "fast-route-teller"
OTHER_BRANCH = "002"
# What differs between two servers answering the same request, by design.
PER_REQUEST_HEADERS = frozenset({"date", "x-correlation-id", "server"})
FAST_ROUTE_METRIC = re.compile(
    r'^vigil_http_fast_route_requests_total\{outcome="(\w+)"\} ([0-9.e+]+)$', re.M
)


@dataclass
class Twin:
    """The same request, sent to both servers; each pair of replies recorded."""

    fast: httpx.Client
    usual: httpx.Client
    settings: Settings
    replies: list[tuple[str, httpx.Response, httpx.Response]] = field(default_factory=list)

    def token(self, role: str = "teller", branch: str | None = "001") -> dict[str, str]:
        if role != "teller":
            branch = None
        subject = SUBJECT if role == "teller" else f"fast-route-{role}"
        return bearer(make_token(self.settings, role, branch=branch, subject=subject))

    def send(
        self,
        label: str,
        path: str,
        body: Any = None,
        *,
        raw: bytes | None = None,
        headers: dict[str, str] | None = None,
        auth: dict[str, str] | None = None,
        keyed: bool = True,
    ) -> httpx.Response:
        # Keyed by its label unless told otherwise, so that a success has the same id on both.
        key = {"Idempotency-Key": label} if keyed else {}
        sent = {"content-type": "application/json", **key, **(auth or self.token())}
        sent.update(headers or {})
        content = raw if raw is not None else json.dumps(body).encode()
        replies = [
            client.post(path, content=content, headers=sent) for client in (self.fast, self.usual)
        ]
        self.replies.append((label, replies[0], replies[1]))
        return replies[0]


def _id(key: str) -> str:
    return str(uuid.uuid5(NAMESPACE, f"{SUBJECT}:{key}"))


@pytest.fixture(scope="module")
def twin(databases: Databases, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Twin]:
    servers: list[ApiServer] = []
    try:
        for fast in (True, False):
            var_dir: Path = tmp_path_factory.mktemp(f"var-fast-routes-{fast}")
            settings = databases.settings_for(
                databases.fresh(),
                var_dir,
                fast_routes=fast,
                # Replies are cached in Redis by command id: the two must not share them.
                redis_key_prefix=f"vigil-test-{RUN_ID}:fast-{fast}:",
            )
            servers.append(start_command_api(settings, var_dir / "logs"))
        with (
            httpx.Client(base_url=servers[0].url, timeout=30) as fast_client,
            httpx.Client(base_url=servers[1].url, timeout=30) as usual_client,
        ):
            yield Twin(fast_client, usual_client, servers[0].settings)
    finally:
        for server in servers:
            server.stop()


def _open(twin: Twin, key: str, branch: str = "001", currency: str = "GBP") -> str:
    auth = twin.token(branch=branch)
    body = {"owner": f"Owner {key}", "branch": branch, "currency": currency}
    reply = twin.send(
        f"open {key}", "/v1/accounts", body, auth=auth, headers={"Idempotency-Key": key}
    )
    assert reply.status_code == 201, reply.text
    return str(reply.json()["account_id"])


def _metric(client: httpx.Client) -> dict[str, float]:
    text = client.get("/metrics").text
    return {outcome: float(value) for outcome, value in FAST_ROUTE_METRIC.findall(text)}


def test_the_short_way_answers_every_request_as_fastapi_does(twin: Twin) -> None:
    before = _metric(twin.fast)
    a, b = _open(twin, "fast-a"), _open(twin, "fast-b")
    c = _open(twin, "fast-c", branch=OTHER_BRANCH)
    d = _open(twin, "fast-d", currency="EUR")
    deposit, withdraw = f"/v1/accounts/{a}/deposits", f"/v1/accounts/{a}/withdrawals"
    money = {"amount": "100.00", "currency": "GBP"}
    key = {"Idempotency-Key": "dep-1"}

    twin.send("deposit", deposit, money, headers=key)
    twin.send("deposit replayed", deposit, money, headers=key)
    twin.send("deposit, same key, other amount", deposit, {**money, "amount": "1.00"}, headers=key)
    own_id = {**money, "transaction_id": _id("own")}
    twin.send("deposit with its own id", deposit, own_id, keyed=False)
    twin.send(
        "transaction id and key disagree",
        deposit,
        {**money, "transaction_id": _id("x")},
        headers={"Idempotency-Key": "y"},
    )
    twin.send("key too long", deposit, money, headers={"Idempotency-Key": "k" * 201})
    twin.send(
        "withdrawal",
        withdraw,
        {"amount": "30.00", "currency": "GBP"},
        headers={"Idempotency-Key": "w-1"},
    )
    twin.send("withdrawal beyond the balance", withdraw, {"amount": "1000.00", "currency": "GBP"})
    twin.send("withdrawal in another currency", withdraw, {"amount": "1.00", "currency": "EUR"})
    twin.send("deposit to nobody", f"/v1/accounts/{_id('ghost')}/deposits", money)
    ghost_target = {"from_account_id": a, "to_account_id": _id("ghost"), **money}
    twin.send("transfer to nobody", "/v1/transfers", ghost_target)
    twin.send("deposit to a malformed id", "/v1/accounts/not-a-uuid/deposits", money)
    twin.send("malformed JSON", deposit, raw=b'{"amount": "1.00",')
    twin.send(
        "a key twice", deposit, raw=b'{"amount": "1.00", "amount": "2.00", "currency": "GBP"}'
    )
    twin.send("not JSON", deposit, raw=b"amount=1.00", headers={"content-type": "text/plain"})
    twin.send("empty body", deposit, raw=b"")
    twin.send("a list, not an object", deposit, [money])
    twin.send("unknown field", deposit, {**money, "memo": "x"})
    for amount in ("1.001", "0.00", "-1.00", "abc", 1.0):
        twin.send(f"amount {amount!r}", deposit, {**money, "amount": amount})
    twin.send("no token", deposit, money, auth={"x-no-auth": "1"})
    twin.send("a forged token", deposit, money, auth={"Authorization": "Bearer x.y.z"})
    twin.send("an admin may not deposit", deposit, money, auth=twin.token("admin"))
    twin.send("a viewer may not deposit", deposit, money, auth=twin.token("viewer"))
    twin.send("another branch's teller", deposit, money, auth=twin.token(branch=OTHER_BRANCH))
    transfer = {"from_account_id": a, "to_account_id": b, "amount": "10.00", "currency": "GBP"}
    twin.send("transfer", "/v1/transfers", transfer, headers={"Idempotency-Key": "t-1"})
    twin.send("transfer replayed", "/v1/transfers", transfer, headers={"Idempotency-Key": "t-1"})
    twin.send("transfer to another branch", "/v1/transfers", {**transfer, "to_account_id": c})
    twin.send("transfer from another branch", "/v1/transfers", {**transfer, "from_account_id": c})
    twin.send("transfer across currencies", "/v1/transfers", {**transfer, "to_account_id": d})
    twin.send("transfer to itself", "/v1/transfers", {**transfer, "to_account_id": a})
    twin.send("transfer without a target", "/v1/transfers", {**transfer, "to_account_id": None})
    items = [
        {"type": "deposit", "account_id": b, "amount": "5.00", "currency": "GBP"},
        {"type": "withdrawal", "account_id": b, "amount": "5000.00", "currency": "GBP"},
        {"type": "deposit", "account_id": c, "amount": "5.00", "currency": "GBP"},
        {"type": "transfer", "from_account_id": b, "to_account_id": a, "amount": "1.00",
         "currency": "GBP"},
        {"type": "deposit", "account_id": b, "amount": "5.001", "currency": "GBP"},
        {"type": "refund", "account_id": b},
    ]  # fmt: skip
    batch_key = {"Idempotency-Key": "batch-1"}
    twin.send("batch", "/v1/batches", {"items": items}, headers=batch_key)
    twin.send("batch replayed", "/v1/batches", {"items": items}, headers=batch_key)
    twin.send("empty batch", "/v1/batches", {"items": []})
    twin.send("items not a list", "/v1/batches", {"items": "none"})
    twin.send("batch by an admin", "/v1/batches", {"items": items[:1]}, auth=twin.token("admin"))
    frozen = twin.token("admin")
    twin.send("freeze b", f"/v1/accounts/{b}/freeze", {"reason": "test"}, auth=frozen)
    twin.send("deposit to a frozen account", f"/v1/accounts/{b}/deposits", money)

    for label, fast, usual in twin.replies:
        assert fast.status_code == usual.status_code, (label, fast.text, usual.text)
        assert _body(fast) == _body(usual), label
        assert _headers(fast) == _headers(usual), label
    assert {fast.status_code for _, fast, _ in twin.replies} >= {
        200, 201, 401, 403, 404, 409, 415, 422
    }  # fmt: skip

    served = _metric(twin.fast)
    money_requests = sum(
        1 for label, *_ in twin.replies if not label.startswith(("open", "freeze"))
    )
    assert served["served"] - before.get("served", 0) >= 20
    assert served["handed_over"] - before.get("handed_over", 0) >= 10
    took = served["served"] + served["handed_over"] - sum(before.values())
    assert took == money_requests, "every money request went one way or the other"
    assert _metric(twin.usual) == {}, "switched off, nothing goes the short way"


def test_the_short_way_keeps_the_correlation_id_and_the_route_label(twin: Twin) -> None:
    account = _open(twin, "fast-corr")
    correlation_id = f"fast-route-{uuid.uuid4()}"
    reply = twin.fast.post(
        f"/v1/accounts/{account}/deposits",
        json={"amount": "1.00", "currency": "GBP"},
        headers={**twin.token(), "X-Correlation-ID": correlation_id},
    )
    assert reply.status_code == 201, reply.text
    assert reply.headers["x-correlation-id"] == correlation_id
    metrics = twin.fast.get("/metrics").text
    assert re.search(
        r'vigil_http_requests_total\{app="command",method="POST",'
        r'route="/v1/accounts/\{account_id\}/deposits",status="201"\} [1-9]',
        metrics,
    ), "the request is counted under its route template"


def _body(reply: httpx.Response) -> Any:
    return reply.json() if reply.content else None


def _headers(reply: httpx.Response) -> dict[str, str]:
    return {k: v for k, v in reply.headers.items() if k not in PER_REQUEST_HEADERS}
