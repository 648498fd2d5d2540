"""The load `make bench` puts on the system: the replies of one phase (`Tally`), the load
generators (`batch_load`, closed loop; `open_loop`, requests sent on a schedule whatever the
replies do) and the setup that opens and funds the accounts they use. Used by bench.py,
which imports it as a sibling module.
"""

from __future__ import annotations

import asyncio
import random
import sys
import time
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_system import TRANSPORT_ERRORS, BenchFailed, Http, reply_code

BRANCH, CURRENCY = "001", "GBP"
BATCH_ITEMS = 1_000  # VIGIL_BATCH_ITEMS_MAX's default
MIXED_BATCH_ITEMS = 100
MIX = (("transfer", 0.8), ("deposit", 0.1), ("withdrawal", 0.1))
SINGLE_SHARE = 0.3  # of the open-loop movements, sent as single commands; the rest in batches
CONNECTIONS_MAX = 256  # open-loop connections; a request finding none free is not sent
SEND_LATE_S = 0.1  # a request sent this long after its scheduled time was not sent on time
SETUP_CLIENTS, SETUP_BATCHES_IN_FLIGHT = 32, 4
ERROR_PAUSE_S = 0.1  # a client that failed waits, so a dead server is not hammered
# Amounts scaled to load/bench_rules.toml: its large_transaction threshold is 10.00, so the
# LARGE_SHARE of transfers of exactly 10.00 raise an alert (on both accounts) and nothing else
# does. Each account is funded by FUNDINGS deposits just under it.
AMOUNT_MINOR_MAX = 50
LARGE_SHARE, LARGE_AMOUNT = 0.01, "10.00"
FUNDING_AMOUNT, FUNDINGS = "9.99", 2


@dataclass
class Tally:
    """One phase's replies: `ok` counts the movements accepted, in batches or one at a time."""

    ok: int = 0
    requests: int = 0
    latencies_ms: list[float] = field(default_factory=list)
    refused: Counter[str] = field(default_factory=Counter)  # the ledger's answers, by code
    errors: Counter[str] = field(default_factory=Counter)  # failed requests
    transfers: int = 0  # transfers accepted, of `ok`
    scheduled: int = 0  # open loop: requests due in the phase
    late: int = 0  # open loop: requests not sent on time (no connection free, or sent late)
    # Of `late`, those not sent at all: every connection was still waiting for its reply, so
    # the system's reply times, not the load generator, held them back.
    unsent: int = 0


def _amount(rng: random.Random) -> str:
    minor = rng.randint(1, AMOUNT_MINOR_MAX)
    return f"{minor // 100}.{minor % 100:02d}"


def _transfer(rng: random.Random, ids: list[str]) -> dict[str, Any]:
    source, destination = rng.sample(ids, 2)
    large = rng.random() < LARGE_SHARE
    return {
        "type": "transfer",
        "from_account_id": source,
        "to_account_id": destination,
        "amount": LARGE_AMOUNT if large else _amount(rng),
        "currency": CURRENCY,
    }


def mixed_item(rng: random.Random, ids: list[str]) -> dict[str, Any]:
    """One movement of the mix: 80 % transfers, 10 % deposits, 10 % withdrawals."""
    draw = rng.random()
    if draw < MIX[0][1]:
        return _transfer(rng, ids)
    kind = "deposit" if draw < MIX[0][1] + MIX[1][1] else "withdrawal"
    return {"type": kind, "account_id": rng.choice(ids), "amount": _amount(rng)} | {
        "currency": CURRENCY,
        "channel": "wire",
    }


def _transfers(rng: random.Random, ids: list[str], count: int) -> bytes:
    return orjson.dumps({"items": [_transfer(rng, ids) for _ in range(count)]})


async def _post_batch(http: Http, body: bytes, tally: Tally) -> None:
    sent_s = time.perf_counter()
    try:
        status, reply = await http.request("POST", "/v1/batches", body, key=uuid.uuid4().hex)
    except TRANSPORT_ERRORS as error:
        tally.errors[type(error).__name__] += 1
        await asyncio.sleep(ERROR_PAUSE_S)
        return
    tally.requests += 1
    if status != 200:
        tally.errors[reply_code(status, reply)] += 1
        return
    tally.latencies_ms.append((time.perf_counter() - sent_s) * 1000)
    _count_results(body, reply, tally)


def _count_results(body: bytes, reply: bytes, tally: Tally) -> None:
    items = orjson.loads(body)["items"]
    for item, result in zip(items, orjson.loads(reply)["results"], strict=False):
        if result["status"] == "ok":
            tally.ok += 1
            tally.transfers += item["type"] == "transfer"
        else:
            tally.refused[result["code"]] += 1


async def _clients(
    url: str,
    token: str,
    clients: int,
    deadline_s: float,
    send_one: Callable[[random.Random, Http], Awaitable[None]],
) -> None:
    """`clients` closed-loop clients, each with its own connection, sending until the deadline."""

    async def client() -> None:
        rng, http = random.Random(), Http(url, token)
        try:
            while time.monotonic() < deadline_s:
                await send_one(rng, http)
        finally:
            http.close()

    await asyncio.gather(*(client() for _ in range(clients)))


async def batch_load(
    url: str, token: str, ids: list[str], clients: int, deadline_s: float, tally: Tally
) -> None:
    async def send_batch(rng: random.Random, http: Http) -> None:
        await _post_batch(http, _transfers(rng, ids, BATCH_ITEMS), tally)

    await _clients(url, token, clients, deadline_s, send_batch)


def command_request(item: dict[str, Any]) -> tuple[str, bytes]:
    """The single-command route and body for one item of the mix."""
    body = {k: v for k, v in item.items() if k not in ("type", "account_id")}
    if item["type"] == "transfer":
        return "/v1/transfers", orjson.dumps(body)
    route = "deposits" if item["type"] == "deposit" else "withdrawals"
    return f"/v1/accounts/{item['account_id']}/{route}", orjson.dumps(body)


@dataclass(frozen=True)
class Stream:
    """One open-loop stream: `per_s` requests a second, each of `items` movements of the mix
    (1: a single command; more: one `POST /v1/batches`)."""

    per_s: float
    items: int


def mixed_streams(transfers_per_s: float, single_share: float = SINGLE_SHARE) -> list[Stream]:
    """The capacity load at `transfers_per_s`: its movements (transfers being 80 % of them),
    `single_share` as single commands and the rest in batches of MIXED_BATCH_ITEMS."""
    movements_per_s = transfers_per_s / MIX[0][1]
    streams = [Stream(movements_per_s * single_share, 1)]
    batches_per_s = movements_per_s * (1 - single_share) / MIXED_BATCH_ITEMS
    return [*streams, Stream(batches_per_s, MIXED_BATCH_ITEMS)]


class _Pool:
    """Keep-alive connections for an open loop: grows on demand up to CONNECTIONS_MAX."""

    def __init__(self, url: str, token: str) -> None:
        self.url, self.token = url, token
        self.idle: list[Http] = []
        self.opened = 0

    def take(self) -> Http | None:
        if self.idle:
            return self.idle.pop()
        if self.opened >= CONNECTIONS_MAX:
            return None
        self.opened += 1
        return Http(self.url, self.token)

    def give(self, http: Http) -> None:
        self.idle.append(http)

    def close(self) -> None:
        for http in self.idle:
            http.close()


async def _send_scheduled(
    http: Http, due_s: float, items: list[dict[str, Any]], tally: Tally
) -> None:
    """One request of an open loop; its latency counts from `due_s`, its scheduled time."""
    if len(items) == 1:
        path, body = command_request(items[0])
    else:
        path, body = "/v1/batches", orjson.dumps({"items": items})
    try:
        status, reply = await http.request("POST", path, body, key=uuid.uuid4().hex)
    except TRANSPORT_ERRORS as error:
        tally.errors[type(error).__name__] += 1
        return
    tally.requests += 1
    if len(items) > 1:
        if status != 200:
            tally.errors[reply_code(status, reply)] += 1
            return
        tally.latencies_ms.append((time.perf_counter() - due_s) * 1000)
        _count_results(body, reply, tally)
    elif status == 201:
        tally.ok += 1
        tally.transfers += items[0]["type"] == "transfer"
        tally.latencies_ms.append((time.perf_counter() - due_s) * 1000)
    elif 400 <= status < 500:
        tally.refused[reply_code(status, reply)] += 1
    else:
        tally.errors[reply_code(status, reply)] += 1


def schedule(streams: list[Stream], start_s: float, seconds: float) -> list[tuple[float, int]]:
    """Every request due in `seconds` from `start_s`, in time order: (due time, items)."""
    due: list[tuple[float, int]] = []
    for stream in streams:
        if stream.per_s <= 0:
            continue
        count = int(stream.per_s * seconds)
        due += [(start_s + k / stream.per_s, stream.items) for k in range(count)]
    return sorted(due)


async def open_loop(
    url: str, token: str, ids: list[str], streams: list[Stream], seconds: float, tally: Tally
) -> None:
    """Send the streams' requests on schedule for `seconds`, whatever the replies do.

    A request is sent at its scheduled time on a free connection (a new one if none is idle);
    one that finds none free (CONNECTIONS_MAX busy) or goes out more than SEND_LATE_S late
    counts in `tally.late`, and the first kind, never sent, also in `tally.unsent`.
    Latencies count from the scheduled time, so a slow reply cannot hide the requests behind
    it. Waits for the replies still out, at most HTTP's timeout.
    """
    pool, rng = _Pool(url, token), random.Random()
    in_flight: set[asyncio.Task[None]] = set()
    clock = time.perf_counter
    start_s = clock()

    async def send(http: Http, due_s: float, items: list[dict[str, Any]]) -> None:
        try:
            await _send_scheduled(http, due_s, items, tally)
        finally:
            pool.give(http)

    for due_s, count in schedule(streams, start_s, seconds):
        wait_s = due_s - clock()
        if wait_s > 0:
            await asyncio.sleep(wait_s)
        tally.scheduled += 1
        http = pool.take()
        if http is None or clock() - due_s > SEND_LATE_S:
            tally.late += 1
            if http is None:
                tally.unsent += 1
                continue
        items = [mixed_item(rng, ids) for _ in range(count)]
        task = asyncio.create_task(send(http, due_s, items))
        in_flight.add(task)
        task.add_done_callback(in_flight.discard)
    if in_flight:
        await asyncio.gather(*in_flight)
    pool.close()


async def open_accounts(url: str, token: str, count: int, run_id: str) -> list[str]:
    ids: list[str] = []
    failures: Counter[str] = Counter()
    indexes = iter(range(count))  # shared: each client takes the next index

    async def client() -> None:
        http = Http(url, token)
        try:
            for k in indexes:
                body = {"owner": f"Bench {k}", "branch": BRANCH, "currency": CURRENCY}
                key = f"bench-{run_id}-open-{k}"
                try:
                    status, reply = await http.request(
                        "POST", "/v1/accounts", orjson.dumps(body), key
                    )
                except TRANSPORT_ERRORS as error:
                    failures[type(error).__name__] += 1
                    return
                if status == 201:
                    ids.append(str(orjson.loads(reply)["account_id"]))
                else:
                    failures[reply_code(status, reply)] += 1
        finally:
            http.close()

    await asyncio.gather(*(client() for _ in range(SETUP_CLIENTS)))
    if failures:
        raise BenchFailed(f"opening accounts failed: {dict(failures)}")
    return ids


async def fund_accounts(url: str, token: str, ids: list[str]) -> None:
    funded = [account_id for _ in range(FUNDINGS) for account_id in ids]
    chunks = [funded[k : k + BATCH_ITEMS] for k in range(0, len(funded), BATCH_ITEMS)]
    tally = Tally()

    async def client(mine: list[list[str]]) -> None:
        http = Http(url, token)
        try:
            for chunk in mine:
                items = [
                    {"type": "deposit", "account_id": account_id, "amount": FUNDING_AMOUNT}
                    | {"currency": CURRENCY, "channel": "wire"}
                    for account_id in chunk
                ]
                await _post_batch(http, orjson.dumps({"items": items}), tally)
        finally:
            http.close()

    clients = range(SETUP_BATCHES_IN_FLIGHT)
    await asyncio.gather(*(client(chunks[k::SETUP_BATCHES_IN_FLIGHT]) for k in clients))
    if tally.ok != len(funded):
        raise BenchFailed(f"funding failed: {dict(tally.refused)} {dict(tally.errors)}")
